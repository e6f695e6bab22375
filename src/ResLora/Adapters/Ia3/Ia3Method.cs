namespace ResLora.Adapters;

/// <summary>(IA)³'s option: which targeted modules scale their input (default: down_proj, as PEFT's LLaMA default).</summary>
public sealed record Ia3Options(string? FeedforwardModules = null) : MethodOptions;

/// <summary>(IA)³ (Liu et al. 2022) as PEFT implements it: peft_type IA3, one <c>ia3_l</c> vector per module, no rank.</summary>
public sealed class Ia3Method() : AdapterMethod("ia3", "IA3", typeof(Ia3Config),
    "(IA)³: one learned scaling vector per module (inputs of feedforward modules, outputs of the others); --rank and --alpha are unused.", "ia3_")
{
    public override MethodOptions DefaultOptions => new Ia3Options();

    public override IReadOnlyList<MethodFlag> Flags => new MethodFlag[]
    {
        new MethodFlag<Ia3Options, string>("--feedforward-modules", "IA3: targeted modules whose input is scaled (comma-separated names; default down_proj where targeted).", (o, v) => o with { FeedforwardModules = v }),
    };

    public override MethodSetup Build(MethodSpec spec, MethodOptions? options)
    {
        var o = OptionsOr(options, new Ia3Options());
        ModuleTargets feedforward = o.FeedforwardModules is { } names
            ? ModuleTargets.List(names.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            : ModuleTargets.List(spec.Targets.Names is { } targets ? targets.Where(t => t == "down_proj").ToArray() : new[] { "down_proj" });
        return new(new Ia3Config
        {
            TargetModules = spec.Targets,
            ExcludeModules = spec.Exclude,
            FeedforwardModules = feedforward.Names!.Count > 0 ? feedforward : null,
        });
    }

    public override IReadOnlyList<Type> LayerTypes(AdapterConfigBase config) => new[] { typeof(Ia3Linear) };

    public override IAdapterLayerBuilder CreateBuilder(AdapterConfigBase config, Generator? generator) =>
        new Ia3LayerBuilder(Checked<Ia3Config>(config), generator);

    /// <summary>A LoRA cannot carry the bias change (l−1)⊙b of an output-scaling module: the note gives the largest one dropped.</summary>
    public override IEnumerable<string> LoraExportLayerNotes(IReadOnlyDictionary<string, IAdapter> adapters)
    {
        var biased = adapters.Values.OfType<Ia3Linear>().Where(l => !l.IsFeedforward && l.Bias is not null).OrderBy(l => l.Spec.Name, StringComparer.Ordinal).ToList();
        if (biased.Count == 0) yield break;
        double worst = 0;
        string where = biased[0].Spec.Name;
        foreach (var l in biased)
        {
            using var scope = torch.NewDisposeScope();
            using var _ = torch.no_grad();
            Tensor db = l.Vector.detach().flatten().to_type(ScalarType.Float64).sub(1).mul(l.Bias!.detach().to_type(ScalarType.Float64));
            double m = db.abs().max().item<double>();
            if (m > worst) (worst, where) = (m, l.Spec.Name);
        }
        yield return $"IA3: {biased.Count} module(s) scale a biased output; a LoRA cannot carry the bias change (l−1)⊙b, which is dropped: largest |Δbias| = {worst.ToString("G6", System.Globalization.CultureInfo.InvariantCulture)} (at {where}).";
    }
}
