using System.Text.RegularExpressions;
using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>One targeted projection with its resolved rank and α (after rank_pattern/alpha_pattern).</summary>
public sealed record AdapterTarget(LinearSpec Spec, int R, double Alpha);

/// <summary>
/// Builds a method's layer for a targeted projection. A builder may also implement <see cref="IForwardLifecycle"/>
/// (ResLoRA's per-forward context); <see cref="AdapterPlan"/> forwards <c>BeginForward</c> to it.
/// </summary>
public interface IAdapterLayerBuilder
{
    /// <summary>The module returned to the model: owns the frozen base <c>weight</c>/<c>bias</c> and implements <see cref="IAdapter"/>.</summary>
    nn.Module<Tensor, Tensor> Build(AdapterTarget target, ScalarType dtype, Device device);
}

/// <summary>One decision of an <see cref="AdapterPlan"/>: adapted (with method, r, α) or left as a frozen linear, and why.</summary>
public sealed record PlanDecision(LinearSpec Spec, bool Adapted, string Method, int R, double Alpha, string Reason)
{
    public override string ToString() => Adapted
        ? $"{Spec.Name} → {Method} r={R} alpha={Alpha:G}"
        : $"{Spec.Name} → frozen ({Reason})";
}

/// <summary>
/// Construction-time targeting (peft-format.md §2.3): decides for every projection the model asks for whether it
/// gets the config's adapter layer (with per-module r/α from rank_pattern/alpha_pattern) or stays a frozen nn.Linear.
/// </summary>
public sealed class AdapterPlan : ILinearFactory, IForwardLifecycle, ICheckpointSupport
{
    private readonly List<PlanDecision> _decisions = new();
    private readonly object _gate = new();

    /// <summary>The plan of a config of a registered method (see <see cref="AdapterMethods"/>); the config is validated.</summary>
    public AdapterPlan(AdapterConfigBase config, Generator? generator = null)
        : this(config, AdapterMethods.For(config).CreateBuilder(config, generator))
    {
    }

    /// <summary>The plan of a config with a given layer builder (a method not in the registry, tests).</summary>
    public AdapterPlan(AdapterConfigBase config, IAdapterLayerBuilder builder)
    {
        config.Validate();
        Config = config;
        Builder = builder;
    }

    public AdapterConfigBase Config { get; }
    public IAdapterLayerBuilder Builder { get; }

    /// <summary>
    /// The format the frozen base weights of decoder-layer projections are packed in (<c>--base-bits</c>), or null for
    /// full precision. Set it before the model is built; adapted and frozen projections alike get it.
    /// </summary>
    public IPackedWeightFormat? PackedBase
    {
        get => _packedBase;
        set
        {
            lock (_gate)
                if (_decisions.Count > 0) throw new InvalidOperationException("AdapterPlan.PackedBase must be set before the model is built.");
            _packedBase = value;
        }
    }

    private IPackedWeightFormat? _packedBase;

    /// <summary>Every decision made by <see cref="Create"/> so far, in call order.</summary>
    public IReadOnlyList<PlanDecision> Decisions { get { lock (_gate) return _decisions.ToArray(); } }

    /// <summary>Pure decision for one projection (no module is built, nothing recorded).</summary>
    public PlanDecision Decide(LinearSpec spec)
    {
        var c = Config;
        string? hit = c.TargetModules!.MatchingEntry(spec);
        if (hit is null) return Frozen(spec, "not in target_modules");
        if (c.ExcludeModules?.MatchingEntry(spec) is { } ex) return Frozen(spec, $"excluded by exclude_modules '{ex}'");
        if (c.LayersToTransform is { } layers && !layers.Contains(spec.LayerIndex))
            return Frozen(spec, $"layer {spec.LayerIndex} not in layers_to_transform");
        // A method without a rank (IA3) has r = alpha = 0 in its decisions.
        if (c is not LowRankConfigBase lr) return new PlanDecision(spec, true, Config.Method, 0, 0, $"target_modules '{hit}'");
        int r = PatternKey(lr.RankPattern.Keys, spec.Name) is { } rk ? lr.RankPattern[rk] : lr.R;
        double alpha = PatternKey(lr.AlphaPattern.Keys, spec.Name) is { } ak ? lr.AlphaPattern[ak] : lr.LoraAlpha;
        return new PlanDecision(spec, true, Config.Method, r, alpha, $"target_modules '{hit}'");
    }

    public nn.Module<Tensor, Tensor> Create(LinearSpec spec, ScalarType dtype, Device device)
    {
        var d = Decide(spec);
        lock (_gate) _decisions.Add(d);
        spec = spec.PackedIn(_packedBase);
        if (d.Adapted)
        {
            var layer = Builder.Build(new AdapterTarget(spec, d.R, d.Alpha), dtype, device);
            if (spec.PackedBase is { } f && layer is not IFrozenBaseOwner { Base.IsPacked: true })
            {
                layer.Dispose();
                throw new UserInputException($"--method {Config.Method} cannot train on a packed base (--base-bits {f.Name}): its layer {layer.GetType().Name} keeps a full-precision base weight. Run it without --base-bits.");
            }
            return layer;
        }
        nn.Module<Tensor, Tensor> lin = spec.PackedBase is not null
            ? new PlainLinear(spec, dtype, device)
            : nn.Linear(spec.InFeatures, spec.OutFeatures, hasBias: spec.HasBias, device: device, dtype: dtype);
        foreach (var p in lin.parameters()) p.requires_grad = false;
        return lin;
    }

    /// <summary>Why the method's layers cannot be recomputed one decoder layer at a time (ResLoRA is/ms), or null.</summary>
    public string? CheckpointRefusal => Builder is ICheckpointSupport c ? c.CheckpointRefusal : null;

    /// <summary>
    /// Decides and records every projection of a model built by another factory (an adapter set's shared base,
    /// <see cref="MultiLoraPlan"/>), so that <see cref="EnsureAllPatternsMatched"/> checks this config against them.
    /// </summary>
    /// <param name="specs">The projections the model created.</param>
    public IReadOnlyList<PlanDecision> DecideAll(IEnumerable<LinearSpec> specs)
    {
        var d = specs.Select(Decide).ToList();
        lock (_gate) _decisions.AddRange(d);
        return d;
    }

    /// <summary>Starts a per-forward context in the method's builder when it has one (ResLoRA); otherwise a no-op.</summary>
    public IDisposable BeginForward() => Builder is IForwardLifecycle f ? f.BeginForward() : NoOp.Instance;

    /// <summary>Lines "module → method r=.. alpha=.." (or "→ frozen (reason)") for the given projections.</summary>
    public IReadOnlyList<string> DryRunReport(IEnumerable<LinearSpec> specs) => specs.Select(s => Decide(s).ToString()).ToList();

    /// <summary>
    /// Call after the model is built: throws when any target_modules / exclude_modules entry, rank_pattern or
    /// alpha_pattern key matched none of the projections created, or when nothing was adapted; the message names
    /// the pattern and lists the module types that exist.
    /// </summary>
    public void EnsureAllPatternsMatched()
    {
        var specs = Decisions.Select(d => d.Spec).ToList();
        string types = string.Join(", ", specs.Select(s => s.ModuleType).Distinct(StringComparer.Ordinal).OrderBy(t => t, StringComparer.Ordinal));
        var problems = new List<string>();
        void Check(string field, ModuleTargets? t)
        {
            if (t is null) return;
            foreach (var entry in t.Entries)
            {
                var one = t.Names is null ? t : ModuleTargets.List(entry);
                if (!specs.Any(one.Matches)) problems.Add($"{field} entry '{entry}' matched no module" + (t.Names is null ? "" : FusedHint(entry, specs)));
            }
        }
        Check("target_modules", Config.TargetModules);
        Check("exclude_modules", Config.ExcludeModules);
        foreach (var k in (Config as LowRankConfigBase)?.RankPattern.Keys ?? Enumerable.Empty<string>())
            if (!specs.Any(s => PatternMatches(k, s.Name))) problems.Add($"rank_pattern key '{k}' matched no module");
        foreach (var k in (Config as LowRankConfigBase)?.AlphaPattern.Keys ?? Enumerable.Empty<string>())
            if (!specs.Any(s => PatternMatches(k, s.Name))) problems.Add($"alpha_pattern key '{k}' matched no module");
        if (Config.LayersToTransform is { } layers && specs.Any(s => s.LayerIndex >= 0))
        {
            var present = specs.Where(s => s.LayerIndex >= 0).Select(s => s.LayerIndex).Distinct().Order().ToList();
            foreach (int i in layers.Where(i => !present.Contains(i)).Distinct())
                problems.Add($"layers_to_transform (--layers-to-transform) index {i} is not a layer of this model (its layers are {present[0]}–{present[^1]})");
        }
        // layers_pattern names the module list the layer index follows (PEFT: "…<layers_pattern>.<N>.…").
        var patterns = Config.LayersPattern switch
        {
            System.Text.Json.Nodes.JsonValue v when v.TryGetValue(out string? one) => new[] { one },
            System.Text.Json.Nodes.JsonArray a => a.Select(n => n?.GetValue<string>() ?? "").ToArray(),
            _ => Array.Empty<string>(),
        };
        if (patterns.Length > 0 && specs.FirstOrDefault(s => s.LayerIndex >= 0 && !patterns.Any(p => ("." + s.Name).Contains($".{p}.{s.LayerIndex}.", StringComparison.Ordinal))) is { } outside)
            problems.Add($"layers_pattern '{string.Join("', '", patterns)}' is not the module list holding the layers (e.g. '{outside.Name}')");
        if (problems.Count == 0 && specs.Count > 0 && !Decisions.Any(d => d.Adapted))
            problems.Add("no module was adapted (every match was removed by exclude_modules or layers_to_transform)");
        if (specs.Count == 0) problems.Add("the model created no projections through this plan");
        // The naming hint only where a name is what went wrong (a layer index or pattern problem says its own fix).
        bool names = problems.Any(p => !p.StartsWith("layers_", StringComparison.Ordinal));
        if (problems.Count > 0)
            throw new UserInputException(
                $"adapter config: {string.Join("; ", problems)}." + (names ? $" Module types in this model: {(types.Length == 0 ? "(none)" : types)}; " +
                "full paths look like 'model.layers.0.self_attn.q_proj'. Fix the names (a list entry matches the path or its dot-suffix; a string is a regex over the whole path)." : ""));
    }

    /// <summary>" (… fuses q_proj, k_proj, v_proj into qkv_proj; target qkv_proj)" when a name is part of a fused projection.</summary>
    private static string FusedHint(string entry, IEnumerable<LinearSpec> specs)
    {
        string last = entry[(entry.LastIndexOf('.') + 1)..];
        var fused = specs.FirstOrDefault(s => s.Fuses?.Contains(last) == true);
        return fused is null ? "" : $" (this model fuses {string.Join(", ", fused.Fuses!)} into one projection, {fused.ModuleType}, as Phi-3 does; target {fused.ModuleType} instead)";
    }

    /// <summary>PEFT's get_pattern_key: the first key whose pattern matches <c>(.*\.)?key$</c> at the start of the path.</summary>
    public static string? PatternKey(IEnumerable<string> keys, string modulePath) => keys.FirstOrDefault(k => PatternMatches(k, modulePath));

    private static bool PatternMatches(string key, string modulePath) =>
        Regex.IsMatch(modulePath, @"^(.*\.)?(?:" + key + ")$", RegexOptions.CultureInvariant);

    private static PlanDecision Frozen(LinearSpec spec, string reason) => new(spec, false, "none", 0, 0, reason);

    private sealed class NoOp : IDisposable
    {
        public static readonly NoOp Instance = new();
        public void Dispose() { }
    }
}
