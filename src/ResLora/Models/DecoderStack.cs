using TorchSharp.Utils;

namespace ResLora.Models;

/// <summary>
/// A decoder's stack under Hugging Face's <c>model.*</c> keys: <c>embed_tokens</c>, <c>layers.{i}</c> and the final
/// <c>norm</c>. A family gives its block and norm types; its <see cref="CausalLM"/> holds the stack as <c>model</c>
/// beside an optional <c>lm_head</c> (<see cref="CausalLM.CreateLmHead"/>). Modules are built in Hugging Face's
/// registration order (embeddings, layers in order, norm), which ResLoRA's chains rely on.
/// </summary>
public sealed class DecoderStack<TLayer> : nn.Module<Tensor, Tensor> where TLayer : nn.Module, IDecoderBlock
{
    [ComponentName(Name = "embed_tokens")] private readonly Embedding _embedTokens;
    [ComponentName(Name = "layers")] private readonly ModuleList<TLayer> _layers;
    [ComponentName(Name = "norm")] private readonly nn.Module<Tensor, Tensor> _norm;

    public DecoderStack(ModelConfig c, Func<int, TLayer> layer, Func<nn.Module<Tensor, Tensor>> norm, ScalarType dtype, Device device) : base("DecoderStack")
    {
        _embedTokens = nn.Embedding(c.VocabSize, c.HiddenSize, device: device, dtype: dtype);
        _layers = new ModuleList<TLayer>();
        for (int i = 0; i < c.NumHiddenLayers; i++) _layers.Add(layer(i));
        _norm = norm();
        RegisterComponents();
    }

    public Embedding EmbedTokens => _embedTokens;
    public IReadOnlyList<TLayer> Layers => _layers.ToList();
    public nn.Module<Tensor, Tensor> Norm => _norm;

    public override Tensor forward(Tensor x) =>
        throw new InvalidOperationException("Call CausalLM.Forward(inputIds, attentionMask, cache).");
}
