using TorchSharp.Utils;

namespace ResLora.Models.Llama;

/// <summary>SwiGLU feed-forward: down(silu(gate(x)) ⊙ up(x)) (modeling_llama.py LlamaMLP).</summary>
public sealed class LlamaMlp : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "gate_proj")] private readonly nn.Module<Tensor, Tensor> _gateProj;
    [ComponentName(Name = "up_proj")] private readonly nn.Module<Tensor, Tensor> _upProj;
    [ComponentName(Name = "down_proj")] private readonly nn.Module<Tensor, Tensor> _downProj;

    /// <summary>
    /// An optional transform of down_proj's input (RoLoRA's online Hadamard, spec rolora.md §3.3), applied before
    /// down_proj; the rotated model's config records it. Null for ordinary models.
    /// </summary>
    public Func<Tensor, Tensor>? DownProjInputTransform { get; set; }

    public LlamaMlp(ModelConfig c, int layer, ILinearFactory factory, ScalarType dtype, Device device) : base("LlamaMlp")
    {
        string p = $"model.layers.{layer}.mlp.";
        _gateProj = factory.Create(new LinearSpec(p + "gate_proj", "gate_proj", layer, c.HiddenSize, c.IntermediateSize, c.MlpBias), dtype, device);
        _upProj = factory.Create(new LinearSpec(p + "up_proj", "up_proj", layer, c.HiddenSize, c.IntermediateSize, c.MlpBias), dtype, device);
        _downProj = factory.Create(new LinearSpec(p + "down_proj", "down_proj", layer, c.IntermediateSize, c.HiddenSize, c.MlpBias), dtype, device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var h = SwiGlu.Run(_gateProj.call(x), _upProj.call(x)); // (batch, seq, intermediate)
        if (DownProjInputTransform is { } f) h = f(h);
        return scope.MoveToOuter(_downProj.call(h));
    }
}
