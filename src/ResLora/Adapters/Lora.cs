using ResLora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ResLora.Adapters;

/// <summary>
/// LoRA on one frozen linear projection (peft-format.md §3.1):
/// y = W₀x + b + s · B A · dropout(x), with A = <c>lora_A.weight</c> (r, in), B = <c>lora_B.weight</c> (out, r),
/// s = α/r (α/√r with rsLoRA). State-dict keys: <c>weight</c>, <c>bias</c> (base, frozen), <c>lora_A.weight</c>,
/// <c>lora_B.weight</c>.
/// </summary>
public sealed class LoraLinear : nn.Module<Tensor, Tensor>, IAdapter, ILowRankPair
{
#pragma warning disable IDE1006 // field names are the PEFT / Hugging Face state-dict keys
    private readonly Parameter weight;
    private readonly Parameter? bias;
    private readonly Linear lora_A;
    private readonly Linear lora_B;
#pragma warning restore IDE1006

    private readonly LoraLayerOptions _options;

    public LoraLinear(LinearSpec spec, LoraLayerOptions options, ScalarType dtype, Device device, Generator? generator = null)
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
        RegisterComponents();
    }

    public LinearSpec Spec { get; }
    public string Method => "lora";
    public LoraLayerOptions Options => _options;

    /// <summary>dtype of A and B: float32 for fp16/bf16 bases (PEFT's autocast_adapter_dtype, §2.5), else the base dtype.</summary>
    public ScalarType AdapterDtype { get; }

    public Parameter Weight => weight;
    public Parameter? Bias => bias;
    public Parameter LoraA => lora_A.weight!;
    public Parameter LoraB => lora_B.weight!;
    public double Scaling => _options.Scaling;
    public bool IsMerged { get; private set; }
    public IReadOnlyList<Parameter> TrainableParameters => new[] { LoraA, LoraB };

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        Tensor result = nn.functional.linear(x, weight, bias);
        if (!IsMerged)
        {
            // §3.1: input cast to the adapter dtype, dropout on the adapter path only, result cast back.
            Tensor xa = x.to_type(AdapterDtype);
            if (_options.Dropout > 0 && training) xa = nn.functional.dropout(xa, _options.Dropout, true);
            Tensor lora = lora_B.call(lora_A.call(xa)).mul(Scaling);
            result = result.add(lora.to_type(result.dtype));
        }
        return scope.MoveToOuter(result);
    }

    /// <summary>ΔW = s · B A, (out, in), float32, detached.</summary>
    public Tensor DeltaWeight()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        Tensor d = LowRank.Product(LoraB, LoraA).mul(Scaling);
        return scope.MoveToOuter(d);
    }

    public void Merge()
    {
        if (IsMerged) throw new InvalidOperationException($"{Spec.Name}: the LoRA adapter is already merged; call Unmerge() first.");
        LowRank.AddToWeight(weight, DeltaWeight, +1);
        IsMerged = true;
    }

    public void Unmerge()
    {
        if (!IsMerged) throw new InvalidOperationException($"{Spec.Name}: the LoRA adapter is not merged; nothing to unmerge.");
        LowRank.AddToWeight(weight, DeltaWeight, -1);
        IsMerged = false;
    }

    public IReadOnlyDictionary<string, Tensor> GetAdapterState() =>
        new Dictionary<string, Tensor> { ["lora_A.weight"] = LoraA, ["lora_B.weight"] = LoraB };

    public void LoadAdapterState(IReadOnlyDictionary<string, Tensor> state)
    {
        if (IsMerged) throw new InvalidOperationException($"{Spec.Name}: cannot load adapter weights while merged; call Unmerge() first.");
        LowRank.CopyState(Spec.Name, GetAdapterState(), state);
    }
}

/// <summary>Code shared by the LoRA-family layers (base creation, PEFT inits, merge arithmetic, state copies).</summary>
internal static class LowRank
{
    internal static void CheckOptions(LinearSpec spec, LoraLayerOptions o)
    {
        if (o.R <= 0) throw new ArgumentException($"{spec.Name}: rank r = {o.R} must be positive (config field 'r' or 'rank_pattern').");
        if (!(o.Alpha > 0)) throw new ArgumentException($"{spec.Name}: lora_alpha = {o.Alpha} must be positive (config field 'lora_alpha' or 'alpha_pattern').");
        if (!(o.Dropout >= 0 && o.Dropout < 1)) throw new ArgumentException($"{spec.Name}: lora_dropout = {o.Dropout} must be in [0, 1).");
        if (spec.InFeatures <= 0 || spec.OutFeatures <= 0) throw new ArgumentException($"{spec.Name}: in/out features ({spec.InFeatures}, {spec.OutFeatures}) must be positive.");
    }

    internal static ScalarType AdapterDtype(ScalarType baseDtype) =>
        baseDtype is ScalarType.Float16 or ScalarType.BFloat16 ? ScalarType.Float32 : baseDtype;

    /// <summary>
    /// Frozen base weight (out, in) and bias (out), initialised like nn.Linear (U(±1/√in)) so a standalone layer is
    /// non-trivial; the model loader overwrites them with the checkpoint.
    /// </summary>
    internal static (Parameter Weight, Parameter? Bias) CreateBase(LinearSpec spec, ScalarType dtype, Device device, Generator? g)
    {
        using var _ = torch.no_grad();
        double bound = 1.0 / Math.Sqrt(spec.InFeatures);
        var w = new Parameter(Uniform(new long[] { spec.OutFeatures, spec.InFeatures }, bound, dtype, device, g), requires_grad: false);
        Parameter? b = spec.HasBias ? new Parameter(Uniform(new long[] { spec.OutFeatures }, bound, dtype, device, g), requires_grad: false) : null;
        return (w, b);
    }

    /// <summary>
    /// PEFT's init_lora_weights (§3.1): true → A Kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in), B = 0;
    /// "gaussian" → A ~ N(0, σ = 1/r), B = 0; false → A as true, B also Kaiming-uniform (U(−1/√r, 1/√r)), so ΔW ≠ 0.
    /// </summary>
    internal static void InitFactors(Tensor a, Tensor b, LoraLayerOptions o, Generator? g)
    {
        using var _ = torch.no_grad();
        long inFeatures = a.shape[1], r = a.shape[0];
        switch (o.Init)
        {
            case LoraInit.Gaussian:
                using (var t = torch.randn(a.shape, dtype: ScalarType.Float32, generator: g)) a.copy_(t.mul(1.0 / r));
                b.zero_();
                break;
            case LoraInit.Random:
                using (var t = Uniform(a.shape, 1.0 / Math.Sqrt(inFeatures), ScalarType.Float32, CPU, g)) a.copy_(t);
                using (var t = Uniform(b.shape, 1.0 / Math.Sqrt(r), ScalarType.Float32, CPU, g)) b.copy_(t);
                break;
            default:
                using (var t = Uniform(a.shape, 1.0 / Math.Sqrt(inFeatures), ScalarType.Float32, CPU, g)) a.copy_(t);
                b.zero_();
                break;
        }
    }

    /// <summary>U(−bound, bound) of the given shape; drawn in float32 on CPU for device-independent reproducibility.</summary>
    internal static Tensor Uniform(long[] shape, double bound, ScalarType dtype, Device device, Generator? g)
    {
        using var u = torch.rand(shape, dtype: ScalarType.Float32, generator: g);
        using var s = u.mul(2 * bound).sub_(bound);
        return s.to(dtype, device);
    }

    /// <summary>B·A in float32: (out, r)·(r, in) → (out, in).</summary>
    internal static Tensor Product(Tensor b, Tensor a)
    {
        using var b32 = b.detach().to_type(ScalarType.Float32);
        using var a32 = a.detach().to_type(ScalarType.Float32);
        return b32.matmul(a32);
    }

    /// <summary>W ← W ± ΔW computed in float32, cast back to the base dtype (§3.1 merge/unmerge).</summary>
    internal static void AddToWeight(Parameter weight, Func<Tensor> delta, int sign)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        Tensor d = delta();
        Tensor w32 = weight.detach().to_type(ScalarType.Float32);
        Tensor merged = sign > 0 ? w32.add(d) : w32.sub(d);
        weight.detach().copy_(merged);
    }

    /// <summary>Copies <paramref name="source"/> into the live tensors of <paramref name="target"/>; missing, extra or mis-shaped keys are errors.</summary>
    internal static void CopyState(string module, IReadOnlyDictionary<string, Tensor> target, IReadOnlyDictionary<string, Tensor> source)
    {
        foreach (var k in source.Keys)
            if (!target.ContainsKey(k))
                throw new InvalidDataException($"{module}: unexpected adapter tensor '{k}'; this layer has {string.Join(", ", target.Keys)}.");
        foreach (var (k, t) in target)
        {
            if (!source.TryGetValue(k, out var s))
                throw new InvalidDataException($"{module}: adapter tensor '{k}' is missing (expected shape [{string.Join(", ", t.shape)}]).");
            if (!s.shape.SequenceEqual(t.shape))
                throw new InvalidDataException($"{module}.{k}: saved shape [{string.Join(", ", s.shape)}] does not match the layer's [{string.Join(", ", t.shape)}]; check r / rank_pattern in adapter_config.json.");
        }
        using var _ = torch.no_grad();
        foreach (var (k, t) in target) t.detach().copy_(source[k]);
    }
}
