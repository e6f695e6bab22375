using TorchSharp.Utils;

namespace ResLora.Models.Phi3;

/// <summary>
/// Phi-3's attention (modeling_phi3.py Phi3Attention): one fused projection <c>qkv_proj</c> whose output rows are the
/// query heads, then the key heads, then the value heads; rotary on q and k over the first rotary dims of each head
/// (partial rotary, Phi-4-mini), grouped-query attention, <c>o_proj</c>. No biases.
/// </summary>
public sealed class Phi3Attention : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "o_proj")] private readonly nn.Module<Tensor, Tensor> _oProj;
    [ComponentName(Name = "qkv_proj")] private readonly nn.Module<Tensor, Tensor> _qkvProj;
    private readonly int _heads, _kvHeads, _headDim, _layer;

    public Phi3Attention(ModelConfig c, int layer, ILinearFactory factory, ScalarType dtype, Device device) : base("Phi3Attention")
    {
        _heads = c.NumAttentionHeads;
        _kvHeads = c.NumKeyValueHeads;
        _headDim = c.HeadDim;
        _layer = layer;
        string p = $"model.layers.{layer}.self_attn.";
        int qkvOut = (_heads + 2 * _kvHeads) * _headDim;
        // Hugging Face's registration order (o_proj before qkv_proj in Phi3Attention.__init__) does not matter for keys;
        // the fused projection is built first so ResLoRA's chains follow the data flow (qkv, o, gate_up, down).
        _qkvProj = factory.Create(new LinearSpec(p + "qkv_proj", "qkv_proj", layer, c.HiddenSize, qkvOut, false) { Fuses = new[] { "q_proj", "k_proj", "v_proj" } }, dtype, device);
        _oProj = factory.Create(new LinearSpec(p + "o_proj", "o_proj", layer, _heads * _headDim, c.HiddenSize, false), dtype, device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) =>
        throw new InvalidOperationException("Phi3Attention needs positions and a mask; call Forward(x, cos, sin, mask, cache).");

    /// <summary>x (batch, seq, hidden); cos/sin (batch, seq, rotaryDim); mask additive (batch, 1, seq, past+seq) or null.</summary>
    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, KvCache? cache)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        long qDim = (long)_heads * _headDim, kvDim = (long)_kvHeads * _headDim;
        var qkv = _qkvProj.call(x); // (batch, seq, (heads + 2·kvHeads)·headDim)
        // (batch, seq, heads·headDim) → (batch, heads, seq, headDim)
        var q = qkv.narrow(-1, 0, qDim).reshape(b, t, _heads, _headDim).transpose(1, 2);
        var k = qkv.narrow(-1, qDim, kvDim).reshape(b, t, _kvHeads, _headDim).transpose(1, 2);
        var v = qkv.narrow(-1, qDim + kvDim, kvDim).reshape(b, t, _kvHeads, _headDim).transpose(1, 2);
        q = Rotary.Apply(q, cos, sin);
        k = Rotary.Apply(k, cos, sin);
        if (cache is not null) (k, v) = cache.Append(_layer, k, v);
        var merged = GroupedQueryAttention.Attend(q, k, v, mask); // (batch, seq, heads·headDim)
        return scope.MoveToOuter(_oProj.call(merged));
    }
}

/// <summary>
/// Phi-3's MLP (Phi3MLP): one fused <c>gate_up_proj</c> (out = 2·intermediate; first half gate, second half up),
/// down(silu(gate) ⊙ up).
/// </summary>
public sealed class Phi3Mlp : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "gate_up_proj")] private readonly nn.Module<Tensor, Tensor> _gateUpProj;
    [ComponentName(Name = "down_proj")] private readonly nn.Module<Tensor, Tensor> _downProj;
    private readonly long _intermediate;

    /// <summary>An optional transform of down_proj's input (RoLoRA's online Hadamard); null for ordinary models.</summary>
    public Func<Tensor, Tensor>? DownProjInputTransform { get; set; }

    public Phi3Mlp(ModelConfig c, int layer, ILinearFactory factory, ScalarType dtype, Device device) : base("Phi3Mlp")
    {
        string p = $"model.layers.{layer}.mlp.";
        _intermediate = c.IntermediateSize;
        _gateUpProj = factory.Create(new LinearSpec(p + "gate_up_proj", "gate_up_proj", layer, c.HiddenSize, 2 * c.IntermediateSize, false) { Fuses = new[] { "gate_proj", "up_proj" } }, dtype, device);
        _downProj = factory.Create(new LinearSpec(p + "down_proj", "down_proj", layer, c.IntermediateSize, c.HiddenSize, false), dtype, device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var gu = _gateUpProj.call(x); // (batch, seq, 2·intermediate): gate, then up (torch.chunk(2, -1))
        var h = SwiGlu.Run(gu.narrow(-1, 0, _intermediate), gu.narrow(-1, _intermediate, _intermediate));
        if (DownProjInputTransform is { } f) h = f(h);
        return scope.MoveToOuter(_downProj.call(h));
    }
}

/// <summary>Phi-3's pre-norm block (Phi3DecoderLayer; its residual dropouts are identities at inference): x + attn(norm(x)), then h + mlp(norm(h)).</summary>
public sealed class Phi3DecoderLayer : nn.Module<Tensor, Tensor>, IDecoderBlock
{
    [ComponentName(Name = "input_layernorm")] private readonly RmsNorm _inputNorm;
    [ComponentName(Name = "self_attn")] private readonly Phi3Attention _attn;
    [ComponentName(Name = "post_attention_layernorm")] private readonly RmsNorm _postNorm;
    [ComponentName(Name = "mlp")] private readonly Phi3Mlp _mlp;

    public Phi3DecoderLayer(ModelConfig c, int layer, ILinearFactory factory, ScalarType dtype, Device device) : base("Phi3DecoderLayer")
    {
        _inputNorm = new RmsNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        _attn = new Phi3Attention(c, layer, factory, dtype, device);
        _postNorm = new RmsNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        _mlp = new Phi3Mlp(c, layer, factory, dtype, device);
        // transformers' Phi-3 passes config.sliding_window to every layer's attention (Phi-3-mini-4k: 2047).
        SlidingWindow = c.SlidingWindow;
        RegisterComponents();
    }

    public int? SlidingWindow { get; }

    public Func<Tensor, Tensor>? DownProjInputTransform
    {
        get => _mlp.DownProjInputTransform;
        set => _mlp.DownProjInputTransform = value;
    }

    public override Tensor forward(Tensor x) =>
        throw new InvalidOperationException("Phi3DecoderLayer needs positions and a mask; call Forward(x, cos, sin, mask, cache).");

    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, KvCache? cache)
    {
        using var scope = torch.NewDisposeScope();
        var h = x + _attn.Forward(_inputNorm.call(x), cos, sin, mask, cache);
        var y = h + _mlp.call(_postNorm.call(h));
        return scope.MoveToOuter(y);
    }
}
