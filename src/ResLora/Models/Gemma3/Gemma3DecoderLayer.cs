using TorchSharp.Utils;

namespace ResLora.Models.Gemma3;

/// <summary>Gemma 3's gated MLP: down(gelu_tanh(gate(x)) ⊙ up(x)) (modeling_gemma3.py Gemma3MLP, hidden_activation gelu_pytorch_tanh).</summary>
public sealed class Gemma3Mlp : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "gate_proj")] private readonly nn.Module<Tensor, Tensor> _gateProj;
    [ComponentName(Name = "up_proj")] private readonly nn.Module<Tensor, Tensor> _upProj;
    [ComponentName(Name = "down_proj")] private readonly nn.Module<Tensor, Tensor> _downProj;

    /// <summary>An optional transform of down_proj's input (RoLoRA's online Hadamard); RoLoRA refuses Gemma 3, so normally null.</summary>
    public Func<Tensor, Tensor>? DownProjInputTransform { get; set; }

    public Gemma3Mlp(ModelConfig c, int layer, ILinearFactory factory, ScalarType dtype, Device device) : base("Gemma3Mlp")
    {
        string p = $"model.layers.{layer}.mlp.";
        _gateProj = factory.Create(new LinearSpec(p + "gate_proj", "gate_proj", layer, c.HiddenSize, c.IntermediateSize, false), dtype, device);
        _upProj = factory.Create(new LinearSpec(p + "up_proj", "up_proj", layer, c.HiddenSize, c.IntermediateSize, false), dtype, device);
        _downProj = factory.Create(new LinearSpec(p + "down_proj", "down_proj", layer, c.IntermediateSize, c.HiddenSize, false), dtype, device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var h = nn.functional.gelu(_gateProj.call(x), TorchSharp.Modules.GELU.Approximate.tanh) * _upProj.call(x); // (batch, seq, intermediate)
        if (DownProjInputTransform is { } f) h = f(h);
        return scope.MoveToOuter(_downProj.call(h));
    }
}

/// <summary>
/// Gemma 3's decoder block (modeling_gemma3.py Gemma3DecoderLayer), sandwich-normed: each sublayer's output is normed
/// again before it joins the residual stream. x + post_attn_norm(attn(input_norm(x))), then
/// h + post_ffn_norm(mlp(pre_ffn_norm(h))). Sliding layers attend within <c>sliding_window</c> with the local rotary
/// table (<see cref="RotaryIndex"/> 1), global ones causally with the global table (0).
/// </summary>
public sealed class Gemma3DecoderLayer : nn.Module<Tensor, Tensor>, IDecoderBlock
{
    [ComponentName(Name = "input_layernorm")] private readonly GemmaRmsNorm _inputNorm;
    [ComponentName(Name = "self_attn")] private readonly Gemma3Attention _attn;
    [ComponentName(Name = "post_attention_layernorm")] private readonly GemmaRmsNorm _postAttnNorm;
    [ComponentName(Name = "pre_feedforward_layernorm")] private readonly GemmaRmsNorm _preFfnNorm;
    [ComponentName(Name = "mlp")] private readonly Gemma3Mlp _mlp;
    [ComponentName(Name = "post_feedforward_layernorm")] private readonly GemmaRmsNorm _postFfnNorm;

    internal Gemma3DecoderLayer(ModelConfig c, Gemma3Settings s, int layer, ILinearFactory factory, ScalarType dtype, Device device) : base("Gemma3DecoderLayer")
    {
        // Construction order = q, k, v, o, gate, up, down (ResLoRA's chains rely on it).
        _inputNorm = new GemmaRmsNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        _attn = new Gemma3Attention(c, s, layer, factory, dtype, device);
        _postAttnNorm = new GemmaRmsNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        _preFfnNorm = new GemmaRmsNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        _mlp = new Gemma3Mlp(c, layer, factory, dtype, device);
        _postFfnNorm = new GemmaRmsNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        bool sliding = s.IsSliding(layer);
        SlidingWindow = sliding ? s.Window : null;
        RotaryIndex = sliding ? Gemma3Family.LocalRotary : Gemma3Family.GlobalRotary;
        RegisterComponents();
    }

    public int? SlidingWindow { get; }

    public int RotaryIndex { get; }

    public Func<Tensor, Tensor>? DownProjInputTransform
    {
        get => _mlp.DownProjInputTransform;
        set => _mlp.DownProjInputTransform = value;
    }

    public override Tensor forward(Tensor x) =>
        throw new InvalidOperationException("Gemma3DecoderLayer needs positions and a mask; call Forward(x, cos, sin, mask, cache).");

    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, KvCache? cache)
    {
        using var scope = torch.NewDisposeScope();
        var h = x + _postAttnNorm.call(_attn.Forward(_inputNorm.call(x), cos, sin, mask, cache));
        var y = h + _postFfnNorm.call(_mlp.call(_preFfnNorm.call(h)));
        return scope.MoveToOuter(y);
    }
}
