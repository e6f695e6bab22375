namespace ResLora.Adapters;

/// <summary>
/// The registry of adapter methods. Adding a method is one folder under <c>Adapters/</c> (config record, layer(s),
/// one <see cref="AdapterMethod"/> descriptor) and one line in <see cref="BuiltIn"/>; the CLI, the adapter-folder
/// reader and writer, merge, the demo, the bench and the contract tests all enumerate this list.
/// </summary>
public static class AdapterMethods
{
    private static readonly AdapterMethod[] BuiltIn =
    {
        new LoraMethod(),
        new ResLoraMethod(),
        new RefLoraMethod(),
        new RoLoraMethod(),
        new AdaLoraMethod(),
        new LoHaMethod(),
        new LoKrMethod(),
        new Ia3Method(),
        new VeraMethod(),
    };

    private static readonly object Gate = new();
    private static readonly List<AdapterMethod> Registered = new(BuiltIn);

    /// <summary>Every method, built-in first.</summary>
    public static IReadOnlyList<AdapterMethod> All { get { lock (Gate) return Registered.ToArray(); } }

    /// <summary>
    /// Adds a method defined outside this library (its peft_type, name and variant names must be new). Built-in methods
    /// are listed in <see cref="BuiltIn"/>, not registered at run time.
    /// </summary>
    public static void Register(AdapterMethod method)
    {
        lock (Gate)
        {
            foreach (var m in Registered)
            {
                if (m.PeftType == method.PeftType) throw new UserInputException($"peft_type '{method.PeftType}' is already taken by method {m.Name}.");
                var taken = NamesOf(m).Intersect(NamesOf(method), StringComparer.Ordinal).FirstOrDefault();
                if (taken is not null) throw new UserInputException($"method name '{taken}' is already taken by method {m.Name}.");
            }
            Registered.Add(method);
        }
    }

    /// <summary>Every name <c>--method</c> accepts: method names and their variants.</summary>
    public static IReadOnlyList<string> Names => All.SelectMany(NamesOf).ToList();

    /// <summary>Every tensor-name prefix of every method (where a PEFT key's module path ends).</summary>
    public static IReadOnlyList<string> ParameterPrefixes => All.SelectMany(m => m.ParameterPrefixes).Distinct(StringComparer.Ordinal).ToList();

    /// <summary>Every method flag once, with the method that owns it.</summary>
    public static IReadOnlyList<(MethodFlag Flag, AdapterMethod Owner)> Flags =>
        All.SelectMany(m => m.Flags.Select(f => (f, m))).GroupBy(x => x.f.Name, StringComparer.Ordinal).Select(g => g.First()).ToList();

    /// <summary>The method reading and writing <paramref name="peftType"/>.</summary>
    public static AdapterMethod ForPeftType(string peftType) =>
        All.FirstOrDefault(m => m.PeftType == peftType)
        ?? throw new UserInputException($"adapter config field 'peft_type' = \"{peftType}\" is not supported; known types: {string.Join(", ", All.Select(m => m.PeftType).OrderBy(t => t, StringComparer.Ordinal))}.");

    /// <summary>The method a config belongs to (by its record type, else by its peft_type).</summary>
    public static AdapterMethod For(AdapterConfigBase config) =>
        All.FirstOrDefault(m => m.ConfigType == config.GetType()) ?? ForPeftType(config.PeftType);

    /// <summary>A method name or variant name → the method and the variant's options (null for the method itself).</summary>
    public static (AdapterMethod Method, MethodOptions? VariantOptions) Resolve(string name)
    {
        string n = name.Trim().ToLowerInvariant();
        foreach (var m in All)
        {
            if (m.Name == n) return (m, null);
            if (m.Variants.FirstOrDefault(v => v.Name == n) is { } v) return (m, v.Options);
        }
        throw new UserInputException($"--method '{name}' is not known; use one of: {string.Join(", ", Names)}.");
    }

    /// <summary>
    /// The run's method setup: the method's config (validated) from the spec's common hyperparameters and options
    /// (the variant's when the spec names one and sets none), with RefLoRA's refactoring composed on when asked.
    /// </summary>
    public static MethodSetup Build(MethodSpec spec)
    {
        var (method, variant) = Resolve(spec.Method);
        var setup = WithPlacement(method.Build(spec, spec.Options ?? variant ?? method.DefaultOptions), spec);
        setup.Config.Validate();
        // --init reaches the methods whose config carries init_lora_weights into a LoRA pair (WithCommon); no silent drop.
        if (spec.Init != LoraInit.Default && (setup.Config is not LowRankConfigBase lr || lr.InitLoraWeights != spec.Init))
            throw new UserInputException($"--init {spec.Init} initialises a LoRA pair A, B; method {spec.Method} has none it applies to. Use --method lora, dora or reflora, or drop --init.");
        return spec.Refactor is { } rf ? RefLoraMethod.Compose(setup, rf, spec.Method) : setup;
    }

    /// <summary>
    /// The setup with the spec's method-independent placement fields (layers_to_transform, layers_pattern,
    /// modules_to_save) on its config, and on the config a base transform (RoLoRA's rotation) returns.
    /// </summary>
    private static MethodSetup WithPlacement(MethodSetup setup, MethodSpec spec)
    {
        if (spec.LayersToTransform is null && spec.LayersPattern is null && spec.ModulesToSave is null) return setup;
        AdapterConfigBase Place(AdapterConfigBase c) => c with
        {
            LayersToTransform = spec.LayersToTransform ?? c.LayersToTransform,
            LayersPattern = spec.LayersPattern is { } lp ? System.Text.Json.Nodes.JsonValue.Create(lp) : c.LayersPattern,
            ModulesToSave = spec.ModulesToSave ?? c.ModulesToSave,
        };
        var prepare = setup.PrepareBase;
        return setup with
        {
            Config = Place(setup.Config),
            PrepareBase = prepare is null ? null : (modelDir, outDir) => { var (dir, c) = prepare(modelDir, outDir); return (dir, Place(c)); },
        };
    }

    /// <summary>
    /// Sets the given flags' values on the spec's options (the method's flags) or on its refactoring (RefLoRA's flags
    /// with <c>--refactor</c>); a flag of another method is an error naming both.
    /// </summary>
    public static MethodSpec ApplyFlags(MethodSpec spec, IEnumerable<(MethodFlag Flag, object Value)> given)
    {
        var (method, variant) = Resolve(spec.Method);
        var options = spec.Options ?? variant ?? method.DefaultOptions;
        var refactor = spec.Refactor;
        foreach (var (flag, value) in given)
        {
            if (options is not null && method.Flags.Any(f => f.Name == flag.Name)) options = method.Flags.First(f => f.Name == flag.Name).Apply(options, value);
            else if (refactor is not null && RefLoraMethod.RefactorFlags.Any(f => f.Name == flag.Name)) refactor = (RefLoraOptions)flag.Apply(refactor, value);
            else
            {
                string owner = Flags.FirstOrDefault(f => f.Flag.Name == flag.Name).Owner?.Name ?? "another method";
                throw new UserInputException($"{flag.Name} does not apply to --method {spec.Method}; it is an option of --method {owner}.");
            }
        }
        return spec with { Options = options, Refactor = refactor };
    }

    /// <summary>What the demo and the bench compare: every method's contenders.</summary>
    public static IReadOnlyList<MethodContender> Contenders(int rank) => All.SelectMany(m => m.Contenders(rank)).ToList();

    private static IEnumerable<string> NamesOf(AdapterMethod m) => m.Variants.Select(v => v.Name).Prepend(m.Name).Distinct(StringComparer.Ordinal);
}
