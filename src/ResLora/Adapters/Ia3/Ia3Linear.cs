using System.Text.Json.Serialization;
using ResLora.Models;
using TorchSharp.Utils;

namespace ResLora.Adapters;

/// <summary>
/// PEFT's IA3Config (Liu et al. 2022, "(IA)³"): one learned vector per targeted module, no rank. Modules matched by
/// <c>feedforward_modules</c> scale their input, the others their output. <c>r</c>/<c>lora_alpha</c> are unused.
/// </summary>
public sealed record Ia3Config : AdapterConfigBase
{
    [JsonPropertyName("peft_type")] public override string PeftType => "IA3";

    /// <summary>Modules whose input is scaled (PEFT requires them to be among the targets); the rest scale their output.</summary>
    [JsonPropertyName("feedforward_modules")] public ModuleTargets? FeedforwardModules { get; init; }

    /// <summary>true: the vectors start at 1 (the layer is the base); false: N(0, 1) as PEFT's unreset tensor.</summary>
    [JsonPropertyName("init_ia3_weights")] public bool InitIa3Weights { get; init; } = true;

    [JsonIgnore] public override string Method => "ia3";

    public override void Validate()
    {
        base.Validate();
        FeedforwardModules?.Validate("feedforward_modules");
        if (FeedforwardModules?.Names is { } ff && TargetModules?.Names is { } targets && ff.Except(targets, StringComparer.Ordinal).FirstOrDefault() is { } extra)
            throw new UserInputException($"adapter config field 'feedforward_modules' names '{extra}', which is not in target_modules; feedforward modules must be targeted too.");
    }
}

/// <summary>
/// (IA)³ on one frozen linear (PEFT's ia3 Linear): y = W₀ (l ⊙ x) + b for a feedforward module, y = l ⊙ (W₀x + b)
/// otherwise, with l = <c>ia3_l</c> saved as PEFT shapes it: (1, in) for feedforward, (out, 1) otherwise. Merging
/// scales W₀'s columns (feedforward) or rows and the bias.
/// </summary>
public sealed class Ia3Linear : nn.Module<Tensor, Tensor>, IAdapter, IFrozenBaseOwner
{
#pragma warning disable IDE1006 // state-dict keys
    private readonly Parameter? weight;
    [ComponentName(Name = "weight")] private readonly PackedWeight? packed_weight;
    private readonly Parameter? bias;
    private readonly Parameter ia3_l;
#pragma warning restore IDE1006
    private readonly MergeState _merge = new();
    private Tensor? _biasBeforeMerge;

    public Ia3Linear(LinearSpec spec, bool feedforward, bool initOnes, ScalarType dtype, Device device, Generator? generator = null) : base(spec.Name)
    {
        Spec = spec;
        IsFeedforward = feedforward;
        Base = LowRank.CreateBase(spec, dtype, device, generator);
        (weight, packed_weight, bias) = (Base.Weight, Base.Packed, Base.Bias);
        long[] shape = feedforward ? new long[] { 1, spec.InFeatures } : new long[] { spec.OutFeatures, 1 };
        using (torch.no_grad())
        {
            using var init = initOnes ? torch.ones(shape) : torch.randn(shape, generator: generator);
            ia3_l = new Parameter(init.to(LowRank.AdapterDtype(dtype), device));
        }
        RegisterComponents();
    }

    public LinearSpec Spec { get; }
    public bool IsFeedforward { get; }
    /// <summary>The full-precision base weight; an error naming <c>--base-bits</c> when the base is packed (use <see cref="Base"/>).</summary>
    public Parameter Weight => Base.RequireWeight("reading the base weight tensor");
    public Parameter? Bias => bias;

    /// <inheritdoc/>
    public FrozenBase Base { get; }
    public Parameter Vector => ia3_l;
    public bool IsMerged => _merge.IsMerged;
    public IReadOnlyList<Parameter> TrainableParameters => new[] { ia3_l };

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        if (IsMerged || AdapterSwitch.IsOff) return scope.MoveToOuter(Base.Linear(x));
        Tensor l = ia3_l.flatten(); // (in) or (out)
        Tensor y = IsFeedforward
            ? Base.Linear(x.to_type(l.dtype).mul(l).to_type(x.dtype))
            : Base.Linear(x).mul(l).to_type(x.dtype);
        return scope.MoveToOuter(y);
    }

    /// <summary>W₀ ⊙ l − W₀ (columns scaled for feedforward, rows otherwise), float32; the bias change is not part of ΔW.</summary>
    public Tensor DeltaWeight()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        Tensor w0 = _merge.OriginalWeight32(Base);
        Tensor l = ia3_l.detach().to_type(ScalarType.Float32); // (1, in) broadcasts over rows, (out, 1) over columns
        return scope.MoveToOuter(w0.mul(l).sub(w0));
    }

    public void Merge()
    {
        _merge.Merge(Base, DeltaWeight, Spec.Name, "IA3");
        if (bias is null || IsFeedforward) return;
        using var _ = torch.no_grad();
        _biasBeforeMerge = bias.detach().clone().DetachFromDisposeScope();
        bias.detach().mul_(ia3_l.detach().flatten().to_type(bias.dtype));
    }

    public void Unmerge()
    {
        _merge.Unmerge(Base, Spec.Name, "IA3");
        if (_biasBeforeMerge is null) return;
        using (torch.no_grad()) bias!.detach().copy_(_biasBeforeMerge);
        _biasBeforeMerge.Dispose();
        _biasBeforeMerge = null;
    }

    public IReadOnlyDictionary<string, Tensor> GetAdapterState() => new Dictionary<string, Tensor> { ["ia3_l"] = ia3_l };

    public void LoadAdapterState(IReadOnlyDictionary<string, Tensor> state)
    {
        _merge.RefuseWhileMerged(Spec.Name, "load adapter weights");
        LowRank.CopyState(Spec.Name, GetAdapterState(), state);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) { _merge.Dispose(); _biasBeforeMerge?.Dispose(); }
        base.Dispose(disposing);
    }
}

/// <summary>Builds <see cref="Ia3Linear"/> layers, feedforward or not as the config's <c>feedforward_modules</c> say.</summary>
internal sealed class Ia3LayerBuilder(Ia3Config config, Generator? generator) : IAdapterLayerBuilder
{
    public nn.Module<Tensor, Tensor> Build(AdapterTarget target, ScalarType dtype, Device device) =>
        new Ia3Linear(target.Spec, config.FeedforwardModules?.Matches(target.Spec) ?? false, config.InitIa3Weights, dtype, device, generator);
}
