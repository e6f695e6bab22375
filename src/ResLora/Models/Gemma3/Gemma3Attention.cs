using TorchSharp.Utils;

namespace ResLora.Models.Gemma3;

/// <summary>
/// Gemma 3's grouped-query self-attention (modeling_gemma3.py Gemma3Attention): q/k/v projections (biases with
/// <c>attention_bias</c>), a Gemma RMSNorm over each head of q and k (<c>q_norm</c>, <c>k_norm</c>) before rotary, key/value
/// heads repeated to the query heads, softmax(q·kᵀ · query_pre_attn_scalar^-½) under the causal (and sliding-window,
/// and padding) mask, output projection. No logit soft-capping (Gemma 3 dropped Gemma 2's).
/// </summary>
public sealed class Gemma3Attention : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "q_proj")] private readonly nn.Module<Tensor, Tensor> _qProj;
    [ComponentName(Name = "k_proj")] private readonly nn.Module<Tensor, Tensor> _kProj;
    [ComponentName(Name = "v_proj")] private readonly nn.Module<Tensor, Tensor> _vProj;
    [ComponentName(Name = "o_proj")] private readonly nn.Module<Tensor, Tensor> _oProj;
    [ComponentName(Name = "q_norm")] private readonly GemmaRmsNorm _qNorm;
    [ComponentName(Name = "k_norm")] private readonly GemmaRmsNorm _kNorm;
    private readonly int _heads, _kvHeads, _headDim, _layer;
    private readonly double _qScale;

    internal Gemma3Attention(ModelConfig c, Gemma3Settings s, int layer, ILinearFactory factory, ScalarType dtype, Device device) : base("Gemma3Attention")
    {
        _heads = c.NumAttentionHeads;
        _kvHeads = c.NumKeyValueHeads;
        _headDim = c.HeadDim;
        _layer = layer;
        // scaled_dot_product_attention divides by sqrt(head_dim); Gemma 3 scales by query_pre_attn_scalar^-½ instead, so q
        // takes the ratio (1 when the two agree, as in every published size but 27B).
        _qScale = Math.Sqrt(_headDim / s.QueryPreAttnScalar);
        string p = $"model.layers.{layer}.self_attn.";
        bool bias = c.AttentionBias;
        _qProj = factory.Create(new LinearSpec(p + "q_proj", "q_proj", layer, c.HiddenSize, _heads * _headDim, bias), dtype, device);
        _kProj = factory.Create(new LinearSpec(p + "k_proj", "k_proj", layer, c.HiddenSize, _kvHeads * _headDim, bias), dtype, device);
        _vProj = factory.Create(new LinearSpec(p + "v_proj", "v_proj", layer, c.HiddenSize, _kvHeads * _headDim, bias), dtype, device);
        _oProj = factory.Create(new LinearSpec(p + "o_proj", "o_proj", layer, _heads * _headDim, c.HiddenSize, bias), dtype, device);
        _qNorm = new GemmaRmsNorm(_headDim, c.RmsNormEps, dtype, device);
        _kNorm = new GemmaRmsNorm(_headDim, c.RmsNormEps, dtype, device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) =>
        throw new InvalidOperationException("Gemma3Attention needs positions and a mask; call Forward(x, cos, sin, mask, cache).");

    /// <summary>x (batch, seq, hidden); cos/sin (batch, seq, headDim); mask additive (batch, 1, seq, past+seq) or null; cache appended in place.</summary>
    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, KvCache? cache)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        // (batch, seq, heads·headDim) → (batch, seq, heads, headDim), normed per head, → (batch, heads, seq, headDim)
        var q = _qNorm.call(_qProj.call(x).view(b, t, _heads, _headDim)).transpose(1, 2);
        var k = _kNorm.call(_kProj.call(x).view(b, t, _kvHeads, _headDim)).transpose(1, 2);
        var v = _vProj.call(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);
        q = Rotary.Apply(q, cos, sin);
        k = Rotary.Apply(k, cos, sin);
        if (_qScale != 1.0) q = q * _qScale;
        if (cache is not null) (k, v) = cache.Append(_layer, k, v);
        var merged = GroupedQueryAttention.Attend(q, k, v, mask); // (batch, seq, heads·headDim)
        return scope.MoveToOuter(_oProj.call(merged));
    }
}
