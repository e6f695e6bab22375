using TorchSharp.Utils;

namespace ResLora.Models.Phi3;

/// <summary>
/// Phi-3 / Phi-4-mini (transformers' Phi3ForCausalLM) with Hugging Face's module names and keys
/// (<c>model.layers.{i}.self_attn.qkv_proj.weight</c>, <c>model.layers.{i}.mlp.gate_up_proj.weight</c>); adapters wrap the
/// fused projections under PEFT's names. The lm_head is tied to the embedding when the config says so (Phi-4-mini).
/// </summary>
public sealed class Phi3ForCausalLM : CausalLM
{
    [ComponentName(Name = "model")] private readonly DecoderStack<Phi3DecoderLayer> _model;
    [ComponentName(Name = "lm_head")] private readonly nn.Module<Tensor, Tensor>? _lmHead;
    private readonly IReadOnlyList<IDecoderBlock> _blocks;

    public Phi3ForCausalLM(ICausalLMFamily family, ModelConfig config, ILinearFactory? factory, ScalarType dtype, Device device)
        : base("Phi3ForCausalLM", family, config, factory, dtype, device)
    {
        _model = new DecoderStack<Phi3DecoderLayer>(config, i => new Phi3DecoderLayer(config, i, Factory, dtype, device), () => new RmsNorm(config.HiddenSize, config.RmsNormEps, dtype, device), dtype, device);
        _lmHead = CreateLmHead();
        _blocks = _model.Layers.Cast<IDecoderBlock>().ToList();
        RegisterComponents();
    }

    public override Embedding EmbedTokens => _model.EmbedTokens;
    public override IReadOnlyList<IDecoderBlock> Blocks => _blocks;
    protected override nn.Module<Tensor, Tensor> FinalNorm => _model.Norm;
    protected override nn.Module<Tensor, Tensor>? LmHead => _lmHead;

    /// <summary>The base weights of a Phi-3 checkpoint of <paramref name="c"/>, in the file's order within a layer.</summary>
    public static IReadOnlyDictionary<string, long[]> ExpectedWeights(ModelConfig c)
    {
        var d = new Dictionary<string, long[]>(StringComparer.Ordinal);
        long h = c.HiddenSize, qOut = (long)c.NumAttentionHeads * c.HeadDim, kvOut = (long)c.NumKeyValueHeads * c.HeadDim, m = c.IntermediateSize;
        d["model.embed_tokens.weight"] = new[] { (long)c.VocabSize, h };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            d[p + "input_layernorm.weight"] = new[] { h };
            d[p + "self_attn.qkv_proj.weight"] = new[] { qOut + 2 * kvOut, h };
            d[p + "self_attn.o_proj.weight"] = new[] { h, qOut };
            d[p + "post_attention_layernorm.weight"] = new[] { h };
            d[p + "mlp.gate_up_proj.weight"] = new[] { 2 * m, h };
            d[p + "mlp.down_proj.weight"] = new[] { h, m };
        }
        d["model.norm.weight"] = new[] { h };
        if (!c.TieWordEmbeddings) d["lm_head.weight"] = new[] { (long)c.VocabSize, h };
        return d;
    }
}
