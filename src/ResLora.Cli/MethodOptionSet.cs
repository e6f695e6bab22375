using System.CommandLine;
using ResLora.Adapters;
using ResLora.Pipelines;

namespace ResLora.Cli;

/// <summary>
/// The adapter method and its hyperparameters on the command line. The method-specific flags come from the methods'
/// descriptors (<see cref="AdapterMethods.Flags"/>), typed, so a new method's flags appear here with no change.
/// </summary>
internal sealed class MethodOptionSet
{
    private readonly List<(MethodFlag Flag, Option Option)> _flags = AdapterMethods.Flags.Select(f => (f.Flag, Make(f.Flag))).ToList();

    public Option<string> Method { get; } = new("--method") { Description = $"Adapter method: {string.Join(", ", AdapterMethods.Names)}; or full (train: every parameter, no adapter; --out becomes a Hugging Face model folder).", DefaultValueFactory = _ => "lora" };
    public Option<int> Rank { get; } = new("--rank") { Description = "Adapter rank r.", DefaultValueFactory = _ => 8 };
    public Option<double> Alpha { get; } = new("--alpha") { Description = "Scaling numerator α (scaling = α/r).", DefaultValueFactory = _ => 16.0 };
    public Option<double> Dropout { get; } = new("--dropout") { Description = "Dropout on the adapter input.", DefaultValueFactory = _ => 0.0 };
    public Option<string?> Targets { get; } = new("--targets") { Description = "Modules to adapt: comma-separated names, all-linear, or a regex over full module paths (default: q_proj,v_proj for LLaMA-family models, query,value for BERT-family encoders)." };
    public Option<string?> Exclude { get; } = new("--exclude") { Description = "Modules to leave alone (same syntax as --targets)." };
    public Option<bool> Rslora { get; } = new("--rslora") { Description = "Scale by α/√r (rsLoRA) instead of α/r." };
    public Option<string?> LayersToTransform { get; } = new("--layers-to-transform") { Description = "Decoder layers that get adapters, e.g. 0,2 or 0-3 (PEFT's layers_to_transform; default: all). Not with a regex --targets." };
    public Option<string?> LayersPattern { get; } = new("--layers-pattern") { Description = "With --layers-to-transform: the module list the layer index follows (PEFT's layers_pattern), e.g. layers for model.layers.N; written to adapter_config.json." };
    public Option<string?> ModulesToSave { get; } = new("--modules-to-save") { Description = "Causal LMs: modules trained fully and saved with the adapter, e.g. lm_head or embed_tokens (PEFT's modules_to_save); applied on load, merge and generate." };
    public Option<string?> Init { get; } = new("--init") { Description = "LoRA-family init (PEFT's init_lora_weights): default, gaussian, pissa, pissa_niter_K (randomized SVD, K iterations), olora, loftq (needs --base-bits 4). PiSSA/OLoRA/LoftQ leave a residual in the base; the saved adapter is converted to apply to the original base (rank 2r)." };
    public Option<int> LoftqIter { get; } = new("--loftq-iter") { Description = "With --init loftq: alternating 4-bit quantization/SVD steps (PEFT's loftq_iter).", DefaultValueFactory = _ => 1 };
    public Option<string?> Refactor { get; } = new("--refactor") { Description = "RefLoRA's refactoring (full or scalar) on top of any method with low-rank pairs, e.g. --method reslora-bs --refactor full." };

    public void AddTo(Command cmd)
    {
        foreach (var o in new Option[] { Method, Rank, Alpha, Dropout, Targets, Exclude, LayersToTransform, LayersPattern, ModulesToSave, Rslora, Init, LoftqIter, Refactor }) cmd.Options.Add(o);
        foreach (var (_, o) in _flags) cmd.Options.Add(o);
    }

    /// <summary>
    /// The method spec the flags describe: common hyperparameters, the method's typed options, the refactoring.
    /// <paramref name="defaultTargets"/> applies when --targets is not given (the model family's PEFT default).
    /// </summary>
    public MethodSpec ReadSpec(ParseResult r, ModuleTargets? defaultTargets = null)
    {
        if (r.GetValue(Method) is { } m && FullFineTuning.IsFull(new MethodSpec { Method = m }))
        {
            // Full fine-tuning has no adapter: a flag that shapes one, given explicitly, is refused rather than ignored.
            var adapterOnly = new Option[] { Rank, Alpha, Dropout, Targets, Exclude, LayersToTransform, LayersPattern, ModulesToSave, Rslora, Init, LoftqIter, Refactor }
                .Concat(_flags.Select(f => f.Option)).Where(o => r.GetResult(o) is { Implicit: false }).Select(o => o.Name).ToList();
            if (adapterOnly.Count > 0)
                throw new UserInputException($"{string.Join(", ", adapterOnly)} with --method full: {(adapterOnly.Count == 1 ? "it shapes" : "they shape")} an adapter, and --method full trains every parameter of the model without one. Drop {(adapterOnly.Count == 1 ? "it" : "them")}, or choose an adapter method.");
            return new MethodSpec { Method = FullFineTuning.MethodName };
        }
        var spec = new MethodSpec
        {
            Method = r.GetValue(Method) ?? "lora",
            Rank = r.GetValue(Rank),
            Alpha = r.GetValue(Alpha),
            Dropout = r.GetValue(Dropout),
            Targets = r.GetValue(Targets) is { } t ? ModuleTargets.FromCommandLine(t, "--targets") : defaultTargets ?? ModuleTargets.List("q_proj", "v_proj"),
            Exclude = r.GetValue(Exclude) is { } e ? ModuleTargets.FromCommandLine(e, "--exclude") : null,
            UseRslora = r.GetValue(Rslora),
            Init = r.GetValue(Init) is { } init ? LoraInit.Parse(init) ?? throw new UserInputException($"--init '{init}': use one of {LoraInit.Accepted}.") : LoraInit.Default,
            LoftqIter = r.GetValue(LoftqIter),
            Refactor = r.GetValue(Refactor) is { } rf ? new RefLoraOptions(rf.Trim().ToLowerInvariant()) : null,
            LayersToTransform = r.GetValue(LayersToTransform) is { } lt ? ParseLayers(lt) : null,
            LayersPattern = r.GetValue(LayersPattern) is { } lp ? lp.Trim() : null,
            ModulesToSave = r.GetValue(ModulesToSave) is { } ms ? ParseNames(ms) : null,
        };
        if (spec.LayersPattern is { } pattern && (pattern.Length == 0 || pattern.Contains('.') || pattern.Contains(',')))
            throw new UserInputException($"--layers-pattern '{pattern}': give the name of the module list holding the layers, e.g. layers (for model.layers.N).");
        if (spec.LayersPattern is not null && spec.LayersToTransform is null)
            throw new UserInputException("--layers-pattern only says where --layers-to-transform's indices are; add --layers-to-transform (e.g. 0,2) or drop --layers-pattern.");
        if (spec.LayersToTransform is not null && spec.Targets is { Names: null, IsAllLinear: false })
            throw new UserInputException("--layers-to-transform cannot be combined with a regex --targets (PEFT refuses layers_to_transform with a string target_modules); list module names (e.g. q_proj,v_proj) or put the layer numbers into the regex.");
        if (r.GetResult(LoftqIter) is { Implicit: false } && spec.Init.Kind != LoraInitKind.Loftq)
            throw new UserInputException("--loftq-iter sets LoftQ's alternating steps; add --init loftq (with --base-bits 4) or drop --loftq-iter.");
        var given = _flags.Where(f => r.GetResult(f.Option) is { Implicit: false }).Select(f => (f.Flag, Value(r, f.Option))).ToList();
        return AdapterMethods.ApplyFlags(spec, given);
    }

    /// <summary>"0,2" or "0-3,6": non-negative layer indices, each once, in order.</summary>
    internal static IReadOnlyList<int> ParseLayers(string text)
    {
        var layers = new SortedSet<int>();
        foreach (var part in text.Split(',', StringSplitOptions.TrimEntries))
        {
            var ends = part.Split('-', StringSplitOptions.TrimEntries);
            bool ok = ends.Length is 1 or 2 && ends.All(e => int.TryParse(e, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out _));
            int lo = ok ? int.Parse(ends[0], System.Globalization.CultureInfo.InvariantCulture) : 0, hi = ok ? int.Parse(ends[^1], System.Globalization.CultureInfo.InvariantCulture) : 0;
            if (!ok || hi < lo)
                throw new UserInputException($"--layers-to-transform '{text}': '{part}' is not a layer index or range; give comma-separated indices from 0, e.g. 0,2 or 0-3.");
            for (int i = lo; i <= hi; i++) layers.Add(i);
        }
        return layers.ToList();
    }

    /// <summary>"lm_head, embed_tokens": module names, each once.</summary>
    private static IReadOnlyList<string> ParseNames(string text)
    {
        var names = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Distinct(StringComparer.Ordinal).ToList();
        if (names.Count == 0 || names.Any(n => n.Any(char.IsWhiteSpace)))
            throw new UserInputException($"--modules-to-save '{text}': give comma-separated module names, e.g. lm_head or lm_head,embed_tokens.");
        return names;
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
