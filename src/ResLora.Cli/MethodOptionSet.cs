using System.CommandLine;
using ResLora.Adapters;
using ResLora.Models;

namespace ResLora.Cli;

/// <summary>The adapter method and its hyperparameters on the command line, parsed into the method's config record.</summary>
internal sealed class MethodOptionSet
{
    public static IReadOnlyCollection<string> Methods => MethodCatalog.Names;

    public Option<string> Method { get; } = new("--method") { Description = $"Adapter method: {string.Join(", ", Methods)}.", DefaultValueFactory = _ => "lora" };
    public Option<int> Rank { get; } = new("--rank") { Description = "Adapter rank r.", DefaultValueFactory = _ => 8 };
    public Option<double> Alpha { get; } = new("--alpha") { Description = "Scaling numerator α (scaling = α/r).", DefaultValueFactory = _ => 16.0 };
    public Option<double> Dropout { get; } = new("--dropout") { Description = "Dropout on the adapter input.", DefaultValueFactory = _ => 0.0 };
    public Option<string> Targets { get; } = new("--targets") { Description = "Modules to adapt: comma-separated names (q_proj,v_proj), all-linear, or a regex over full module paths.", DefaultValueFactory = _ => "q_proj,v_proj" };
    public Option<string?> Exclude { get; } = new("--exclude") { Description = "Modules to leave alone (same syntax as --targets)." };
    public Option<bool> Rslora { get; } = new("--rslora") { Description = "Scale by α/√r (rsLoRA) instead of α/r." };
    public Option<string?> Structure { get; } = new("--structure") { Description = "ResLoRA: is (input-shortcut, default), bs (block-shortcut) or ms (middle-shortcut)." };
    public Option<int?> PreNum { get; } = new("--pre-num") { Description = "ResLoRA bs/ms: previous blocks used (m ≥ 1, or -1 for all; default -1 for bs/ms)." };
    public Option<string?> Merge { get; } = new("--merge") { Description = "ResLoRA: how is/ms paths are merged away: bi (input norms, default), bw (weight norms; for ms the A-merge, also called a). bs merges exactly." };

    public Option<int?> RefactorWarmup { get; } = new("--refactor-warmup") { Description = "RefLoRA: plain-LoRA steps before refactoring starts (default 20)." };
    public Option<int?> RefactorInterval { get; } = new("--refactor-interval") { Description = "RefLoRA: refactor every N steps after warm-up (default 1)." };

    public Option<string?> Refactor { get; } = new("--refactor") { Description = "RefLoRA's refactoring (full or scalar) on top of any method with low-rank pairs, e.g. --method reslora --structure bs --refactor full." };
    public Option<long?> RotationSeed { get; } = new("--rotation-seed") { Description = "RoLoRA: seed of R1's random signs (default 0)." };

    public void AddTo(Command cmd)
    {
        foreach (var o in new Option[] { Method, Rank, Alpha, Dropout, Targets, Exclude, Rslora, Structure, PreNum, Merge, RefactorWarmup, RefactorInterval, RotationSeed, Refactor }) cmd.Options.Add(o);
    }

    public static ModuleTargets ParseTargets(string s, string flag)
    {
        s = s.Trim();
        if (s.Length == 0) throw new ArgumentException($"{flag} is empty; give module names such as q_proj,v_proj, or all-linear.");
        if (string.Equals(s, "all-linear", StringComparison.OrdinalIgnoreCase)) return ModuleTargets.AllLinear;
        // A plain comma list of names/dotted suffixes; anything with regex metacharacters is a full-match regex (PEFT).
        if (s.IndexOfAny(new[] { '*', '(', ')', '[', ']', '|', '^', '$', '\\', '+', '?' }) >= 0) return ModuleTargets.Regex(s);
        return ModuleTargets.List(s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
    }

    /// <summary>The method's config record and any non-layer capabilities (built from the loaded model).</summary>
    public MethodSetup Read(System.CommandLine.ParseResult r) => MethodCatalog.Build(ReadSpec(r));

    public MethodSpec ReadSpec(System.CommandLine.ParseResult r)
    {
        var extra = new Dictionary<string, string>();
        if (r.GetValue(Structure) is { } st) extra["structure"] = st.Trim().ToLowerInvariant();
        if (r.GetValue(PreNum) is { } pn) extra["pre_num"] = pn.ToString(System.Globalization.CultureInfo.InvariantCulture);
        if (r.GetValue(Merge) is { } mg) extra["merge"] = mg.Trim().ToLowerInvariant();
        if (r.GetValue(RefactorWarmup) is { } rw) extra["refactor_warmup"] = rw.ToString(System.Globalization.CultureInfo.InvariantCulture);
        if (r.GetValue(Refactor) is { } rfc) extra["refactor"] = rfc.Trim().ToLowerInvariant();
        if (r.GetValue(RotationSeed) is { } rs) extra["rotation_seed"] = rs.ToString(System.Globalization.CultureInfo.InvariantCulture);
        if (r.GetValue(RefactorInterval) is { } ri) extra["refactor_interval"] = ri.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return new MethodSpec
        {
            Method = r.GetValue(Method) ?? "lora",
            Rank = r.GetValue(Rank),
            Alpha = r.GetValue(Alpha),
            Dropout = r.GetValue(Dropout),
            Targets = ParseTargets(r.GetValue(Targets)!, "--targets"),
            Exclude = r.GetValue(Exclude) is { } e ? ParseTargets(e, "--exclude") : null,
            UseRslora = r.GetValue(Rslora),
            Extra = extra,
        };
    }
}
