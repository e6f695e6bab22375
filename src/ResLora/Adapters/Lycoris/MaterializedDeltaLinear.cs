using ResLora.Models;
using TorchSharp.Utils;

namespace ResLora.Adapters;

/// <summary>
/// The common body of LoHa and LoKr layers: ΔW is materialised each forward (no B(Ax) shortcut exists for a Hadamard or
/// Kronecker product) and applied as y = W₀x + b + ΔW x, with PEFT's rank dropout (rows of ΔW, rescaled) and module
/// dropout (skip the adapter) in training only.
/// </summary>
public abstract class MaterializedDeltaLinear : nn.Module<Tensor, Tensor>, IAdapter, IFrozenBaseOwner
{
#pragma warning disable IDE1006 // state-dict keys
    private readonly Parameter? weight;
    [ComponentName(Name = "weight")] private readonly PackedWeight? packed_weight;
    private readonly Parameter? bias;
#pragma warning restore IDE1006
    private readonly double _rankDropout, _moduleDropout;
    private readonly bool _rescaleRankDropout;
    private readonly MergeState _merge = new();

    protected MaterializedDeltaLinear(LinearSpec spec, double rankDropout, double moduleDropout, bool rescale, ScalarType dtype, Device device, Generator? g) : base(spec.Name)
    {
        Spec = spec;
        Base = LowRank.CreateBase(spec, dtype, device, g);
        (weight, packed_weight, bias) = (Base.Weight, Base.Packed, Base.Bias);
        _rankDropout = rankDropout;
        _moduleDropout = moduleDropout;
        _rescaleRankDropout = rescale;
    }

    public LinearSpec Spec { get; }
    /// <summary>The method's name in error messages (LoHa, LoKr, AdaLoRA).</summary>
    protected abstract string MethodName { get; }
    /// <summary>The full-precision base weight; an error naming <c>--base-bits</c> when the base is packed (use <see cref="Base"/>).</summary>
    public Parameter Weight => Base.RequireWeight("reading the base weight tensor");
    public Parameter? Bias => bias;

    /// <inheritdoc/>
    public FrozenBase Base { get; }
    public bool IsMerged => _merge.IsMerged;
    public abstract IReadOnlyList<Parameter> TrainableParameters { get; }
    public abstract double Scaling { get; }

    /// <summary>ΔW (out, in) in the adapter dtype, with gradients (no scaling by dropout).</summary>
    protected abstract Tensor Delta();

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var y = BaseForward(x);
        if (IsMerged || AdapterSwitch.IsOff) return scope.MoveToOuter(y);
        // Drawn from torch's generator: seeded by --seed, and replayed by --grad-checkpoint's recompute.
        if (training && _moduleDropout > 0 && torch.rand(1).item<float>() < _moduleDropout) return scope.MoveToOuter(y);
        var d = Delta() * Scaling;
        if (training && _rankDropout > 0)
        {
            var keep = (torch.rand(d.shape[0], 1, device: d.device) > _rankDropout).to_type(d.dtype);
            d = d * keep;
            if (_rescaleRankDropout) d = d / (1 - _rankDropout);
        }
        return scope.MoveToOuter(y + nn.functional.linear(x.to_type(d.dtype), d).to_type(y.dtype));
    }

    public Tensor DeltaWeight()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        return scope.MoveToOuter((Delta() * Scaling).to_type(ScalarType.Float32));
    }

    public void Merge() => _merge.Merge(Base, DeltaWeight, Spec.Name, MethodName);

    public void Unmerge() => _merge.Unmerge(Base, Spec.Name, MethodName);

    /// <summary>W₀x + b through the frozen base (full precision or packed).</summary>
    protected Tensor BaseForward(Tensor x) => Base.Linear(x);

    public abstract IReadOnlyDictionary<string, Tensor> GetAdapterState();

    public virtual void LoadAdapterState(IReadOnlyDictionary<string, Tensor> state)
    {
        RefuseWhileMerged("load adapter weights");
        LowRank.CopyState(Spec.Name, GetAdapterState(), state);
    }

    protected void RefuseWhileMerged(string what) => _merge.RefuseWhileMerged(Spec.Name, what);

    /// <summary>Kaiming-uniform with a = √5 on a (rows, cols) matrix: U(±1/√cols), as nn.Linear / PEFT's reset.</summary>
    protected static Parameter Kaiming(long rows, long cols, ScalarType dtype, Device device, Generator? g) =>
        new(LowRank.Uniform(new[] { rows, cols }, 1.0 / Math.Sqrt(cols), dtype, device, g));

    protected static Parameter Zeros(long rows, long cols, ScalarType dtype, Device device) => new(torch.zeros(rows, cols, dtype: dtype, device: device));

    protected override void Dispose(bool disposing)
    {
        if (disposing) _merge.Dispose();
        base.Dispose(disposing);
    }
}
