namespace ResLora.Adapters;

/// <summary>
/// ResLoRA's options: <c>structure</c> is (input-shortcut), bs (block-shortcut) or ms (middle-shortcut); <c>pre_num</c>
/// the previous blocks bs/ms use (m ≥ 1, or −1 for all; null = 1 for is, −1 for bs/ms); <c>merge</c> how is/ms
/// paths are merged away (bi, bw, a, auto; bs merges exactly); <c>AnnealSteps</c> K anneals the paths' weight from 1 to 0
/// over the last K optimizer steps on <c>AnnealSchedule</c> (linear, the default, or cosine; <see cref="ShortcutAnneal"/>).
/// </summary>
public sealed record ResLoraOptions(string Structure = "is", int? PreNum = null, string Merge = "bi", int? AnnealSteps = null, string? AnnealSchedule = null) : MethodOptions;

/// <summary>ResLoRA (arXiv 2402.18039; docs/specs/reslora.md): residual paths between LoRA blocks, merged away for inference.</summary>
public sealed partial class ResLoraMethod() : AdapterMethod("reslora", "RESLORA", typeof(ResLoraConfig),
    "ResLoRA: LoRA blocks with residual paths to the previous layers' blocks (Shi et al. 2024), merged away for inference.", "lora_")
{
    public override MethodOptions DefaultOptions => new ResLoraOptions();

    public override IReadOnlyList<MethodFlag> Flags => new MethodFlag[]
    {
        new MethodFlag<ResLoraOptions, string>("--structure", "ResLoRA: is (input-shortcut, default), bs (block-shortcut) or ms (middle-shortcut).", (o, v) => o with { Structure = v.Trim().ToLowerInvariant() }),
        new MethodFlag<ResLoraOptions, int>("--pre-num", "ResLoRA bs/ms: previous blocks used (m ≥ 1, or -1 for all; default -1 for bs/ms, 1 for is).", (o, v) => o with { PreNum = v }),
        new MethodFlag<ResLoraOptions, string>("--merge", "ResLoRA: how is/ms paths are merged away: bi (input norms, default), bw (weight norms; for ms the A-merge, also called a), auto. bs merges exactly.", (o, v) => o with { Merge = v.Trim().ToLowerInvariant() }),
        new MethodFlag<ResLoraOptions, int>("--anneal-shortcuts", "ResLoRA: over the last K optimizer steps take the residual paths' weight from 1 to 0 (off by default), so the adapter ends as a plain LoRA that merges and exports exactly. 1 ≤ K ≤ the run's steps.", (o, v) => o with { AnnealSteps = v }),
        new MethodFlag<ResLoraOptions, string>("--anneal-schedule", "ResLoRA --anneal-shortcuts K, the weight w at step s of T inside the window (1 before it): linear (default, w = (T - s)/K) or cosine (w = (1 + cos(pi (s - T + K)/K))/2); w = 0 at the last step.", (o, v) => o with { AnnealSchedule = v.Trim().ToLowerInvariant() }),
    };

    public override IReadOnlyList<MethodVariant> Variants => new[]
    {
        new MethodVariant("reslora-is", new ResLoraOptions("is"), "ResLoRA input-shortcut (pre_num 1)."),
        new MethodVariant("reslora-bs", new ResLoraOptions("bs", -1), "ResLoRA block-shortcut over all previous blocks (merges exactly)."),
        new MethodVariant("reslora-ms", new ResLoraOptions("ms", -1), "ResLoRA middle-shortcut over all previous blocks."),
    };

    /// <summary>The three structures; bare "reslora" is reslora-is.</summary>
    public override IEnumerable<MethodContender> Contenders(int rank) =>
        Variants.Select(v => new MethodContender(v.Name, new MethodSpec { Method = v.Name, Rank = rank }));

    public override MethodSetup Build(MethodSpec spec, MethodOptions? options)
    {
        var o = OptionsOr(options, new ResLoraOptions());
        return new(WithCommon(new ResLoraConfig
        {
            Structure = o.Structure,
            PreNum = o.PreNum ?? (o.Structure == "is" ? 1 : -1),
            Merge = o.Merge,
            Anneal = AnnealFor(o, spec.TotalSteps),
        }, spec));
    }

    /// <summary>
    /// The anneal record of a run (weight 1 until trained), or null without <c>--anneal-shortcuts</c>. Allowed for bs too:
    /// bs merges exactly anyway, but annealed its blocks export as rank-r pairs instead of concatenated rank r·(m+1) ones.
    /// </summary>
    private static ResLoraAnneal? AnnealFor(ResLoraOptions o, int totalSteps)
    {
        if (o.AnnealSteps is not { } k)
        {
            if (o.AnnealSchedule is not null)
                throw new UserInputException("--anneal-schedule sets the schedule of --anneal-shortcuts K; give --anneal-shortcuts too, or drop --anneal-schedule.");
            return null;
        }
        if (k < 1) throw new UserInputException($"--anneal-shortcuts {k}: the anneal window must be at least 1 optimizer step.");
        if (totalSteps > 0 && k > totalSteps)
            throw new UserInputException($"--anneal-shortcuts {k} is longer than the run ({totalSteps} optimizer steps); give at most {totalSteps}.");
        string schedule = o.AnnealSchedule ?? ShortcutAnneal.Linear;
        ShortcutAnneal.CheckSchedule(schedule, "--anneal-schedule");
        return new ResLoraAnneal { Steps = k, Schedule = schedule, FinalWeight = 1.0 };
    }

    public override IReadOnlyList<Type> LayerTypes(AdapterConfigBase config) => new[] { typeof(ResLoraLinear) };

    public override IAdapterLayerBuilder CreateBuilder(AdapterConfigBase config, Generator? generator) =>
        new ResLoraLayerBuilder(Checked<ResLoraConfig>(config), generator);

    /// <summary>
    /// An explicit <paramref name="requested"/> kind (validated for the structure), the saved kind, or for "auto" (asked
    /// or saved) every candidate of the structure, to be measured by the caller.
    /// </summary>
    public override IReadOnlyList<(string? Label, AdapterConfigBase Config)> MergeCandidates(AdapterConfigBase config, string? requested)
    {
        var rc = Checked<ResLoraConfig>(config);
        string kind = (requested ?? rc.Merge).Trim().ToLowerInvariant();
        if (rc.AnnealedToZero)
        {
            if (kind == "ls")
                throw new UserInputException("--merge ls fits the residual paths, but this adapter's were annealed to weight 0 (reslora_anneal): it is a plain LoRA and merges exactly. Drop --merge ls.");
            _ = (rc with { Merge = kind }).MergeKind; // validates the name for this structure
            return new (string?, AdapterConfigBase)[] { (AnnealedLabel, rc) };
        }
        if (rc.StructureKind == ResLoraStructure.BlockShortcut)
        {
            _ = (rc with { Merge = kind }).MergeKind; // refuses ls: nothing to fit
            return new (string?, AdapterConfigBase)[] { ("exact", rc) };
        }
        if (kind != "auto")
        {
            var chosen = rc with { Merge = kind };
            _ = chosen.MergeKind; // validates the name for this structure
            return new (string?, AdapterConfigBase)[] { (kind, chosen) };
        }
        return rc.MergeCandidates.Select(c => ((string?)c, (AdapterConfigBase)(rc with { Merge = c }))).ToList();
    }
}
