using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>A method's own typed options (ResLoRA's structure, RefLoRA's warm-up, ...). Each method defines one record.</summary>
public abstract record MethodOptions;

/// <summary>
/// A method and its hyperparameters as the command line, the demo and the benchmarks name them: the hyperparameters
/// every LoRA-family method shares, plus the method's own typed <see cref="Options"/>.
/// </summary>
public sealed record MethodSpec
{
    /// <summary>A method name (lora, reslora, ...) or one of its named variants (dora, reslora-bs, reflora-s).</summary>
    public string Method { get; init; } = "lora";
    public int Rank { get; init; } = 8;
    public double Alpha { get; init; } = 16;
    public double Dropout { get; init; }
    public ModuleTargets Targets { get; init; } = ModuleTargets.List("q_proj", "v_proj");
    public ModuleTargets? Exclude { get; init; }
    public bool UseRslora { get; init; }

    /// <summary>PEFT's <c>init_lora_weights</c> (<c>--init</c>): default, gaussian, pissa, pissa_niter_K, olora, loftq.</summary>
    public LoraInit Init { get; init; }

    /// <summary>LoftQ's alternating quantization/SVD steps (<c>--loftq-iter</c>) with <see cref="Init"/> = loftq.</summary>
    public int LoftqIter { get; init; } = 1;

    /// <summary>PEFT's <c>layers_to_transform</c>: the decoder layers that get adapters (<c>--layers-to-transform</c>); null = all.</summary>
    public IReadOnlyList<int>? LayersToTransform { get; init; }

    /// <summary>PEFT's <c>layers_pattern</c>: the name of the module list holding the layers (<c>--layers-pattern</c>); null = not written.</summary>
    public string? LayersPattern { get; init; }

    /// <summary>PEFT's <c>modules_to_save</c>: modules trained fully and saved with the adapter (<c>--modules-to-save</c>); null = none.</summary>
    public IReadOnlyList<string>? ModulesToSave { get; init; }

    /// <summary>The method's own options; null = the defaults of the method or of the named variant.</summary>
    public MethodOptions? Options { get; init; }

    /// <summary>RefLoRA's refactoring composed with any method whose layers are low-rank pairs (<c>--refactor</c>); null = none.</summary>
    public RefLoraOptions? Refactor { get; init; }

    /// <summary>Optimizer steps of the run, for methods whose schedule depends on it (AdaLoRA's rank budget); 0 = unknown.</summary>
    public int TotalSteps { get; init; }
}

/// <summary>
/// One command-line flag of a method, typed: the CLI makes an option of <see cref="ValueType"/> from it and hands the
/// parsed value back through <see cref="Apply"/>; the library never parses strings of its own options.
/// </summary>
public abstract record MethodFlag(string Name, string Description)
{
    public abstract Type ValueType { get; }

    /// <summary>The options with this flag's value set; <paramref name="value"/> is of <see cref="ValueType"/>.</summary>
    public abstract MethodOptions Apply(MethodOptions options, object value);
}

/// <summary>A flag whose value of type <typeparamref name="T"/> sets a field of <typeparamref name="TOptions"/>.</summary>
public sealed record MethodFlag<TOptions, T>(string Name, string Description, Func<TOptions, T, TOptions> Set) : MethodFlag(Name, Description)
    where TOptions : MethodOptions
{
    public override Type ValueType => typeof(T);
    public override MethodOptions Apply(MethodOptions options, object value) => Set((TOptions)options, (T)value);
}

/// <summary>A named variant of a method (dora, reslora-bs, reflora-s): the method with preset options.</summary>
public sealed record MethodVariant(string Name, MethodOptions Options, string Description);

/// <summary>A labelled configuration the demo and the benchmarks compare (every method contributes its own).</summary>
public sealed record MethodContender(string Label, MethodSpec Spec, bool InDemo = true);

/// <summary>What building a method for a run gives: its config, plus what training needs besides the layers.</summary>
public sealed record MethodSetup(AdapterConfigBase Config)
{
    /// <summary>Objects built from the loaded model that the trainer or the saver use (step hooks, folder notes).</summary>
    public Func<nn.Module, IEnumerable<object>>? TrainingExtras { get; init; }

    /// <summary>A transform of the base model before training (RoLoRA's rotation): (model folder, output folder) → (folder to train on, final config).</summary>
    public Func<string, string, (string ModelDir, AdapterConfigBase Config)>? PrepareBase { get; init; }
}

/// <summary>
/// Everything the library knows about one adapter method, in one place: its names, the PEFT type and config record it
/// reads and writes, its parameter-name prefixes, its typed options and flags, how it builds its layers and what it
/// adds to training, loading and merging. One subclass per method, in the method's folder, listed once in
/// <see cref="AdapterMethods"/>; the CLI, the adapter folder, merge, the demo, the bench and the contract tests read it.
/// </summary>
public abstract class AdapterMethod
{
    /// <param name="name">The command-line name (lora, reslora, ...).</param>
    /// <param name="peftType">PEFT's <c>peft_type</c> of <paramref name="configType"/> (LORA, ...).</param>
    /// <param name="configType">The config record adapter_config.json is read into for <paramref name="peftType"/>.</param>
    /// <param name="description">One line for <c>--help</c> and docs.</param>
    /// <param name="parameterPrefixes">How the names of the method's saved tensors start (lora_, hada_, ...).</param>
    protected AdapterMethod(string name, string peftType, Type configType, string description, params string[] parameterPrefixes)
    {
        Name = name;
        PeftType = peftType;
        ConfigType = configType;
        Description = description;
        ParameterPrefixes = parameterPrefixes;
    }

    public string Name { get; }
    public string Description { get; }
    public string PeftType { get; }
    public Type ConfigType { get; }

    /// <summary>Where a PEFT key's module path ends: the first segment starting with one of these.</summary>
    public IReadOnlyList<string> ParameterPrefixes { get; }

    /// <summary>The method's options with nothing set (null for a method without options).</summary>
    public virtual MethodOptions? DefaultOptions => null;

    /// <summary>The flags that set <see cref="DefaultOptions"/>' fields.</summary>
    public virtual IReadOnlyList<MethodFlag> Flags => Array.Empty<MethodFlag>();

    /// <summary>Named variants, accepted wherever a method name is (<c>--method reslora-bs</c>).</summary>
    public virtual IReadOnlyList<MethodVariant> Variants => Array.Empty<MethodVariant>();

    /// <summary>The method's config (validated) and training-time extras for a run described by <paramref name="spec"/>, whose options are this method's.</summary>
    public abstract MethodSetup Build(MethodSpec spec, MethodOptions? options);

    /// <summary>The layer type(s) <see cref="CreateBuilder"/> builds for <paramref name="config"/> (what a saved adapter must hold).</summary>
    public abstract IReadOnlyList<Type> LayerTypes(AdapterConfigBase config);

    /// <summary>The layer builder for a config of <see cref="ConfigType"/> (validated first).</summary>
    public abstract IAdapterLayerBuilder CreateBuilder(AdapterConfigBase config, Generator? generator);

    /// <summary>What the demo and the bench compare for this method (default: the method and each variant).</summary>
    public virtual IEnumerable<MethodContender> Contenders(int rank)
    {
        if (Variants.Count == 0) yield return new MethodContender(Name, new MethodSpec { Method = Name, Rank = rank });
        else
        {
            if (!Variants.Any(v => v.Name == Name)) yield return new MethodContender(Name, new MethodSpec { Method = Name, Rank = rank });
            foreach (var v in Variants) yield return new MethodContender(v.Name, new MethodSpec { Method = v.Name, Rank = rank });
        }
    }

    /// <summary>Refuses a base model the adapter cannot be used on (RoLoRA: a differently rotated base). Default: any.</summary>
    public virtual void CheckBase(AdapterConfigBase config, ModelConfig model, string where)
    {
    }

    /// <summary>
    /// The configs to try when merging (ResLoRA: one per merge kind; <paramref name="requested"/> = <c>--merge</c>, "auto"
    /// or null for the saved choice). More than one means: measure each, keep the closest. Default: the config itself
    /// ("auto" accepted: a method with one merge has nothing to choose).
    /// </summary>
    public virtual IReadOnlyList<(string? Label, AdapterConfigBase Config)> MergeCandidates(AdapterConfigBase config, string? requested)
    {
        if (requested is not (null or "auto")) throw new UserInputException($"--merge chooses how ResLoRA's residual paths are merged; this is a {config.Method} adapter, which merges one way only. Drop --merge.");
        return new (string?, AdapterConfigBase)[] { (null, config) };
    }

    /// <summary>True when merging <paramref name="candidate"/> (one of <see cref="MergeCandidates"/>) goes through <see cref="CalibratedFold"/> (ResLoRA's ls).</summary>
    public virtual bool MergesByCalibratedFold(AdapterConfigBase candidate) => false;

    /// <summary>True when the adapter becomes a plain LoRA only through <see cref="CalibratedFold"/> (ResLoRA is/ms): the export needs calibration text.</summary>
    public virtual bool ExportsByCalibratedFold(AdapterConfigBase config) => false;

    /// <summary>The calibrated fold of an adapter loaded with <paramref name="plan"/>; a method without one refuses.</summary>
    public virtual ICalibratedFold CalibratedFold(AdapterPlan plan) =>
        throw new UserInputException($"--merge ls and the least-squares export fold ResLoRA is/ms adapters; this is a {plan.Config.Method} adapter, which has no residual paths to fit.");

    /// <summary>
    /// The adapter as exact low-rank pairs by module path when it is a LoRA by construction but its layers are not
    /// plain pairs (ResLoRA bs: each block's factors concatenated); null = export the layers (copy or SVD of ΔW).
    /// </summary>
    public virtual IReadOnlyDictionary<string, ILowRankPair>? ExactLoraPairs(AdapterPlan plan) => null;

    /// <summary>The export route <see cref="ExactLoraPairs"/> reports ("concat": ResLoRA bs's concatenated factors; "annealed": shortcuts annealed to 0).</summary>
    public virtual string ExactLoraPairsRoute(AdapterConfigBase config) => "concat";

    /// <summary>Refuses exporting the adapter as a plain LoRA when that LoRA would be wrong (RoLoRA: valid only on its rotated base). Default: any.</summary>
    public virtual void CheckLoraExport(AdapterConfigBase config, string adapterDir)
    {
    }

    /// <summary>
    /// Notes an export of <paramref name="config"/> as a LoRA carries (what it depends on); <paramref name="viaDeltaWeight"/>:
    /// the export goes through ΔW as the method merges it, not through pairs given as they are.
    /// </summary>
    public virtual IEnumerable<string> LoraExportNotes(AdapterConfigBase config, bool viaDeltaWeight) => Array.Empty<string>();

    /// <summary>Notes about what this method's layers among <paramref name="adapters"/> hold that a LoRA carries differently or cannot carry (DoRA's magnitude, IA3's bias change).</summary>
    public virtual IEnumerable<string> LoraExportLayerNotes(IReadOnlyDictionary<string, IAdapter> adapters) => Array.Empty<string>();

    /// <summary>Checks the config type, validates it and returns it typed.</summary>
    protected T Checked<T>(AdapterConfigBase config) where T : AdapterConfigBase
    {
        if (config is not T t) throw new UserInputException($"method {Name} builds from a {typeof(T).Name}, not a {config.GetType().Name}.");
        t.Validate();
        return t;
    }

    /// <summary>Options of the expected type, or the defaults.</summary>
    protected T OptionsOr<T>(MethodOptions? options, T defaults) where T : MethodOptions =>
        options switch
        {
            null => defaults,
            T t => t,
            _ => throw new UserInputException($"method {Name} takes {typeof(T).Name}, not {options.GetType().Name}."),
        };

    /// <summary>The hyperparameters every LoRA-family config shares, from the spec.</summary>
    protected static T WithCommon<T>(T config, MethodSpec s) where T : LowRankConfigBase =>
        (T)(config with { R = s.Rank, LoraAlpha = s.Alpha, LoraDropout = s.Dropout, TargetModules = s.Targets, ExcludeModules = s.Exclude, UseRslora = s.UseRslora, InitLoraWeights = s.Init, LoftqIter = s.LoftqIter });
}
