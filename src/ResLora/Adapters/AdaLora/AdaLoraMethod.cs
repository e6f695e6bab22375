namespace ResLora.Adapters;

/// <summary>AdaLoRA's option: the final average rank (default: two thirds of the initial rank).</summary>
public sealed record AdaLoraOptions(int? TargetR = null) : MethodOptions;

/// <summary>AdaLoRA (peft-format.md §3.3): SVD-shaped adapters whose rank budget is pruned on PEFT's cubic schedule.</summary>
public sealed class AdaLoraMethod() : AdapterMethod("adalora", "ADALORA", typeof(AdaLoraConfig),
    "AdaLoRA: SVD-shaped adapters, rank budget moved to where the sensitivity is (Zhang et al. 2023).", "lora_")
{
    public override MethodOptions DefaultOptions => new AdaLoraOptions();

    public override IReadOnlyList<MethodFlag> Flags => new MethodFlag[]
    {
        new MethodFlag<AdaLoraOptions, int>("--target-r", "AdaLoRA: the final average rank (default 2/3 of --rank).", (o, v) => o with { TargetR = v }),
    };

    /// <summary>--rank is init_r; PEFT's schedule shape: no pruning for the first 10% of steps, the final budget fixed for the last 20%.</summary>
    public override MethodSetup Build(MethodSpec spec, MethodOptions? options)
    {
        if (spec.TotalSteps <= 0) throw new UserInputException("AdaLoRA's rank budget follows the run's length: give the number of optimizer steps (--steps > 0).");
        int total = spec.TotalSteps;
        return new(new AdaLoraConfig
        {
            InitR = spec.Rank,
            TargetR = OptionsOr(options, new AdaLoraOptions()).TargetR ?? Math.Max(1, spec.Rank * 2 / 3),
            TotalStep = total,
            TInit = total / 10,
            TFinal = total / 5,
            DeltaT = Math.Max(1, total / 50),
            LoraAlpha = spec.Alpha,
            LoraDropout = spec.Dropout,
            TargetModules = spec.Targets,
            ExcludeModules = spec.Exclude,
        });
    }

    public override IReadOnlyList<Type> LayerTypes(AdapterConfigBase config) => new[] { typeof(AdaLoraLinear) };

    public override IAdapterLayerBuilder CreateBuilder(AdapterConfigBase config, Generator? generator) =>
        new AdaLoraLayerBuilder(Checked<AdaLoraConfig>(config), generator);
}
