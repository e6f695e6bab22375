using ResLora.Models;
using TorchSharp.Utils;

namespace ResLora.Adapters;

/// <summary>
/// VeRA on one frozen linear (PEFT's vera Linear; Kopiczko et al. 2024, eq. 1):
/// y = W₀x + b + λ_b ⊙ (B_s (λ_d ⊙ (A_s · dropout(x)))), with A_s = vera_A[:, :in] (r, in) and B_s = vera_B[:out, :]
/// (out, r) sliced from the projections every layer shares, and ΔW = (λ_b ⊙ B_s)(λ_d ⊙ A_s) (PEFT's get_delta_weight).
/// Only λ_b = <c>vera_lambda_b</c> (out) and λ_d = <c>vera_lambda_d</c> (r) train. Works on a packed base (<c>--base-bits</c>).
/// </summary>
public sealed class VeraLinear : nn.Module<Tensor, Tensor>, IAdapter, IFrozenBaseOwner, ISharedAdapterState
{
#pragma warning disable IDE1006 // state-dict keys
    private readonly Parameter? weight;
    [ComponentName(Name = "weight")] private readonly PackedWeight? packed_weight;
    private readonly Parameter? bias;
    private readonly Parameter vera_lambda_b;
    private readonly Parameter vera_lambda_d;
#pragma warning restore IDE1006
    private readonly VeraProjection _projection;
    private readonly VeraConfig _config;
    private readonly MergeState _merge = new();

    /// <param name="spec">The projection.</param>
    /// <param name="projection">The model's shared projections (this layer reserves its size in them).</param>
    /// <param name="config">dropout, d_initial, init_weights, save_projection.</param>
    /// <param name="dtype">The base dtype (the vectors are float32 over a half-precision base).</param>
    /// <param name="device">Where the layer lives.</param>
    /// <param name="generator">Draws the base init and, with init_weights = false, λ_d ~ N(0, 1).</param>
    public VeraLinear(LinearSpec spec, VeraProjection projection, VeraConfig config, ScalarType dtype, Device device, Generator? generator = null) : base(spec.Name)
    {
        Spec = spec;
        _projection = projection;
        _config = config;
        projection.Reserve(spec.InFeatures, spec.OutFeatures, spec.Name);
        Base = LowRank.CreateBase(spec, dtype, device, generator);
        (weight, packed_weight, bias) = (Base.Weight, Base.Packed, Base.Bias);
        var ad = LowRank.AdapterDtype(dtype);
        using (torch.no_grad())
        {
            // PEFT's update_layer: λ_b = 1, λ_d ~ N(0, 1); reset_vera_parameters (init_weights): λ_b = 0, λ_d = d_initial.
            using var b = config.InitWeights ? torch.zeros(spec.OutFeatures) : torch.ones(spec.OutFeatures);
            using var d = config.InitWeights ? torch.full(projection.R, config.DInitial) : torch.randn(new long[] { projection.R }, generator: generator);
            vera_lambda_b = new Parameter(b.to(ad, device));
            vera_lambda_d = new Parameter(d.to(ad, device));
        }
        RegisterComponents();
    }

    public LinearSpec Spec { get; }
    /// <summary>The full-precision base weight; an error naming <c>--base-bits</c> when the base is packed (use <see cref="Base"/>).</summary>
    public Parameter Weight => Base.RequireWeight("reading the base weight tensor");
    public Parameter? Bias => bias;

    /// <inheritdoc/>
    public FrozenBase Base { get; }
    /// <summary>The shared projections this layer slices.</summary>
    public VeraProjection Projection => _projection;
    /// <summary>λ_b (out).</summary>
    public Parameter LambdaB => vera_lambda_b;
    /// <summary>λ_d (r).</summary>
    public Parameter LambdaD => vera_lambda_d;
    public bool IsMerged => _merge.IsMerged;
    public IReadOnlyList<Parameter> TrainableParameters => new[] { vera_lambda_b, vera_lambda_d };

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        Tensor y = Base.Linear(x);
        if (IsMerged || AdapterSwitch.IsOff) return scope.MoveToOuter(y);
        var (a, b) = Slices();
        Tensor h = x.to_type(vera_lambda_d.dtype);
        if (training && _config.VeraDropout > 0) h = nn.functional.dropout(h, _config.VeraDropout, true);
        Tensor down = nn.functional.linear(h, a).mul(vera_lambda_d);     // (..., r)
        Tensor up = nn.functional.linear(down, b).mul(vera_lambda_b);    // (..., out)
        return scope.MoveToOuter(y.add(up.to_type(y.dtype)));
    }

    /// <summary>ΔW = (λ_b ⊙ B_s)(λ_d ⊙ A_s), (out, in), float32.</summary>
    public Tensor DeltaWeight()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var (a, b) = Slices();
        Tensor lb = vera_lambda_b.detach().to_type(ScalarType.Float32).unsqueeze(-1); // (out, 1)
        Tensor ld = vera_lambda_d.detach().to_type(ScalarType.Float32).unsqueeze(-1); // (r, 1)
        Tensor delta = lb.mul(b.to_type(ScalarType.Float32)).matmul(ld.mul(a.to_type(ScalarType.Float32)));
        return scope.MoveToOuter(delta);
    }

    public void Merge() => _merge.Merge(Base, DeltaWeight, Spec.Name, "VeRA");

    public void Unmerge() => _merge.Unmerge(Base, Spec.Name, "VeRA");

    public IReadOnlyDictionary<string, Tensor> GetAdapterState() => new Dictionary<string, Tensor>
    {
        ["vera_lambda_b"] = vera_lambda_b,
        ["vera_lambda_d"] = vera_lambda_d,
    };

    public void LoadAdapterState(IReadOnlyDictionary<string, Tensor> state)
    {
        _merge.RefuseWhileMerged(Spec.Name, "load adapter weights");
        LowRank.CopyState(Spec.Name, GetAdapterState(), state);
    }

    /// <summary>The shared projections under PEFT's model-level keys when save_projection is set, else nothing.</summary>
    public IReadOnlyDictionary<string, Tensor> GetSharedState() => _config.SaveProjection
        ? new Dictionary<string, Tensor> { [VeraProjection.KeyA] = _projection.A, [VeraProjection.KeyB] = _projection.B }
        : new Dictionary<string, Tensor>();

    /// <summary>
    /// Takes the saved projections when the file has them (whatever save_projection says: they are what the adapter was
    /// trained with); without them the projections drawn from projection_prng_key stay, which save_projection = true refuses.
    /// </summary>
    public void LoadSharedState(IReadOnlyDictionary<string, Tensor> state, string file)
    {
        _merge.RefuseWhileMerged(Spec.Name, "load the shared VeRA projections");
        bool hasA = state.TryGetValue(VeraProjection.KeyA, out var a), hasB = state.TryGetValue(VeraProjection.KeyB, out var b);
        if (hasA && hasB) { _projection.Load(a!, b!, file); return; }
        if (hasA || hasB)
            throw new UserInputException($"{file}: holds '{(hasA ? VeraProjection.KeyA : VeraProjection.KeyB)}' without '{(hasA ? VeraProjection.KeyB : VeraProjection.KeyA)}'; VeRA's projections are saved as a pair. The file is damaged: save the adapter again.");
        if (_config.SaveProjection)
            throw new UserInputException($"{file}: adapter_config.json says save_projection = true but the file has no '{VeraProjection.KeyA}' / '{VeraProjection.KeyB}'; the file is incomplete (or set save_projection to false to regenerate them from projection_prng_key, exact only if the generator matches the one that saved it).");
    }

    /// <summary>(A_s (r, in), B_s (out, r)): views of the shared projections.</summary>
    private (Tensor A, Tensor B) Slices() =>
        (_projection.A.narrow(1, 0, Spec.InFeatures), _projection.B.narrow(0, 0, Spec.OutFeatures));

    protected override void Dispose(bool disposing)
    {
        if (disposing) _merge.Dispose();
        base.Dispose(disposing);
    }
}

/// <summary>
/// Builds <see cref="VeraLinear"/> layers over one <see cref="VeraProjection"/> per plan (per model): the first layer
/// creates it on its device, every layer widens it to its own size.
/// </summary>
internal sealed class VeraLayerBuilder(VeraConfig config, Generator? generator) : IAdapterLayerBuilder
{
    private readonly object _gate = new();
    private VeraProjection? _projection;

    public nn.Module<Tensor, Tensor> Build(AdapterTarget target, ScalarType dtype, Device device)
    {
        VeraProjection p;
        lock (_gate) p = _projection ??= new VeraProjection(config.R, config.ProjectionPrngKey, LowRank.AdapterDtype(dtype), device);
        return new VeraLinear(target.Spec, p, config, dtype, device, generator);
    }
}
