using System.CommandLine;
using ResLora.Adapters;

namespace ResLora.Cli;

/// <summary>
/// The adapter method and its hyperparameters on the command line. The method-specific flags come from the methods'
/// descriptors (<see cref="AdapterMethods.Flags"/>), typed, so a new method's flags appear here with no change.
/// </summary>
internal sealed class MethodOptionSet
{
    private readonly List<(MethodFlag Flag, Option Option)> _flags = AdapterMethods.Flags.Select(f => (f.Flag, Make(f.Flag))).ToList();

    public Option<string> Method { get; } = new("--method") { Description = $"Adapter method: {string.Join(", ", AdapterMethods.Names)}.", DefaultValueFactory = _ => "lora" };
    public Option<int> Rank { get; } = new("--rank") { Description = "Adapter rank r.", DefaultValueFactory = _ => 8 };
    public Option<double> Alpha { get; } = new("--alpha") { Description = "Scaling numerator α (scaling = α/r).", DefaultValueFactory = _ => 16.0 };
    public Option<double> Dropout { get; } = new("--dropout") { Description = "Dropout on the adapter input.", DefaultValueFactory = _ => 0.0 };
    public Option<string?> Targets { get; } = new("--targets") { Description = "Modules to adapt: comma-separated names, all-linear, or a regex over full module paths (default: q_proj,v_proj for LLaMA-family models, query,value for BERT-family encoders)." };
    public Option<string?> Exclude { get; } = new("--exclude") { Description = "Modules to leave alone (same syntax as --targets)." };
    public Option<bool> Rslora { get; } = new("--rslora") { Description = "Scale by α/√r (rsLoRA) instead of α/r." };
    public Option<string?> Refactor { get; } = new("--refactor") { Description = "RefLoRA's refactoring (full or scalar) on top of any method with low-rank pairs, e.g. --method reslora-bs --refactor full." };

    public void AddTo(Command cmd)
    {
        foreach (var o in new Option[] { Method, Rank, Alpha, Dropout, Targets, Exclude, Rslora, Refactor }) cmd.Options.Add(o);
        foreach (var (_, o) in _flags) cmd.Options.Add(o);
    }

    /// <summary>
    /// The method spec the flags describe: common hyperparameters, the method's typed options, the refactoring.
    /// <paramref name="defaultTargets"/> applies when --targets is not given (the model family's PEFT default).
    /// </summary>
    public MethodSpec ReadSpec(ParseResult r, ModuleTargets? defaultTargets = null)
    {
        var spec = new MethodSpec
        {
            Method = r.GetValue(Method) ?? "lora",
            Rank = r.GetValue(Rank),
            Alpha = r.GetValue(Alpha),
            Dropout = r.GetValue(Dropout),
            Targets = r.GetValue(Targets) is { } t ? ModuleTargets.FromCommandLine(t, "--targets") : defaultTargets ?? ModuleTargets.List("q_proj", "v_proj"),
            Exclude = r.GetValue(Exclude) is { } e ? ModuleTargets.FromCommandLine(e, "--exclude") : null,
            UseRslora = r.GetValue(Rslora),
            Refactor = r.GetValue(Refactor) is { } rf ? new RefLoraOptions(rf.Trim().ToLowerInvariant()) : null,
        };
        var given = _flags.Where(f => r.GetResult(f.Option) is { Implicit: false }).Select(f => (f.Flag, Value(r, f.Option))).ToList();
        return AdapterMethods.ApplyFlags(spec, given);
    }

    private static Option Make(MethodFlag f) => f.ValueType switch
    {
        var t when t == typeof(int) => new Option<int>(f.Name) { Description = f.Description },
        var t when t == typeof(long) => new Option<long>(f.Name) { Description = f.Description },
        var t when t == typeof(double) => new Option<double>(f.Name) { Description = f.Description },
        var t when t == typeof(bool) => new Option<bool>(f.Name) { Description = f.Description },
        var t when t == typeof(string) => new Option<string>(f.Name) { Description = f.Description },
        var t => throw new NotSupportedException($"method flag {f.Name}: values of type {t.Name} have no command-line option type; use int, long, double, bool or string."),
    };

    private static object Value(ParseResult r, Option o) => o switch
    {
        Option<int> i => r.GetValue(i),
        Option<long> l => r.GetValue(l),
        Option<double> d => r.GetValue(d),
        Option<bool> b => r.GetValue(b),
        Option<string> s => r.GetValue(s)!,
        _ => throw new NotSupportedException(o.Name),
    };
}
