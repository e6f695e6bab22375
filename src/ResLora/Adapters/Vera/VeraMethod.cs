namespace ResLora.Adapters;

/// <summary>VeRA's options beyond the common ones (--rank is r, --dropout is vera_dropout); null = PEFT's default.</summary>
public sealed record VeraOptions(long? ProjectionPrngKey = null, bool? SaveProjection = null, double? DInitial = null) : MethodOptions;

/// <summary>
/// VeRA (Kopiczko et al. 2024) as PEFT implements it: peft_type VERA, frozen random vera_A / vera_B shared by all layers
/// (saved once as base_model.vera_A / base_model.vera_B), trainable vera_lambda_b and vera_lambda_d per layer.
/// </summary>
public sealed class VeraMethod() : AdapterMethod("vera", "VERA", typeof(VeraConfig),
    "VeRA: frozen random projections shared by every layer, scaled by trainable vectors λ_d (r) and λ_b (out); --rank is the shared rank (PEFT's default 256), --alpha is unused.", "vera_")
{
    public override MethodOptions DefaultOptions => new VeraOptions();

    public override IReadOnlyList<MethodFlag> Flags => new MethodFlag[]
    {
        new MethodFlag<VeraOptions, long>("--projection-prng-key", "VeRA: seed of the generator the shared projections vera_A / vera_B are drawn from (default 0).", (o, v) => o with { ProjectionPrngKey = v }),
        new MethodFlag<VeraOptions, bool>("--save-projection", "VeRA: write vera_A / vera_B into the adapter file (default true; false relies on regenerating them from the key).", (o, v) => o with { SaveProjection = v }),
        new MethodFlag<VeraOptions, double>("--d-initial", "VeRA: the value λ_d starts at (default 0.1; λ_b starts at 0).", (o, v) => o with { DInitial = v }),
    };

    public override MethodSetup Build(MethodSpec spec, MethodOptions? options)
    {
        var o = OptionsOr(options, new VeraOptions());
        var defaults = new VeraConfig();
        return new(new VeraConfig
        {
            R = spec.Rank,
            VeraDropout = spec.Dropout,
            TargetModules = spec.Targets,
            ExcludeModules = spec.Exclude,
            ProjectionPrngKey = o.ProjectionPrngKey ?? defaults.ProjectionPrngKey,
            SaveProjection = o.SaveProjection ?? defaults.SaveProjection,
            DInitial = o.DInitial ?? defaults.DInitial,
        });
    }

    public override IReadOnlyList<Type> LayerTypes(AdapterConfigBase config) => new[] { typeof(VeraLinear) };

    public override IAdapterLayerBuilder CreateBuilder(AdapterConfigBase config, Generator? generator) =>
        new VeraLayerBuilder(Checked<VeraConfig>(config), generator);
}
