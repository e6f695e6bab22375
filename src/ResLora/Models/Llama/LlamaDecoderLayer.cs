using TorchSharp.Utils;

namespace ResLora.Models.Llama;

/// <summary>Pre-norm decoder block: x + attn(norm(x)), then h + mlp(norm(h)).</summary>
public sealed class LlamaDecoderLayer : nn.Module<Tensor, Tensor>, IDecoderBlock
{
    [ComponentName(Name = "input_layernorm")] private readonly RmsNorm _inputNorm;
    [ComponentName(Name = "self_attn")] private readonly LlamaAttention _attn;
    [ComponentName(Name = "post_attention_layernorm")] private readonly RmsNorm _postNorm;
    [ComponentName(Name = "mlp")] private readonly LlamaMlp _mlp;

    public LlamaDecoderLayer(ModelConfig c, LlamaVariant variant, int layer, ILinearFactory factory, ScalarType dtype, Device device) : base("LlamaDecoderLayer")
    {
        // Construction order = Hugging Face's registration order (q, k, v, o, gate, up, down): ResLoRA's chains rely on it.
        _inputNorm = new RmsNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        _attn = new LlamaAttention(c, variant, layer, factory, dtype, device);
        _postNorm = new RmsNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        _mlp = new LlamaMlp(c, layer, factory, dtype, device);
        SlidingWindow = variant.WindowOfLayer(layer);
        RegisterComponents();
    }

    public int? SlidingWindow { get; }

    public Func<Tensor, Tensor>? DownProjInputTransform
    {
        get => _mlp.DownProjInputTransform;
        set => _mlp.DownProjInputTransform = value;
    }

    public override Tensor forward(Tensor x) =>
        throw new InvalidOperationException("LlamaDecoderLayer needs positions and a mask; call Forward(x, cos, sin, mask, cache).");

    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, KvCache? cache)
    {
        using var scope = torch.NewDisposeScope();
        var h = x + _attn.Forward(_inputNorm.call(x), cos, sin, mask, cache);
        var y = h + _mlp.call(_postNorm.call(h));
        return scope.MoveToOuter(y);
    }
}
