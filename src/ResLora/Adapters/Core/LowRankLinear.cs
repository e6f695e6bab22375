using ResLora.Models;
using TorchSharp.Utils;

namespace ResLora.Adapters;

/// <summary>
/// The low-rank component that LoRA, DoRA, ResLoRA and RefLoRA (and RoLoRA, which trains LoRA layers) share: the frozen
/// base projection (<c>weight</c> (out, in), <c>bias</c>), the pair A = <c>lora_A.weight</c> (r, in) and
/// B = <c>lora_B.weight</c> (out, r) in PEFT's orientation with PEFT's inits (peft-format.md §3.1), the scaling
/// s = α/r (α/√r with rsLoRA), the adapter dtype, dropout on the adapter input, merge guards with a bit-exact unmerge,
/// and the state-dict get/load. A layer adds only its forward and its ΔW (and any parameters of its own).
/// One abstract base, not a chain: the field names below are the Hugging Face / PEFT state-dict keys, which
/// TorchSharp registers from fields, so they must live on the module class. The base W is either the parameter
/// <c>weight</c> or, with <c>--base-bits</c>, a packed submodule under the same name; layers reach it through <see cref="Base"/>.
/// </summary>
public abstract class LowRankLinear : nn.Module<Tensor, Tensor>, IAdapter, ILowRankPair, IFrozenBaseOwner, IBaseWeightDependent
{
#pragma warning disable IDE1006 // field names are the PEFT / Hugging Face state-dict keys
    private readonly Parameter? weight;
    [ComponentName(Name = "weight")] private readonly PackedWeight? packed_weight;
    protected readonly Parameter? bias;
    protected readonly Linear lora_A;
    protected readonly Linear lora_B;
#pragma warning restore IDE1006

    private readonly MergeState _merge = new();
    private Tensor? _initA, _initB; // A₀ (r, in), B₀ (out, r) float32 of a base-mutating init, for the conversion on save
    private readonly long _svdSeed;  // pissa_niter_K: the randomized SVD's seed, drawn at construction from the layer generator

    protected LowRankLinear(LinearSpec spec, LoraLayerOptions options, ScalarType dtype, Device device, Generator? generator)
        : base(spec.Name)
    {
        LowRank.CheckOptions(spec, options);
        Spec = spec;
        Options = options;
        Base = LowRank.CreateBase(spec, dtype, device, generator);
        (weight, packed_weight, bias) = (Base.Weight, Base.Packed, Base.Bias);
        AdapterDtype = LowRank.AdapterDtype(dtype);
        lora_A = nn.Linear(spec.InFeatures, options.R, hasBias: false, device: device, dtype: AdapterDtype);
        lora_B = nn.Linear(options.R, spec.OutFeatures, hasBias: false, device: device, dtype: AdapterDtype);
        LowRank.InitFactors(lora_A.weight!, lora_B.weight!, options, generator);
        if (options.Init.MutatesBase)
        {
            LoraInitializers.Check(spec, options);
            if (options.Init.Niter > 0) _svdSeed = torch.randint(long.MaxValue, new long[] { 1 }, dtype: ScalarType.Int64, generator: generator).item<long>();
            // A packed base (--base-bits) is initialised while the loader packs W: the init must see W, not its quantized copy.
            if (Base.Packed is { } packed) packed.BeforePack = w => ApplyMutatingInit(w);
        }
    }

    public LinearSpec Spec { get; }
    public LoraLayerOptions Options { get; }

    /// <summary>dtype of A and B: float32 for fp16/bf16 bases (PEFT's autocast_adapter_dtype, §2.5), else the base dtype.</summary>
    public ScalarType AdapterDtype { get; }

    /// <summary>The full-precision base weight; an error naming <c>--base-bits</c> when the base is packed (use <see cref="Base"/>).</summary>
    public Parameter Weight => Base.RequireWeight("reading the base weight tensor");
    public Parameter? Bias => bias;

    /// <inheritdoc/>
    public FrozenBase Base { get; }

    public Parameter LoraA => lora_A.weight!;
    public Parameter LoraB => lora_B.weight!;
    public double Scaling => Options.Scaling;
    public bool IsMerged => _merge.IsMerged;
    public virtual IReadOnlyList<Parameter> TrainableParameters => new[] { LoraA, LoraB };

    /// <summary>ΔW (out, in), float32, detached: what <see cref="Merge"/> adds to W₀.</summary>
    public abstract Tensor DeltaWeight();

    /// <summary>The method's name in error messages (LoRA, DoRA, ResLoRA).</summary>
    protected abstract string MethodName { get; }

    public void Merge() => _merge.Merge(Base, DeltaWeight, Spec.Name, MethodName);

    public void Unmerge() => _merge.Unmerge(Base, Spec.Name, MethodName);

    public virtual IReadOnlyDictionary<string, Tensor> GetAdapterState() =>
        new Dictionary<string, Tensor> { ["lora_A.weight"] = LoraA, ["lora_B.weight"] = LoraB };

    public void LoadAdapterState(IReadOnlyDictionary<string, Tensor> state)
    {
        _merge.RefuseWhileMerged(Spec.Name, "load adapter weights");
        LowRank.CopyState(Spec.Name, GetAdapterState(), state);
    }

    /// <summary>W₀ x + b: the frozen projection (the merged one once merged).</summary>
    protected Tensor BaseForward(Tensor x) => Base.Linear(x);

    /// <summary>§3.1: the input cast to the adapter dtype, with dropout on the adapter path only (training).</summary>
    protected Tensor AdapterInput(Tensor x) => Drop(x.to_type(AdapterDtype));

    /// <summary>
    /// A · dropout(x) (..., r) in the adapter dtype. Over a bf16/fp16 input with no dropout in effect and A training, this is
    /// <see cref="UpcastDown"/>: the same numbers, but backward keeps x instead of its float32 cast.
    /// </summary>
    protected Tensor Down(Tensor x) =>
        !UpcastDown.Off && x.dtype != AdapterDtype && !DropoutActive && torch.is_grad_enabled() && LoraA.requires_grad
            ? UpcastDown.Run(x, LoraA)
            : lora_A.call(AdapterInput(x));

    protected Tensor Drop(Tensor t) => DropoutActive ? nn.functional.dropout(t, Options.Dropout, true) : t;

    /// <summary>Whether adapter dropout applies to this forward (a positive rate, in training mode).</summary>
    protected bool DropoutActive => Options.Dropout > 0 && training;

    /// <summary>W₀ in float32: the weight before merging, also while merged (for ΔW formulas that read W₀, e.g. DoRA).</summary>
    protected Tensor BaseWeight32() => _merge.OriginalWeight32(Base);

    /// <summary>B·A in float32, (out, in).</summary>
    protected Tensor ProductBA() => LowRank.Product(LoraB, LoraA);

    /// <summary>Whether a base-mutating init (PiSSA, OLoRA, LoftQ) has set A₀, B₀ and left its residual in the base.</summary>
    public bool HasMutatedInit => _initA is not null;

    /// <summary>
    /// The adapter state for the ORIGINAL base W after a base-mutating init (PEFT's <c>subtract_mutated_init</c>): the base
    /// holds W − s·B₀A₀, so W_res + s·BA = W + s·[B, −B₀]·[A; A₀] and the pair of rank 2r applies to W with the same s
    /// once the config says r' = 2r and α' = 2α (√2·α with rsLoRA). Other tensors (DoRA's magnitude) are unchanged:
    /// the updated weight V = W_res + s·BA is the same in both forms. New tensors (float32).
    /// </summary>
    public IReadOnlyDictionary<string, Tensor> StateForOriginalBase()
    {
        if (_initA is null || _initB is null)
            throw new InvalidOperationException($"{Spec.Name}: the adapter was not initialised from its base weight (init_lora_weights = {Options.Init}); save it as it is.");
        var d = GetAdapterState().ToDictionary(kv => kv.Key, kv => kv.Value.detach().to_type(ScalarType.Float32).clone());
        using (var a = d["lora_A.weight"]) d["lora_A.weight"] = torch.cat(new[] { a, _initA }, 0); // (2r, in)
        using (var b = d["lora_B.weight"]) using (var nb = _initB.neg()) d["lora_B.weight"] = torch.cat(new[] { b, nb }, 1); // (out, 2r)
        return d;
    }

    /// <summary>
    /// After the checkpoint is loaded: a base-mutating init (PiSSA, OLoRA) of a full-precision base reads W, sets A and B and
    /// leaves the residual in the base (a packed base did this while it was packed); then <see cref="OnBaseLoaded"/>.
    /// </summary>
    void IBaseWeightDependent.OnBaseWeightsLoaded()
    {
        if (Options.Init.MutatesBase)
        {
            if (Base.Packed is null)
            {
                if (HasMutatedInit) throw new InvalidOperationException($"{Spec.Name}: the {Options.Init} init already ran on this base; it runs once, after the checkpoint is loaded.");
                using var scope = torch.NewDisposeScope();
                using var noGrad = torch.no_grad();
                Tensor residual = ApplyMutatingInit(Weight.detach());
                Weight.detach().copy_(residual.to(Weight.dtype));
            }
            else if (!HasMutatedInit)
                throw new InvalidOperationException($"{Spec.Name}: the {Options.Init} init runs while the base weight is packed, but nothing was packed into it; load the checkpoint first.");
        }
        OnBaseLoaded();
    }

    /// <summary>Base-dependent state a layer sets once the base is final (DoRA's magnitude); runs after a base-mutating init.</summary>
    protected virtual void OnBaseLoaded()
    {
    }

    /// <summary>Sets A, B (and A₀, B₀) from W (out, in) by the configured init; returns what the base must hold (new tensor).</summary>
    private Tensor ApplyMutatingInit(Tensor w)
    {
        _merge.RefuseWhileMerged(Spec.Name, $"run the {Options.Init} init");
        using var noGrad = torch.no_grad();
        using var w32 = w.to(ScalarType.Float32, CPU);
        var init = LoraInitializers.Compute(w32, Options, Spec, _svdSeed);
        using (init.A) using (init.B)
        {
            LoraA.detach().copy_(init.A);
            LoraB.detach().copy_(init.B);
            _initA?.Dispose();
            _initB?.Dispose();
            _initA = init.A.clone().DetachFromDisposeScope();
            _initB = init.B.clone().DetachFromDisposeScope();
        }
        return init.BaseWeight.to(w.dtype, w.device).DetachFromDisposeScope();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _merge.Dispose();
            _initA?.Dispose();
            _initB?.Dispose();
        }
        base.Dispose(disposing);
    }
}

/// <summary>
/// Merge bookkeeping every adapter layer shares: a second merge is refused, ΔW is added in float32, and the weight
/// before merging is kept so that unmerge restores it bit for bit (W + ΔW − ΔW is not W in floating point).
/// The copy costs the adapted weights' size while merged. A packed base (<c>--base-bits</c>) is never changed: the merge
/// dequantizes it, adds ΔW and keeps that full-precision weight beside it until unmerged.
/// </summary>
public sealed class MergeState : IDisposable
{
    private Tensor? _original;
    private FrozenBase? _packedMerged;

    public bool IsMerged => _original is not null || _packedMerged is not null;

    public void Merge(FrozenBase b, Func<Tensor> delta, string module, string method)
    {
        if (IsMerged) throw new InvalidOperationException($"{module}: the {method} adapter is already merged; call Unmerge() first.");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        Tensor d = delta();
        if (b.Weight is not { } weight)
        {
            // W_merged = dequant(W) + ΔW in the model's dtype; the packed W stays as it was.
            b.SetMergedWeight(b.Packed!.Dequantize(ScalarType.Float32).add(d).to_type(b.Dtype).DetachFromDisposeScope());
            _packedMerged = b;
            return;
        }
        Tensor original = weight.detach().clone();
        weight.detach().copy_(weight.detach().to_type(ScalarType.Float32).add(d));
        _original = original.DetachFromDisposeScope();
    }

    public void Unmerge(FrozenBase b, string module, string method)
    {
        if (_packedMerged is not null)
        {
            b.ClearMergedWeight();
            _packedMerged = null;
            return;
        }
        if (_original is not { } o) throw new InvalidOperationException($"{module}: the {method} adapter is not merged; nothing to unmerge.");
        using (torch.no_grad()) b.Weight!.detach().copy_(o);
        o.Dispose();
        _original = null;
    }

    /// <summary>The weight before merging in float32 (the live weight when not merged; a packed one dequantized); a new tensor.</summary>
    public Tensor OriginalWeight32(FrozenBase b) =>
        b.Weight is { } w ? (_original ?? w).detach().to_type(ScalarType.Float32) : b.Packed!.Dequantize(ScalarType.Float32);

    public void RefuseWhileMerged(string module, string what)
    {
        if (IsMerged) throw new InvalidOperationException($"{module}: cannot {what} while merged; call Unmerge() first.");
    }

    public void Dispose()
    {
        _original?.Dispose();
        _original = null;
        _packedMerged?.ClearMergedWeight();
        _packedMerged = null;
    }
}

/// <summary>Code shared by the LoRA-family layers (base creation, PEFT inits, merge arithmetic, state copies).</summary>
internal static class LowRank
{
    internal static void CheckOptions(LinearSpec spec, LoraLayerOptions o)
    {
        if (o.R <= 0) throw new UserInputException($"{spec.Name}: rank r = {o.R} must be positive (config field 'r' or 'rank_pattern').");
        if (!(o.Alpha > 0)) throw new UserInputException($"{spec.Name}: lora_alpha = {o.Alpha} must be positive (config field 'lora_alpha' or 'alpha_pattern').");
        if (!(o.Dropout >= 0 && o.Dropout < 1)) throw new UserInputException($"{spec.Name}: lora_dropout = {o.Dropout} must be in [0, 1).");
        if (spec.InFeatures <= 0 || spec.OutFeatures <= 0) throw new UserInputException($"{spec.Name}: in/out features ({spec.InFeatures}, {spec.OutFeatures}) must be positive.");
    }

    internal static ScalarType AdapterDtype(ScalarType baseDtype) =>
        baseDtype is ScalarType.Float16 or ScalarType.BFloat16 ? ScalarType.Float32 : baseDtype;

    /// <summary>
    /// Frozen base weight (out, in) and bias (out), initialised like nn.Linear (U(±1/√in)) so a standalone layer is
    /// non-trivial; the model loader overwrites them with the checkpoint. With <see cref="LinearSpec.PackedBase"/> the
    /// weight is packed storage instead (zero until the loader packs the checkpoint into it).
    /// </summary>
    internal static FrozenBase CreateBase(LinearSpec spec, ScalarType dtype, Device device, Generator? g)
    {
        using var _ = torch.no_grad();
        double bound = 1.0 / Math.Sqrt(spec.InFeatures);
        Parameter? w = null;
        PackedWeight? packed = spec.PackedBase?.Create(spec.OutFeatures, spec.InFeatures, device);
        if (packed is null) w = new Parameter(Uniform(new long[] { spec.OutFeatures, spec.InFeatures }, bound, dtype, device, g), requires_grad: false);
        else if (g is not null)
        {
            // The same draws as a full-precision base (discarded, one layer at a time), so that the adapter drawn next from
            // the same generator is the same with and without --base-bits.
            using var discard = Uniform(new long[] { spec.OutFeatures, spec.InFeatures }, bound, ScalarType.Float32, CPU, g);
        }
        Parameter? b = spec.HasBias ? new Parameter(Uniform(new long[] { spec.OutFeatures }, bound, dtype, device, g), requires_grad: false) : null;
        return new FrozenBase(spec, dtype, w, packed, b);
    }

    /// <summary>
    /// PEFT's init_lora_weights (§3.1): true → A Kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in), B = 0;
    /// "gaussian" → A ~ N(0, σ = 1/r), B = 0; false → A as true, B also Kaiming-uniform (U(−1/√r, 1/√r)), so ΔW ≠ 0.
    /// </summary>
    internal static void InitFactors(Tensor a, Tensor b, LoraLayerOptions o, Generator? g)
    {
        using var _ = torch.no_grad();
        long inFeatures = a.shape[1], r = a.shape[0];
        // PiSSA, OLoRA and LoftQ start as the default here and are set from W once it is loaded (LowRankLinear.OnBaseWeightsLoaded).
        switch (o.Init.Kind)
        {
            case LoraInitKind.Gaussian:
                using (var t = torch.randn(a.shape, dtype: ScalarType.Float32, generator: g)) a.copy_(t.mul(1.0 / r));
                b.zero_();
                break;
            case LoraInitKind.Random:
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

    /// <summary>Copies <paramref name="source"/> into the live tensors of <paramref name="target"/>; missing, extra or mis-shaped keys are errors.</summary>
    internal static void CopyState(string module, IReadOnlyDictionary<string, Tensor> target, IReadOnlyDictionary<string, Tensor> source)
    {
        foreach (var k in source.Keys)
            if (!target.ContainsKey(k))
                throw new UserInputException($"{module}: unexpected adapter tensor '{k}'; this layer has {string.Join(", ", target.Keys)}.");
        foreach (var (k, t) in target)
        {
            if (!source.TryGetValue(k, out var s))
                throw new UserInputException($"{module}: adapter tensor '{k}' is missing (expected shape [{string.Join(", ", t.shape)}]).");
            if (!s.shape.SequenceEqual(t.shape))
                throw new UserInputException($"{module}.{k}: saved shape [{string.Join(", ", s.shape)}] does not match the layer's [{string.Join(", ", t.shape)}]; check r / rank_pattern in adapter_config.json.");
        }
        using var _ = torch.no_grad();
        foreach (var (k, t) in target) t.detach().copy_(source[k]);
    }
}
