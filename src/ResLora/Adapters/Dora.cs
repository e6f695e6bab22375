using ResLora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ResLora.Adapters;

/// <summary>
/// Capability of an adapter whose initial state depends on the base weight (DoRA's magnitude = row norms of W₀).
/// The model builds layers before the checkpoint is loaded, so call <see cref="AdapterModel.OnBaseWeightsLoaded"/>
/// after loading base weights and before training a freshly initialised adapter (not after loading a saved one).
/// </summary>
public interface IBaseWeightDependent
{
    void OnBaseWeightsLoaded();
}

/// <summary>
/// DoRA (peft-format.md §3.2): W = m ⊙ (V / ‖V‖_row), V = W₀ + s·B A, m = <c>lora_magnitude_vector</c> (out).
/// Forward with n = ‖W₀ + s·BA‖ per output row, detached, and c = m / n:
/// y = W₀x + b + (c − 1) ⊙ (W₀x) + c ⊙ s·B A x (bias never rescaled).
/// State-dict keys: <c>weight</c>, <c>bias</c>, <c>lora_A.weight</c> (r, in), <c>lora_B.weight</c> (out, r),
/// <c>lora_magnitude_vector</c> (out).
/// </summary>
public sealed class DoraLinear : nn.Module<Tensor, Tensor>, IAdapter, ILowRankPair, IBaseWeightDependent
{
#pragma warning disable IDE1006 // field names are the PEFT / Hugging Face state-dict keys
    private readonly Parameter weight;
    private readonly Parameter? bias;
    private readonly Linear lora_A;
    private readonly Linear lora_B;
    private readonly Parameter lora_magnitude_vector;
#pragma warning restore IDE1006

    private readonly LoraLayerOptions _options;
    private Tensor? _mergedNorm; // n (out), float32, cached at merge time: unmerge cannot recompute it (§3.2)

    public DoraLinear(LinearSpec spec, LoraLayerOptions options, ScalarType dtype, Device device, Generator? generator = null)
        : base(spec.Name)
    {
        LowRank.CheckOptions(spec, options);
        Spec = spec;
        _options = options;
        (weight, bias) = LowRank.CreateBase(spec, dtype, device, generator);
        AdapterDtype = LowRank.AdapterDtype(dtype);
        lora_A = nn.Linear(spec.InFeatures, options.R, hasBias: false, device: device, dtype: AdapterDtype);
        lora_B = nn.Linear(options.R, spec.OutFeatures, hasBias: false, device: device, dtype: AdapterDtype);
        LowRank.InitFactors(lora_A.weight!, lora_B.weight!, options, generator);
        lora_magnitude_vector = new Parameter(torch.zeros(spec.OutFeatures, dtype: AdapterDtype, device: device), requires_grad: true);
        ResetMagnitude();
        RegisterComponents();
    }

    public LinearSpec Spec { get; }
    public string Method => "dora";
    public LoraLayerOptions Options => _options;
    public ScalarType AdapterDtype { get; }
    public Parameter Weight => weight;
    public Parameter? Bias => bias;
    public Parameter LoraA => lora_A.weight!;
    public Parameter LoraB => lora_B.weight!;
    public Parameter Magnitude => lora_magnitude_vector;
    public double Scaling => _options.Scaling;
    public bool IsMerged { get; private set; }
    public IReadOnlyList<Parameter> TrainableParameters => new[] { LoraA, LoraB, Magnitude };

    /// <summary>§3.2 init: m = ‖W₀ + s·BA‖ per row (= ‖W₀ row‖ when B = 0), so the layer equals the base at step 0.</summary>
    public void ResetMagnitude()
    {
        if (IsMerged) throw new InvalidOperationException($"{Spec.Name}: cannot reset the DoRA magnitude while merged; call Unmerge() first.");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        lora_magnitude_vector.detach().copy_(RowNorm(BaseWeight32().add(LowRank.Product(LoraB, LoraA).mul(Scaling))));
    }

    void IBaseWeightDependent.OnBaseWeightsLoaded() => ResetMagnitude();

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        Tensor baseOut = nn.functional.linear(x, weight); // W₀x, (..., out)
        Tensor result = bias is null ? baseOut : baseOut.add(bias);
        if (IsMerged) return scope.MoveToOuter(result);

        Tensor xa = x.to_type(AdapterDtype);
        Tensor baseForDora;
        if (_options.Dropout > 0 && training)
        {
            // §3.2: with active dropout PEFT recomputes W₀·dropout(x), so both terms see the dropped input.
            xa = nn.functional.dropout(xa, _options.Dropout, true);
            baseForDora = nn.functional.linear(xa, weight.to_type(AdapterDtype));
        }
        else baseForDora = baseOut.to_type(AdapterDtype); // PR #2122: reuse the base output minus bias

        // n (out): row norms of W₀ + s·BA with the LoRA product detached, then n itself detached (paper §4.3).
        Tensor ba = lora_B.weight!.detach().matmul(lora_A.weight!.detach());
        Tensor n = torch.linalg.norm(weight.detach().to_type(AdapterDtype).add(ba.mul(Scaling)), dims: new long[] { 1 }).detach();
        Tensor c = lora_magnitude_vector.div(n); // (out), broadcast over (..., out)
        Tensor lora = lora_B.call(lora_A.call(xa));
        Tensor dora = c.sub(1).mul(baseForDora).add(c.mul(lora).mul(Scaling));
        result = result.add(dora.to_type(result.dtype));
        return scope.MoveToOuter(result);
    }

    /// <summary>Merged weight minus W₀: (m/n) ⊙ (W₀ + s·BA) − W₀, (out, in), float32, detached.</summary>
    public Tensor DeltaWeight()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        Tensor lora = LowRank.Product(LoraB, LoraA).mul(Scaling);
        Tensor d;
        if (IsMerged)
        {
            Tensor wMerged = weight.detach().to_type(ScalarType.Float32);
            Tensor w0 = wMerged.div(Factor(_mergedNorm!).unsqueeze(1)).sub(lora);
            d = wMerged.sub(w0);
        }
        else
        {
            Tensor w0 = BaseWeight32();
            Tensor v = w0.add(lora);
            d = Factor(RowNorm(v)).unsqueeze(1).mul(v).sub(w0);
        }
        return scope.MoveToOuter(d);
    }

    /// <summary>§3.2 merge: W ← (m/n) ⊙ (W₀ + ΔW) row-wise, n cached for unmerge.</summary>
    public void Merge()
    {
        if (IsMerged) throw new InvalidOperationException($"{Spec.Name}: the DoRA adapter is already merged; call Unmerge() first.");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        Tensor lora = LowRank.Product(LoraB, LoraA).mul(Scaling);
        Tensor v = BaseWeight32().add(lora);
        Tensor n = RowNorm(v);
        weight.detach().copy_(Factor(n).unsqueeze(1).mul(v));
        _mergedNorm?.Dispose();
        _mergedNorm = n.MoveToOuterDisposeScope();
        IsMerged = true;
    }

    /// <summary>§3.2 unmerge: W₀ = W / (m/n_cached) − ΔW.</summary>
    public void Unmerge()
    {
        if (!IsMerged) throw new InvalidOperationException($"{Spec.Name}: the DoRA adapter is not merged; nothing to unmerge.");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        Tensor lora = LowRank.Product(LoraB, LoraA).mul(Scaling);
        Tensor w = weight.detach().to_type(ScalarType.Float32);
        weight.detach().copy_(w.div(Factor(_mergedNorm!).unsqueeze(1)).sub(lora));
        _mergedNorm!.Dispose();
        _mergedNorm = null;
        IsMerged = false;
    }

    public IReadOnlyDictionary<string, Tensor> GetAdapterState() => new Dictionary<string, Tensor>
    {
        ["lora_A.weight"] = LoraA,
        ["lora_B.weight"] = LoraB,
        ["lora_magnitude_vector"] = Magnitude, // §2.4: saved without PEFT's trailing ".weight"
    };

    public void LoadAdapterState(IReadOnlyDictionary<string, Tensor> state)
    {
        if (IsMerged) throw new InvalidOperationException($"{Spec.Name}: cannot load adapter weights while merged; call Unmerge() first.");
        LowRank.CopyState(Spec.Name, GetAdapterState(), state);
    }

    private Tensor BaseWeight32() => weight.detach().to_type(ScalarType.Float32);

    private static Tensor RowNorm(Tensor w) => torch.linalg.norm(w, dims: new long[] { 1 });

    private Tensor Factor(Tensor n) => Magnitude.detach().to_type(ScalarType.Float32).div(n);

    protected override void Dispose(bool disposing)
    {
        if (disposing) { _mergedNorm?.Dispose(); _mergedNorm = null; }
        base.Dispose(disposing);
    }
}
