using System.Text.Json.Serialization;

namespace ResLora.Adapters;

/// <summary>
/// The low-rank hyperparameters PEFT's LoraConfig and its relatives write (peft-format.md §2.3): r, lora_alpha,
/// lora_dropout, rank/alpha patterns, init_lora_weights, use_rslora. Configs of methods without a rank (IA3) derive
/// from <see cref="AdapterConfigBase"/> directly and write none of them.
/// </summary>
public abstract record LowRankConfigBase : AdapterConfigBase
{
    /// <summary>The JSON names of the fields below: an older config of a rank-free method that carries them is read with them ignored.</summary>
    public static readonly IReadOnlySet<string> LowRankFields = new HashSet<string>(StringComparer.Ordinal)
    {
        "r", "lora_alpha", "lora_dropout", "rank_pattern", "alpha_pattern", "init_lora_weights", "use_rslora",
    };

    [JsonPropertyName("r")] public int R { get; init; } = 8;
    [JsonPropertyName("lora_alpha")] public double LoraAlpha { get; init; } = 8;
    [JsonPropertyName("lora_dropout")] public double LoraDropout { get; init; }
    [JsonPropertyName("rank_pattern")] public Dictionary<string, int> RankPattern { get; init; } = new();
    [JsonPropertyName("alpha_pattern")] public Dictionary<string, double> AlphaPattern { get; init; } = new();
    [JsonPropertyName("init_lora_weights")] public LoraInit InitLoraWeights { get; init; } = LoraInit.Default;
    [JsonPropertyName("use_rslora")] public bool UseRslora { get; init; }

    /// <summary>The same targets and LoRA hyperparameters as a plain LoRA config (RefLoRA and RoLoRA train LoRA layers).</summary>
    public LoraConfig AsLora() => new()
    {
        R = R,
        LoraAlpha = LoraAlpha,
        LoraDropout = LoraDropout,
        TargetModules = TargetModules,
        ExcludeModules = ExcludeModules,
        RankPattern = RankPattern,
        AlphaPattern = AlphaPattern,
        InitLoraWeights = InitLoraWeights,
        UseRslora = UseRslora,
        LayersToTransform = LayersToTransform,
    };

    public override void Validate()
    {
        if (R <= 0) throw Bad("r", R, "must be a positive rank, e.g. 8");
        if (!(LoraAlpha > 0) || double.IsInfinity(LoraAlpha)) throw Bad("lora_alpha", LoraAlpha, "must be a positive finite number, e.g. 16");
        if (!(LoraDropout >= 0 && LoraDropout < 1)) throw Bad("lora_dropout", LoraDropout, "must be in [0, 1)");
        base.Validate();
        foreach (var (k, v) in RankPattern)
        {
            ModuleTargets.CheckRegex(k, "rank_pattern");
            if (v <= 0) throw Bad($"rank_pattern[\"{k}\"]", v, "must be a positive rank");
        }
        foreach (var (k, v) in AlphaPattern)
        {
            ModuleTargets.CheckRegex(k, "alpha_pattern");
            if (!(v > 0) || double.IsInfinity(v)) throw Bad($"alpha_pattern[\"{k}\"]", v, "must be a positive finite number");
        }
    }
}
