using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>
/// LoRA on one frozen linear projection (peft-format.md §3.1): y = W₀x + b + s · B A · dropout(x), with
/// A = <c>lora_A.weight</c> (r, in), B = <c>lora_B.weight</c> (out, r), s = α/r (α/√r with rsLoRA).
/// State-dict keys: <c>weight</c>, <c>bias</c> (base, frozen), <c>lora_A.weight</c>, <c>lora_B.weight</c>.
/// </summary>
public sealed class LoraLinear : LowRankLinear
{
    public LoraLinear(LinearSpec spec, LoraLayerOptions options, ScalarType dtype, Device device, Generator? generator = null)
        : base(spec, options, dtype, device, generator)
    {
        RegisterComponents();
    }

    protected override string MethodName => "LoRA";

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        Tensor result = BaseForward(x);
        if (!IsMerged && !AdapterSwitch.IsOff)
        {
            Tensor lora = LoraTerms.Up(Down(x), LoraB).mul(Scaling); // (..., out)
            result = result.add(lora.to_type(result.dtype));
        }
        return scope.MoveToOuter(result);
    }

    /// <summary>ΔW = s · B A, (out, in), float32, detached.</summary>
    public override Tensor DeltaWeight()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        return scope.MoveToOuter(ProductBA().mul(Scaling));
    }
}
