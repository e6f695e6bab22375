using System.Text.Json.Serialization;

namespace ResLora.Adapters;

/// <summary>
/// ResLoRA (arXiv 2402.18039; docs/specs/reslora.md), named by meaning rather than the official code's flag numbers:
/// <c>structure</c> is (input-shortcut), bs (block-shortcut) or ms (middle-shortcut); <c>pre_num</c> the previous
/// blocks bs/ms use (−1 = all); <c>merge</c> how is/ms paths are removed for inference (bs is exact). Saved with
/// peft_type RESLORA and PEFT's LoRA key names; the window statistics travel in <c>statistics</c>.
/// </summary>
public sealed record ResLoraConfig : LowRankConfigBase
{
    [JsonPropertyName("peft_type")] public override string PeftType => "RESLORA";

    [JsonPropertyName("structure")] public string Structure { get; init; } = "is";

    [JsonPropertyName("pre_num")] public int PreNum { get; init; } = 1;

    /// <summary>is: bi (input-norm windows) or bw (weight norms of the two chain predecessors); ms: bi (scalar, ‖A x‖ windows) or bw / a (fold predecessors' A); bs: exact.</summary>
    [JsonPropertyName("merge")] public string Merge { get; init; } = "bi";

    /// <summary>Sliding-window length of the norm statistics (spec §4.2: merge_4_len = 100).</summary>
    [JsonPropertyName("window_length")] public int WindowLength { get; init; } = 100;

    /// <summary>Per module path: the window means (input ‖x‖_F, middle ‖A x‖_F) and the merge α, as last computed.</summary>
    [JsonPropertyName("statistics")] public Dictionary<string, ResLoraModuleStatistics>? Statistics { get; init; }

    /// <summary>Shortcut annealing (<c>--anneal-shortcuts</c>): window, schedule and the weight the paths ended at; null = never annealed (weight 1).</summary>
    [JsonPropertyName("reslora_anneal"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public ResLoraAnneal? Anneal { get; init; }

    /// <summary>The residual paths' weight the saved blocks were trained with last: 1 unless annealed.</summary>
    [JsonIgnore] public double ShortcutWeight => Anneal?.FinalWeight ?? 1.0;

    /// <summary>True when the paths were annealed to weight 0: every block is a plain LoRA pair and merges exactly.</summary>
    [JsonIgnore] public bool AnnealedToZero => Anneal is { Completed: true };

    [JsonIgnore] public override string Method => "reslora";

    [JsonIgnore]
    public ResLoraStructure StructureKind => Structure.ToLowerInvariant() switch
    {
        "is" => ResLoraStructure.InputShortcut,
        "bs" => ResLoraStructure.BlockShortcut,
        "ms" => ResLoraStructure.MiddleShortcut,
        _ => throw new UserInputException($"adapter_config.json: 'structure' is '{Structure}'; use is (input-shortcut), bs (block-shortcut) or ms (middle-shortcut)."),
    };

    /// <summary>
    /// The merge actually used: bs is always exact; "a" is the ms A-merge (same as bw for ms); "ls" the calibrated
    /// least-squares fold of is/ms (<see cref="LeastSquaresFold"/>), which needs calibration text at merge time. Paths
    /// annealed to weight 0 leave plain LoRA pairs: exact whatever the structure and the (valid) saved name.
    /// </summary>
    [JsonIgnore]
    public ResLoraMergeKind MergeKind => AnnealedToZero ? AnnealedMergeKind() : (StructureKind, Merge.ToLowerInvariant()) switch
    {
        (ResLoraStructure.BlockShortcut, "ls") => throw new UserInputException("merge 'ls' fits the residual paths of is/ms blocks; a bs adapter has nothing to fit: it merges exactly. Drop --merge ls."),
        (ResLoraStructure.BlockShortcut, "bi" or "bw" or "a" or "auto" or "exact") => ResLoraMergeKind.Exact,
        (_, "bi" or "auto") => ResLoraMergeKind.Bi,
        (_, "bw") => ResLoraMergeKind.Bw,
        (ResLoraStructure.MiddleShortcut, "a") => ResLoraMergeKind.Bw,
        (_, "ls") => ResLoraMergeKind.LeastSquares,
        _ => throw new UserInputException($"adapter_config.json: 'merge' is '{Merge}'; use bi, bw or ls for structure is, bi, bw, a or ls for ms, or auto (bs merges exactly)."),
    };

    /// <summary>The saved name still has to be valid for the structure; the merge itself is exact.</summary>
    private ResLoraMergeKind AnnealedMergeKind()
    {
        _ = (this with { Anneal = null }).MergeKind;
        return ResLoraMergeKind.Exact;
    }

    /// <summary>The merges worth trying for this structure when <c>merge</c> is auto (the one closest to the unmerged model on held-out text wins).</summary>
    [JsonIgnore]
    public IReadOnlyList<string> MergeCandidates => StructureKind switch
    {
        ResLoraStructure.BlockShortcut => new[] { "bi" },
        ResLoraStructure.InputShortcut => new[] { "bi", "bw", "ls" },
        _ => new[] { "bi", "a", "ls" },
    };

    /// <summary>Why PiSSA/OLoRA/LoftQ are refused: the shortcuts add earlier blocks' s·B·A to later layers.</summary>
    [JsonIgnore] protected override string InitFromBaseRefusal => "its shortcuts add earlier blocks' s·B·A to later layers, so a pair taken from the base would not leave the model equal to its base at step 0";

    public override void Validate()
    {
        base.Validate();
        _ = StructureKind;
        _ = MergeKind;
        if (PreNum == 0 && StructureKind != ResLoraStructure.InputShortcut)
            throw new UserInputException("adapter_config.json: 'pre_num' is 0, which makes bs/ms plain LoRA; use m ≥ 1 or −1 (all previous blocks).");
        if (PreNum < -1) throw new UserInputException($"adapter_config.json: 'pre_num' is {PreNum}; use m ≥ 1 or −1 (all previous blocks).");
        if (WindowLength < 1) throw new UserInputException($"adapter_config.json: 'window_length' must be at least 1, got {WindowLength}.");
        Anneal?.Validate("adapter_config.json: 'reslora_anneal'");
    }
}

public enum ResLoraStructure { InputShortcut, BlockShortcut, MiddleShortcut }

public enum ResLoraMergeKind { Exact, Bi, Bw, LeastSquares }

/// <summary>What a module saved about its training inputs: window means and the merge coefficient.</summary>
public sealed record ResLoraModuleStatistics
{
    [JsonPropertyName("input_norm")] public double InputNorm { get; init; }
    [JsonPropertyName("middle_norm")] public double MiddleNorm { get; init; }
    [JsonPropertyName("alpha")] public double Alpha { get; init; }
}
