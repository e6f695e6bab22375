using TorchSharp.Utils;

namespace ResLora.Models.Llama;

/// <summary>
/// Grouped-query self-attention of the LLaMA family (modeling_llama.py LlamaAttention): q/k/v projections
/// (q/k/v biases for Qwen2), rotary embeddings on q and k, key/value heads repeated to the query heads, scaled
/// dot-product attention under a causal (and padding, and sliding-window) mask, output projection. Qwen3's variant
/// normalizes each head of q and k (<c>q_norm</c>, <c>k_norm</c>: RMSNorm over head_dim) before rotary. SmolLM3's NoPE
/// layers skip rotary (modeling_smollm3.py: <c>if self.use_rope</c>), so their q·k depends on content only.
/// </summary>
public sealed class LlamaAttention : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "q_proj")] private readonly nn.Module<Tensor, Tensor> _qProj;
    [ComponentName(Name = "k_proj")] private readonly nn.Module<Tensor, Tensor> _kProj;
    [ComponentName(Name = "v_proj")] private readonly nn.Module<Tensor, Tensor> _vProj;
    [ComponentName(Name = "o_proj")] private readonly nn.Module<Tensor, Tensor> _oProj;
    [ComponentName(Name = "q_norm")] private readonly RmsNorm? _qNorm;
    [ComponentName(Name = "k_norm")] private readonly RmsNorm? _kNorm;
    private readonly int _heads, _kvHeads, _headDim, _layer;
    private readonly bool _useRope;

    public LlamaAttention(ModelConfig c, LlamaVariant variant, int layer, ILinearFactory factory, ScalarType dtype, Device device) : base("LlamaAttention")
    {
        _heads = c.NumAttentionHeads;
        _kvHeads = c.NumKeyValueHeads;
        _headDim = c.HeadDim;
        _layer = layer;
        _useRope = variant.UsesRope(layer);
        string p = $"model.layers.{layer}.self_attn.";
        bool qkvBias = variant.QkvBias;
        _qProj = factory.Create(new LinearSpec(p + "q_proj", "q_proj", layer, c.HiddenSize, _heads * _headDim, qkvBias), dtype, device);
        _kProj = factory.Create(new LinearSpec(p + "k_proj", "k_proj", layer, c.HiddenSize, _kvHeads * _headDim, qkvBias), dtype, device);
        _vProj = factory.Create(new LinearSpec(p + "v_proj", "v_proj", layer, c.HiddenSize, _kvHeads * _headDim, qkvBias), dtype, device);
        _oProj = factory.Create(new LinearSpec(p + "o_proj", "o_proj", layer, _heads * _headDim, c.HiddenSize, c.AttentionBias), dtype, device);
        if (variant.HeadNorms)
        {
            _qNorm = new RmsNorm(_headDim, c.RmsNormEps, dtype, device);
            _kNorm = new RmsNorm(_headDim, c.RmsNormEps, dtype, device);
        }
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) =>
        throw new InvalidOperationException("LlamaAttention needs positions and a mask; call Forward(x, cos, sin, mask, cache).");

    /// <summary>
    /// x (batch, seq, hidden); cos/sin (batch, seq, headDim); mask: additive (batch, 1, seq, past+seq) or null for
    /// a plain causal mask without cache; cache: appended in place when given.
    /// </summary>
    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, KvCache? cache)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        // (batch, seq, heads·headDim) → (batch, heads, seq, headDim)
        var q = _qProj.call(x).view(b, t, _heads, _headDim);
        var k = _kProj.call(x).view(b, t, _kvHeads, _headDim);
        if (_qNorm is not null) q = _qNorm.call(q);
        if (_kNorm is not null) k = _kNorm.call(k);
        q = q.transpose(1, 2);
        k = k.transpose(1, 2);
        var v = _vProj.call(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);
        if (_useRope)
        {
            q = Rotary.Apply(q, cos, sin);
            k = Rotary.Apply(k, cos, sin);
        }
        if (cache is not null) (k, v) = cache.Append(_layer, k, v);
        var merged = GroupedQueryAttention.Attend(q, k, v, mask); // (batch, seq, heads·headDim)
        return scope.MoveToOuter(_oProj.call(merged));
    }
}
