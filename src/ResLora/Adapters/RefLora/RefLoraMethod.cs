namespace ResLora.Adapters;

/// <summary>
/// RefLoRA's layers are LoRA's, and so is what it saves: an ordinary LoRA adapter (peft_type LORA, loadable by PEFT),
/// with the refactoring used noted in <see cref="RefLoraNote.FileName"/> beside it.
/// </summary>
internal sealed class RefLoraLayerBuilder(RefLoraConfig config, Generator? generator) : IAdapterLayerBuilder, IConfigSnapshot, IAdapterFolderNote
{
    private readonly LoraLayerBuilder _inner = new(config.AsLora(), generator);

    public AdapterConfigBase SnapshotConfig() => config.AsLora() with { BaseModelNameOrPath = config.BaseModelNameOrPath };

    public (string FileName, string Json) Note() => RefLoraNote.For(config);

    public nn.Module<Tensor, Tensor> Build(AdapterTarget target, ScalarType dtype, Device device) => _inner.Build(target, dtype, device);
}

/// <summary>The note RefLoRA leaves in an adapter folder: which refactoring trained these LoRA weights.</summary>
public static class RefLoraNote
{
    public const string FileName = "reslora_training.json";

    public static (string FileName, string Json) For(RefLoraConfig c) => (FileName, System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["refactoring"] = c.Variant == "scalar" ? "reflora-s" : "reflora",
        ["refactor_warmup_steps"] = c.RefactorWarmupSteps,
        ["refactor_interval"] = c.RefactorInterval,
        ["spec"] = "RefLoRA (gradient preconditioning before each optimizer step; scalar: rescale + Adam-moment transform after)",
    }, IO.Json.ReportJson.Indented));
}

/// <summary>RefLoRA's options: the variant (full or scalar = RefLoRA-S), the plain-LoRA warm-up and the refactoring interval (spec §3.3).</summary>
public sealed record RefLoraOptions(string Variant = "full", int WarmupSteps = 20, int Interval = 1) : MethodOptions;

/// <summary>
/// RefLoRA (docs/specs/reflora.md): LoRA layers plus the refactoring step hook over every LoRA pair of the model; saved
/// as an ordinary LoRA adapter. Its refactoring also composes with any method of low-rank pairs (<see cref="Compose"/>).
/// </summary>
public sealed class RefLoraMethod() : AdapterMethod("reflora", "REFLORA", typeof(RefLoraConfig),
    "RefLoRA: LoRA with the per-step optimal refactoring of its factors (gradient preconditioning); variant reflora-s rescales them.", "lora_")
{
    /// <summary>The flags that set the warm-up and interval, of RefLoRA itself or of <c>--refactor</c> on another method.</summary>
    public static readonly IReadOnlyList<MethodFlag> RefactorFlags = new MethodFlag[]
    {
        new MethodFlag<RefLoraOptions, int>("--refactor-warmup", "RefLoRA: plain-LoRA steps before refactoring starts (default 20).", (o, v) => o with { WarmupSteps = v }),
        new MethodFlag<RefLoraOptions, int>("--refactor-interval", "RefLoRA: refactor every N steps after warm-up (default 1).", (o, v) => o with { Interval = v }),
    };

    public override MethodOptions DefaultOptions => new RefLoraOptions();
    public override IReadOnlyList<MethodFlag> Flags => RefactorFlags;

    public override IReadOnlyList<MethodVariant> Variants => new[]
    {
        new MethodVariant("reflora-s", new RefLoraOptions("scalar"), "RefLoRA-S: a scalar rebalancing of ‖A‖ and ‖B‖ after each step, Adam moments transformed to match."),
    };

    public override IEnumerable<MethodContender> Contenders(int rank)
    {
        yield return new MethodContender("reflora", new MethodSpec { Method = "reflora", Rank = rank });
        yield return new MethodContender("reflora-s", new MethodSpec { Method = "reflora-s", Rank = rank }, InDemo: false);
    }

    public override MethodSetup Build(MethodSpec spec, MethodOptions? options)
    {
        var cfg = WithCommon(ConfigFor(OptionsOr(options, new RefLoraOptions())), spec);
        return new MethodSetup(cfg) { TrainingExtras = model => new object[] { new RefLoraHook(cfg, LowRankPairs(model)) } };
    }

    public override IReadOnlyList<Type> LayerTypes(AdapterConfigBase config) => new[] { typeof(LoraLinear) };

    public override IAdapterLayerBuilder CreateBuilder(AdapterConfigBase config, Generator? generator) =>
        new RefLoraLayerBuilder(Checked<RefLoraConfig>(config), generator);

    /// <summary>
    /// <c>--refactor full|scalar</c>: RefLoRA's step hook on top of another method whose layers are (A, B) pairs
    /// (ResLoRA included); the adapter keeps its own type and gains a note of the refactoring used.
    /// </summary>
    public static MethodSetup Compose(MethodSetup setup, RefLoraOptions refactor, string method)
    {
        if (setup.Config is RefLoraConfig) throw new UserInputException("--refactor is already what --method reflora does; drop one of them.");
        if (setup.Config is not LowRankConfigBase lowRank) throw new UserInputException($"--refactor refactors low-rank pairs; --method {method} has none.");
        var hookCfg = ConfigFor(refactor) with { R = lowRank.R, LoraAlpha = lowRank.LoraAlpha, TargetModules = setup.Config.TargetModules };
        hookCfg.Validate();
        var baseExtras = setup.TrainingExtras;
        return setup with
        {
            TrainingExtras = model =>
            {
                var pairs = LowRankPairs(model);
                if (pairs.Count == 0) throw new UserInputException($"--refactor needs low-rank (A, B) pairs; --method {method} has none.");
                var list = baseExtras?.Invoke(model).ToList() ?? new List<object>();
                list.Add(new RefLoraHook(hookCfg, pairs));
                list.Add(new RefactorNote(hookCfg));
                return list;
            },
        };
    }

    private static RefLoraConfig ConfigFor(RefLoraOptions o)
    {
        if (o.Variant is not ("full" or "scalar")) throw new UserInputException($"--refactor '{o.Variant}': use full or scalar.");
        return new RefLoraConfig { Variant = o.Variant, RefactorWarmupSteps = o.WarmupSteps, RefactorInterval = o.Interval };
    }

    private static List<ILowRankPair> LowRankPairs(TorchSharp.torch.nn.Module model) =>
        AdapterModel.FindAdapters(model).Select(a => a.Adapter).OfType<ILowRankPair>().ToList();

    private sealed class RefactorNote(RefLoraConfig c) : IAdapterFolderNote
    {
        public (string FileName, string Json) Note() => RefLoraNote.For(c);
    }
}
