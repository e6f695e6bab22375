using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>
/// DoRA (peft-format.md §3.2): W = m ⊙ (V / ‖V‖_row), V = W₀ + s·B A, m = <c>lora_magnitude_vector</c> (out).
/// Forward with n = ‖W₀ + s·BA‖ per output row, detached, and c = m / n:
/// y = W₀x + b + (c − 1) ⊙ (W₀x) + c ⊙ s·B A x (bias never rescaled).
/// State-dict keys: <c>weight</c>, <c>bias</c>, <c>lora_A.weight</c> (r, in), <c>lora_B.weight</c> (out, r),
/// <c>lora_magnitude_vector</c> (out).
/// </summary>
public sealed class DoraLinear : LowRankLinear
{
#pragma warning disable IDE1006 // field name is the PEFT state-dict key
    private readonly Parameter lora_magnitude_vector;
#pragma warning restore IDE1006

    public DoraLinear(LinearSpec spec, LoraLayerOptions options, ScalarType dtype, Device device, Generator? generator = null)
        : base(spec, options, dtype, device, generator)
    {
        lora_magnitude_vector = new Parameter(torch.zeros(spec.OutFeatures, dtype: AdapterDtype, device: device), requires_grad: true);
        ResetMagnitude();
        RegisterComponents();
    }

    protected override string MethodName => "DoRA";
    public Parameter Magnitude => lora_magnitude_vector;
    public override IReadOnlyList<Parameter> TrainableParameters => new[] { LoraA, LoraB, Magnitude };

    /// <summary>§3.2 init: m = ‖W₀ + s·BA‖ per row (= ‖W₀ row‖ when B = 0), so the layer equals the base at step 0.</summary>
    public void ResetMagnitude()
    {
        if (IsMerged) throw new InvalidOperationException($"{Spec.Name}: cannot reset the DoRA magnitude while merged; call Unmerge() first.");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        using var sba = ProductBA().mul(Scaling); // (out, in); a packed W₀ is dequantized block by block
        lora_magnitude_vector.detach().copy_(Base.RowNorms(ScalarType.Float32, (start, count) => sba.narrow(0, start, count)));
    }

    /// <summary>After the base is final (and after a PiSSA/OLoRA/LoftQ init, as PEFT runs dora_init last).</summary>
    protected override void OnBaseLoaded() => ResetMagnitude();

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        Tensor baseOut = Base.Linear(x, withBias: false); // W₀x, (..., out)
        Tensor result = bias is null ? baseOut : baseOut.add(bias);
        if (IsMerged || AdapterSwitch.IsOff) return scope.MoveToOuter(result);

        Tensor xa = x.to_type(AdapterDtype);
        Tensor baseForDora;
        if (DropoutActive)
        {
            // §3.2: with active dropout PEFT recomputes W₀·dropout(x), so both terms see the dropped input.
            xa = nn.functional.dropout(xa, Options.Dropout, true);
            baseForDora = Base.Linear(xa, withBias: false); // W₀ in the adapter dtype
        }
        else baseForDora = baseOut.to_type(AdapterDtype); // PR #2122: reuse the base output minus bias

        // n (out): row norms of W₀ + s·BA with the LoRA product detached, then n itself detached (paper §4.3).
        Tensor ba = lora_B.weight!.detach().matmul(lora_A.weight!.detach());
        Tensor sba = ba.mul(Scaling);
        Tensor n = Base.RowNorms(AdapterDtype, (start, count) => sba.narrow(0, start, count)).detach();
        Tensor c = LoraTerms.DoraScale(lora_magnitude_vector, n); // (out), broadcast over (..., out)
        Tensor lora = LoraTerms.Up(DropoutActive ? LoraTerms.Down(xa, LoraA) : Down(x), LoraB);
        Tensor dora = LoraTerms.DoraDelta(c, baseForDora, lora, Scaling);
        result = result.add(dora.to_type(result.dtype));
        return scope.MoveToOuter(result);
    }

    /// <summary>Merged weight minus W₀: (m/n) ⊙ (W₀ + s·BA) − W₀ row-wise (§3.2), (out, in), float32, detached.</summary>
    public override Tensor DeltaWeight()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        Tensor w0 = BaseWeight32();
        Tensor v = w0.add(ProductBA().mul(Scaling));
        Tensor m = Magnitude.detach().to_type(ScalarType.Float32);
        return scope.MoveToOuter(m.div(RowNorm(v)).unsqueeze(1).mul(v).sub(w0));
    }

    public override IReadOnlyDictionary<string, Tensor> GetAdapterState() => new Dictionary<string, Tensor>
    {
        ["lora_A.weight"] = LoraA,
        ["lora_B.weight"] = LoraB,
        ["lora_magnitude_vector"] = Magnitude, // §2.4: saved without PEFT's trailing ".weight"
    };

    private static Tensor RowNorm(Tensor w) => torch.linalg.norm(w, dims: new long[] { 1 });
}
