using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>
/// A method and its hyperparameters as the command line, the demo and the benchmarks name them. One record for all
/// methods keeps the CLI thin; <see cref="MethodCatalog.Build"/> turns it into the method's own config record.
/// </summary>
public sealed record MethodSpec
{
    public string Method { get; init; } = "lora";
    public int Rank { get; init; } = 8;
    public double Alpha { get; init; } = 16;
    public double Dropout { get; init; }
    public ModuleTargets Targets { get; init; } = ModuleTargets.List("q_proj", "v_proj");
    public ModuleTargets? Exclude { get; init; }
    public bool UseRslora { get; init; }
    /// <summary>Per-method extras by name (ResLoRA's structure/pre_num/merge, RefLoRA's variant, ...).</summary>
    public IReadOnlyDictionary<string, string> Extra { get; init; } = new Dictionary<string, string>();

    public string Label => Extra.Count == 0 ? Method : $"{Method}({string.Join(",", Extra.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $"{kv.Key}={kv.Value}"))})";
}

/// <summary>What a method needs at training time besides its layers (a step hook built from the loaded model).</summary>
public sealed record MethodSetup(AdapterConfigBase Config, Func<LlamaForCausalLM, IEnumerable<object>>? Extras = null)
{
    /// <summary>A transform of the base model before training (RoLoRA's rotation): (model folder, output folder) → (folder to train on, final config).</summary>
    public Func<string, string, (string ModelDir, AdapterConfigBase Config)>? PrepareModel { get; init; }
}

/// <summary>The methods this build knows, by command-line name.</summary>
public static class MethodCatalog
{
    private static readonly Dictionary<string, Func<MethodSpec, MethodSetup>> Builders = new(StringComparer.Ordinal)
    {
        ["lora"] = s => { CheckExtras(s); return new MethodSetup(Lora(s)); },
        ["dora"] = s => { CheckExtras(s); return new MethodSetup(Lora(s) with { UseDora = true }); },
        ["reslora"] = s => new MethodSetup(ResLora(s)),
        ["reflora"] = s => RefLora(s, "full"),
        ["reflora-s"] = s => RefLora(s, "scalar"),
        ["rolora"] = RoLora,
        ["adalora"] = s =>
        {
            CheckExtras(s, "total_step", "target_r");
            int init = s.Rank, target = int.Parse(s.ExtraOr("target_r", Math.Max(1, s.Rank * 2 / 3).ToString(System.Globalization.CultureInfo.InvariantCulture)), System.Globalization.CultureInfo.InvariantCulture);
            int total = int.Parse(s.ExtraOr("total_step", "0"), System.Globalization.CultureInfo.InvariantCulture);
            // PEFT's schedule shape: no pruning for the first 10% of steps, the final budget fixed for the last 20%.
            return new MethodSetup(new AdaLoraConfig
            {
                InitR = init,
                TargetR = target,
                TotalStep = total,
                TInit = total / 10,
                TFinal = total / 5,
                DeltaT = Math.Max(1, total / 50),
                LoraAlpha = s.Alpha,
                LoraDropout = s.Dropout,
                TargetModules = s.Targets,
                ExcludeModules = s.Exclude,
            });
        },
        ["loha"] = s => { CheckExtras(s); return new MethodSetup(new LoHaConfig { R = s.Rank, Alpha = s.Alpha, ModuleDropout = s.Dropout, TargetModules = s.Targets, ExcludeModules = s.Exclude }); },
        ["lokr"] = s => { CheckExtras(s); return new MethodSetup(new LoKrConfig { R = s.Rank, Alpha = s.Alpha, ModuleDropout = s.Dropout, TargetModules = s.Targets, ExcludeModules = s.Exclude }); },
    };

    public static IReadOnlyCollection<string> Names => Builders.Keys.ToArray();

    /// <summary>Adds a method (each method file registers itself through <see cref="Register"/>).</summary>
    public static void Register(string name, Func<MethodSpec, MethodSetup> builder) => Builders[name] = builder;

    public static MethodSetup Build(MethodSpec spec)
    {
        string m = spec.Method.Trim().ToLowerInvariant();
        if (!Builders.TryGetValue(m, out var b))
            throw new ArgumentException($"--method '{spec.Method}' is not known; use one of: {string.Join(", ", Builders.Keys.OrderBy(k => k, StringComparer.Ordinal))}.");
        // --refactor full|scalar: RefLoRA's step hook on top of any method whose layers are (A, B) pairs (ResLoRA included).
        string? refactor = spec.Extra.TryGetValue("refactor", out var rf) ? rf : null;
        var inner = refactor is null ? spec : spec with { Extra = spec.Extra.Where(kv => kv.Key is not ("refactor" or "refactor_warmup" or "refactor_interval")).ToDictionary(kv => kv.Key, kv => kv.Value) };
        var setup = b(inner);
        setup.Config.Validate();
        if (refactor is null) return setup;
        if (m is "reflora" or "reflora-s") throw new ArgumentException("--refactor is already what --method reflora does; drop one of them.");
        if (refactor is not ("full" or "scalar")) throw new ArgumentException($"--refactor '{refactor}': use full or scalar.");
        var hookCfg = new RefLoraConfig
        {
            R = setup.Config.R,
            LoraAlpha = setup.Config.LoraAlpha,
            TargetModules = setup.Config.TargetModules,
            Variant = refactor,
            RefactorWarmupSteps = int.Parse(spec.ExtraOr("refactor_warmup", "20"), System.Globalization.CultureInfo.InvariantCulture),
            RefactorInterval = int.Parse(spec.ExtraOr("refactor_interval", "1"), System.Globalization.CultureInfo.InvariantCulture),
        };
        var baseExtras = setup.Extras;
        return setup with
        {
            Extras = model =>
            {
                var pairs = AdapterModel.FindAdapters(model).Select(a => a.Adapter).OfType<ILowRankPair>().ToList();
                if (pairs.Count == 0) throw new ArgumentException($"--refactor needs low-rank (A, B) pairs; --method {spec.Method} has none.");
                var list = baseExtras?.Invoke(model).ToList() ?? new List<object>();
                list.Add(new RefLoraHook(hookCfg, pairs));
                list.Add(new RefactorNote(hookCfg));
                return list;
            },
        };
    }

    private sealed class RefactorNote(RefLoraConfig c) : IAdapterFolderNote
    {
        public (string FileName, string Json) Note() => RefLoraNote.For(c);
    }

    public static LoraConfig Lora(MethodSpec s) => WithCommon(new LoraConfig(), s);

    /// <summary>The hyperparameters every LoRA-family config shares, from the method spec.</summary>
    public static T WithCommon<T>(T config, MethodSpec s) where T : AdapterConfigBase =>
        (T)(config with { R = s.Rank, LoraAlpha = s.Alpha, LoraDropout = s.Dropout, TargetModules = s.Targets, ExcludeModules = s.Exclude, UseRslora = s.UseRslora });

    /// <summary>ResLoRA with structure (is|bs|ms), pre_num (m ≥ 1 or −1) and merge (bi|bw|a) from the extras.</summary>
    public static ResLoraConfig ResLora(MethodSpec s)
    {
        CheckExtras(s, "structure", "pre_num", "merge");
        string structure = s.ExtraOr("structure", "is");
        string preNum = s.ExtraOr("pre_num", structure == "is" ? "1" : "-1");
        if (!int.TryParse(preNum, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int pn))
            throw new ArgumentException($"--pre-num '{preNum}' is not an integer; use m ≥ 1 or -1 for all previous blocks.");
        return WithCommon(new ResLoraConfig
        {
            Structure = structure,
            PreNum = pn,
            Merge = s.ExtraOr("merge", "bi"),
        }, s);
    }

    /// <summary>RefLoRA: LoRA layers plus the refactoring step hook over every LoRA pair of the model.</summary>
    public static MethodSetup RefLora(MethodSpec s, string variant)
    {
        CheckExtras(s, "refactor_warmup", "refactor_interval");
        var cfg = WithCommon(new RefLoraConfig
        {
            Variant = variant,
            RefactorWarmupSteps = int.Parse(s.ExtraOr("refactor_warmup", "20"), System.Globalization.CultureInfo.InvariantCulture),
            RefactorInterval = int.Parse(s.ExtraOr("refactor_interval", "1"), System.Globalization.CultureInfo.InvariantCulture),
        }, s);
        return new MethodSetup(cfg, model => new object[] { new RefLoraHook(cfg, AdapterModel.FindAdapters(model).Select(a => a.Adapter).OfType<ILowRankPair>()) });
    }

    /// <summary>RoLoRA: rotate the base (norm fusion, R1 with the seed, R4) into OUT/rotated-base once, then LoRA on it.</summary>
    public static MethodSetup RoLora(MethodSpec s)
    {
        CheckExtras(s, "rotation_seed");
        long seed = long.Parse(s.ExtraOr("rotation_seed", "0"), System.Globalization.CultureInfo.InvariantCulture);
        var cfg = WithCommon(new RoLoraConfig { RotationSeed = seed }, s);
        return new MethodSetup(cfg)
        {
            PrepareModel = (modelDir, outDir) =>
            {
                string rotated = Path.Combine(outDir, "rotated-base");
                if (!File.Exists(Path.Combine(rotated, "config.json"))) Quantization.RoLoraRotation.RotateFolder(modelDir, rotated, seed);
                var rec = Quantization.RotationRecord.FromConfig(ModelConfig.Load(Path.Combine(rotated, "config.json")))!;
                return (rotated, cfg with { RotationSignsHash = rec.SignsHash, BaseModelNameOrPath = Path.GetFullPath(rotated) });
            },
        };
    }

    private static void CheckExtras(MethodSpec s, params string[] allowed)
    {
        foreach (var k in s.Extra.Keys)
            if (!allowed.Contains(k)) throw new ArgumentException($"--{k.Replace('_', '-')} does not apply to --method {s.Method}.");
    }

    /// <summary>Reads an extra as a string, with a default; unknown extras are refused by each method's builder.</summary>
    public static string ExtraOr(this MethodSpec s, string key, string fallback) => s.Extra.TryGetValue(key, out var v) ? v : fallback;
}
