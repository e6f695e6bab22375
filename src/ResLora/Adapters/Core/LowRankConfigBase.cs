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
    /// <summary>LoftQ's alternating quantization/SVD steps (<c>--loftq-iter</c>); read by the LoRA-family layers with init_lora_weights = "loftq".</summary>
    [JsonIgnore] public int LoftqIter { get; init; } = 1;

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
        LoftqIter = LoftqIter,
        LayersToTransform = LayersToTransform,
    };

    /// <summary>Whether this method's layers take PiSSA/OLoRA/LoftQ (an A, B pair of <c>LowRankLinear</c> over the base).</summary>
    [JsonIgnore] protected virtual bool InitFromBaseSupported => false;

    /// <summary>Why this method cannot take a base-mutating init (for the refusal message).</summary>
    [JsonIgnore] protected virtual string InitFromBaseRefusal => "its layers are not one plain pair A, B over the base weight";

    public override void Validate()
    {
        if (R <= 0) throw Bad("r", R, "must be a positive rank, e.g. 8");
        if (!(LoraAlpha > 0) || double.IsInfinity(LoraAlpha)) throw Bad("lora_alpha", LoraAlpha, "must be a positive finite number, e.g. 16");
        if (!(LoraDropout >= 0 && LoraDropout < 1)) throw Bad("lora_dropout", LoraDropout, "must be in [0, 1)");
        if (LoftqIter < 1) throw new UserInputException($"--loftq-iter {LoftqIter}: LoftQ needs at least 1 alternating step; give --loftq-iter 1 or more.");
        if (InitLoraWeights.MutatesBase && UseRslora && (RankPattern.Count > 0 || AlphaPattern.Count > 0))
            throw new UserInputException($"--init {InitLoraWeights} with --rslora and rank_pattern/alpha_pattern: the trained adapter could not be saved as a LoRA of the original base (PEFT refuses this conversion too); drop --rslora or the patterns.");
        if (InitLoraWeights.MutatesBase && !InitFromBaseSupported)
            throw new UserInputException($"--init {InitLoraWeights} (init_lora_weights) sets a LoRA pair A, B from the base weight and leaves the rest in the base; method {Method} cannot take it: {InitFromBaseRefusal}. Use --method lora, dora or reflora, or drop --init.");
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
