using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using ResLora.Adapters;
using ResLora.IO;

namespace ResLora.Pipelines;

/// <summary>
/// One module's exported pair in PEFT's orientation: <see cref="A"/> (r_i, in), <see cref="B"/> (out, r_i), float32 on the
/// CPU, with every scaling folded in so that ΔW ≈ B·A (saved with lora_alpha = r_i, i.e. PEFT scaling 1).
/// <see cref="EnergyKept"/> = Σ_{i≤r_i} s_i² / Σ s_i² of the source ΔW (1 when exact or ΔW = 0).
/// </summary>
public sealed record ExportedPair(string Module, Tensor A, Tensor B, double EnergyKept, int Rank);

/// <summary>
/// A plain LoRA (peft_type LORA) made from any adapter: the config to save, the pairs, how much of each ΔW's energy was
/// kept, and notes for the user (what a LoRA cannot carry). Owns the tensors of <see cref="Pairs"/>: dispose when done.
/// </summary>
public sealed record LoraExportResult(LoraConfig Config, IReadOnlyList<ExportedPair> Pairs, double MinEnergyKept, double MeanEnergyKept, IReadOnlyList<string> Notes) : IDisposable
{
    /// <summary>The source adapter's method (lora, dora, loha, ia3, ...).</summary>
    public string SourceMethod { get; init; } = "";

    /// <summary>
    /// "exact" when B·A equals the source adapter's ΔW (a re-save of plain pairs, <see cref="LoraExport.FromLowRankPairs"/>),
    /// "approximate" otherwise (a truncated SVD, or pairs fitted to the source, such as ResLoRA's least-squares fold).
    /// </summary>
    public string Mode { get; init; } = "";

    /// <summary>
    /// How the pairs were made: "pairs" (re-saved), "svd"; <see cref="ExportPipeline"/> names its route: copy, concat
    /// (ResLoRA bs), ls or ls+distill (ResLoRA is/ms), svd.
    /// </summary>
    public string Route { get; init; } = "";

    /// <summary>The exported LoRA against the source adapter on held-out text, when it was measured (written into the report).</summary>
    public ComparisonReport? HeldOut { get; init; }

    /// <summary>The rank asked for (svd), null for an exact re-save.</summary>
    public int? RequestedRank { get; init; }

    /// <summary>
    /// Fully trained modules the source adapter carries (PEFT's modules_to_save, e.g. <c>lm_head.weight</c>) by parameter
    /// path, owned by this result: written beside the pairs, so the export keeps them (its config lists them too).
    /// </summary>
    public IReadOnlyDictionary<string, Tensor> SavedModules { get; init; } = new Dictionary<string, Tensor>();

    public void Dispose()
    {
        foreach (var p in Pairs)
        {
            p.A.Dispose();
            p.B.Dispose();
        }
        foreach (var t in SavedModules.Values) t.Dispose();
    }
}

/// <summary>
/// Leaves this project as a plain PEFT LoRA that vLLM, PEFT and other servers load: every adapter's ΔW becomes a pair
/// (A, B) with ΔW ≈ B·A, written with lora_alpha = r per module (scaling 1; servers that ignore alpha_pattern, such as
/// vLLM, compute lora_alpha / r = 1 too) and per-module ranks in rank_pattern when they differ.
/// </summary>
public static class LoraExport
{
    public const string ReportFileName = "export_report.json";
    private const string LoraA = "lora_A.weight";
    private const string LoraB = "lora_B.weight";

    /// <summary>
    /// Truncated SVD of each adapter's ΔW = U S Vᵀ, computed in float64: B = U_R·√S_R, A = √S_R·V_Rᵀ with
    /// R = min(<paramref name="rank"/>, out, in); energy kept = Σ_{i≤R} s_i² / Σ s_i² (1 when ΔW = 0). By Eckart–Young
    /// B·A is the closest rank-R matrix to ΔW in Frobenius norm, with error √(Σ_{i&gt;R} s_i²). Works for every
    /// <see cref="IAdapter"/> (LoRA, DoRA, ResLoRA, AdaLoRA, LoHa, LoKr, IA3, ...).
    /// </summary>
    /// <param name="adapters">Every adapter the source config created, keyed by module path (<see cref="AdapterModel.ByModulePath"/>).</param>
    /// <param name="rank">The rank to keep per module (capped by the module's dimensions).</param>
    /// <param name="source">The source adapter's config: targeting, base model, method-specific notes.</param>
    public static LoraExportResult FromDeltaWeights(IReadOnlyDictionary<string, IAdapter> adapters, int rank, AdapterConfigBase source)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (rank <= 0) throw new UserInputException($"export rank = {rank}: must be a positive rank, e.g. 16.");
        if (adapters.Count == 0) throw new UserInputException("export: no adapters to export (the model has no adapter layers; check target_modules).");
        var pairs = new List<ExportedPair>();
        try
        {
            foreach (var (path, a) in adapters.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                if (a.Spec.Name != path) throw new UserInputException($"export: adapter registered under '{path}' is for module '{a.Spec.Name}'; key the dictionary by IAdapter.Spec.Name.");
                pairs.Add(Truncate(path, a, rank));
            }
            var notes = new List<string>();
            notes.AddRange(SourceNotes(source, viaDeltaWeight: true));
            notes.AddRange(LayerNotes(adapters));
            return Result(pairs, source, notes, "svd", rank);
        }
        catch
        {
            foreach (var p in pairs) { p.A.Dispose(); p.B.Dispose(); }
            throw;
        }
    }

    /// <summary>
    /// Exact re-save of adapters that already are plain low-rank pairs (ΔW = s·B·A and nothing else, e.g. the layers of
    /// LoRA, RefLoRA and RoLoRA): A and s·B at each module's own rank, energy 1. A pair with more state or another ΔW
    /// (DoRA's magnitude, ResLoRA's residual paths) is refused: export it with <see cref="FromDeltaWeights"/>.
    /// </summary>
    public static LoraExportResult FromLowRankPairs(IReadOnlyDictionary<string, ILowRankPair> pairs, AdapterConfigBase source)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (pairs.Count == 0) throw new UserInputException("export: no low-rank pairs to export (the model has no adapter layers; check target_modules).");
        var result = new List<ExportedPair>();
        try
        {
            foreach (var (path, p) in pairs.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                CheckPlainPair(path, p);
                using var scope = torch.NewDisposeScope();
                using var _ = torch.no_grad();
                Tensor a = p.LoraA.detach().to_type(ScalarType.Float32).cpu().contiguous().clone();
                Tensor b = p.LoraB.detach().to_type(ScalarType.Float32).mul(p.Scaling).cpu().contiguous();
                result.Add(new ExportedPair(path, a.DetachFromDisposeScope(), b.DetachFromDisposeScope(), 1.0, (int)a.shape[0]));
            }
            var notes = SourceNotes(source, viaDeltaWeight: false).ToList();
            return Result(result, source, notes, "pairs", null);
        }
        catch
        {
            foreach (var p in result) { p.A.Dispose(); p.B.Dispose(); }
            throw;
        }
    }

    /// <summary>
    /// Writes a PEFT LORA folder into <paramref name="outDir"/>, which must not exist or be empty (it appears whole or
    /// not at all): adapter_config.json, adapter_model.safetensors with keys
    /// <c>base_model.model.&lt;module&gt;.lora_A.weight</c> / <c>lora_B.weight</c> (float32), and export_report.json
    /// (source method, mode, rank, per-module rank and energy kept, notes).
    /// </summary>
    public static void Save(LoraExportResult result, string outDir)
    {
        var config = result.Config with { InferenceMode = true };
        config.Validate();
        if (result.Pairs.Count == 0) throw new UserInputException($"{outDir}: the export holds no modules.");
        var tensors = new List<KeyValuePair<string, Tensor>>();
        foreach (var p in result.Pairs)
        {
            if (p.A.shape.Length != 2 || p.B.shape.Length != 2 || p.A.shape[0] != p.Rank || p.B.shape[1] != p.Rank)
                throw new ArgumentException($"{p.Module}: A [{string.Join(", ", p.A.shape)}] and B [{string.Join(", ", p.B.shape)}] do not form a rank-{p.Rank} pair.");
            tensors.Add(new(AdapterFolder.KeyPrefix + p.Module + "." + LoraA, p.A));
            tensors.Add(new(AdapterFolder.KeyPrefix + p.Module + "." + LoraB, p.B));
        }
        foreach (var name in config.ModulesToSave ?? Array.Empty<string>())
            if (!result.SavedModules.Keys.Any(config.IsSavedModule))
                throw new ArgumentException($"{outDir}: modules_to_save names '{name}' but the export holds no weights of it; set LoraExportResult.SavedModules.");
        foreach (var (name, t) in result.SavedModules.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            tensors.Add(new(AdapterFolder.KeyPrefix + name, t));
        string json = AdapterConfigJson.Serialize(config);
        string report = ReportText(result);
        AtomicFolder.Write(outDir, dir =>
        {
            SafetensorsWriter.Write(Path.Combine(dir, AdapterFolder.WeightsFileName), tensors, new Dictionary<string, string> { ["format"] = "pt" });
            File.WriteAllText(Path.Combine(dir, AdapterFolder.ConfigFileName), json);
            File.WriteAllText(Path.Combine(dir, ReportFileName), report);
        }, flag: "export folder");
    }

    /// <summary>Rewrites <see cref="ReportFileName"/> of a saved export (e.g. once <see cref="LoraExportResult.HeldOut"/> is measured).</summary>
    public static void WriteReport(LoraExportResult result, string outDir) =>
        AtomicFile.WriteAllText(Path.Combine(outDir, ReportFileName), ReportText(result));

    private static string ReportText(LoraExportResult result) => Report(result).ToJsonString(IO.Json.ReportJson.Indented);

    /// <summary>The rank_pattern / alpha_pattern key for <paramref name="module"/> (see <see cref="Result"/>).</summary>
    public static string PatternKeyFor(string module, IReadOnlyCollection<string> allModules)
    {
        // PEFT ≥ 0.15 matches a key K as (.*\.)?(K)$ over the module path; older PEFT as .*\.K$, which never matches a
        // path at its first segment. The path without its first segment ("layers\.0\.self_attn\.q_proj") matches in
        // both, so it is preferred when it names this module only; else the whole path, escaped.
        int dot = module.IndexOf('.', StringComparison.Ordinal);
        var candidates = dot > 0 ? new[] { module[(dot + 1)..], module } : new[] { module };
        foreach (var c in candidates)
        {
            string key = Regex.Escape(c);
            if (allModules.All(m => PeftMatches(key, m) == (m == module))) return key;
        }
        throw new UserInputException($"export: no rank_pattern key names module '{module}' alone among the exported modules; module paths must be unique.");
    }

    /// <summary>PEFT's rank_pattern rule: K matches path P when P matches (.*\.)?(K)$ from its start.</summary>
    public static bool PeftMatches(string key, string modulePath) =>
        Regex.IsMatch(modulePath, @"^(.*\.)?(?:" + key + ")$", RegexOptions.CultureInvariant);

    private static ExportedPair Truncate(string path, IAdapter adapter, int rank)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        Tensor dw = adapter.DeltaWeight().detach().to_type(ScalarType.Float64).cpu();
        if (dw.shape.Length != 2) throw new ArgumentException($"{path}: ΔW has shape [{string.Join(", ", dw.shape)}]; a linear's ΔW is (out, in).");
        int r = (int)Math.Min(rank, Math.Min(dw.shape[0], dw.shape[1]));
        var (u, s, vh) = torch.linalg.svd(dw, fullMatrices: false); // u (out, k), s (k) descending, vh (k, in)
        Tensor sq = s.square();
        double total = sq.sum().item<double>();
        double kept = sq.narrow(0, 0, r).sum().item<double>();
        double energy = total > 0 ? Math.Min(1.0, kept / total) : 1.0;
        Tensor root = s.narrow(0, 0, r).sqrt();
        Tensor b = u.narrow(1, 0, r).mul(root.unsqueeze(0)).to_type(ScalarType.Float32).contiguous();
        Tensor a = vh.narrow(0, 0, r).mul(root.unsqueeze(1)).to_type(ScalarType.Float32).contiguous();
        return new ExportedPair(path, a.DetachFromDisposeScope(), b.DetachFromDisposeScope(), energy, r);
    }

    /// <summary>Refuses a pair whose ΔW is not s·B·A or that carries more state than A and B.</summary>
    private static void CheckPlainPair(string path, ILowRankPair p)
    {
        if (p.LoraA.shape.Length != 2 || p.LoraB.shape.Length != 2 || p.LoraA.shape[0] != p.LoraB.shape[1])
            throw new ArgumentException($"{path}: lora_A [{string.Join(", ", p.LoraA.shape)}] and lora_B [{string.Join(", ", p.LoraB.shape)}] are not a low-rank pair.");
        if (p is not IAdapter a) return;
        if (a.Spec.Name != path) throw new UserInputException($"export: adapter registered under '{path}' is for module '{a.Spec.Name}'; key the dictionary by IAdapter.Spec.Name.");
        var extra = a.GetAdapterState().Keys.Where(k => k is not (LoraA or LoraB)).ToList();
        string fix = "export it through its ΔW instead (LoraExport.FromDeltaWeights, a truncated SVD)";
        if (extra.Count > 0)
            throw new UserInputException($"{path}: the {a.GetType().Name} holds {string.Join(", ", extra)} besides lora_A/lora_B, so it is not a plain LoRA pair; {fix}.");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        Tensor dw = a.DeltaWeight().to_type(ScalarType.Float64).cpu();
        Tensor sba = p.LoraB.detach().to_type(ScalarType.Float64).cpu().matmul(p.LoraA.detach().to_type(ScalarType.Float64).cpu()).mul(p.Scaling);
        double diff = dw.sub(sba).abs().max().item<double>();
        double scale = Math.Max(dw.abs().max().item<double>(), sba.abs().max().item<double>());
        if (diff > 1e-5 * scale)
            throw new UserInputException($"{path}: the {a.GetType().Name}'s ΔW differs from scaling·B·A (max |Δ| {diff:G3} of {scale:G3}), so it is not a plain LoRA pair; {fix}.");
    }

    /// <summary>The LoRA config and result for exported pairs: r = the largest rank, α = r, per-module rank/α where they differ.</summary>
    private static LoraExportResult Result(List<ExportedPair> pairs, AdapterConfigBase source, List<string> notes, string route, int? rank)
    {
        int r = pairs.Max(p => p.Rank);
        var modules = pairs.Select(p => p.Module).ToList();
        var rankPattern = new Dictionary<string, int>(StringComparer.Ordinal);
        var alphaPattern = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var p in pairs.Where(p => p.Rank != r))
        {
            string key = PatternKeyFor(p.Module, modules);
            rankPattern[key] = p.Rank;
            alphaPattern[key] = p.Rank;
        }
        var config = new LoraConfig
        {
            R = r,
            LoraAlpha = r,
            LoraDropout = 0,
            TargetModules = Targets(source.TargetModules, modules),
            ExcludeModules = source.ExcludeModules,
            LayersToTransform = source.LayersToTransform,
            LayersPattern = source.LayersPattern?.DeepClone(),
            ModulesToSave = source.ModulesToSave,
            RankPattern = rankPattern,
            AlphaPattern = alphaPattern,
            TaskType = source.TaskType,
            BaseModelNameOrPath = source.BaseModelNameOrPath,
            Revision = source.Revision,
            InferenceMode = true,
        };
        config.Validate();
        double min = pairs.Min(p => p.EnergyKept), mean = pairs.Average(p => p.EnergyKept);
        if (route == "svd" && min < 1 - 1e-6)
            notes.Add($"rank {rank}: the smallest share of ΔW's energy kept is {min:0.######} (mean {mean:0.######}); a larger rank keeps more.");
        return new LoraExportResult(config, pairs, min, mean, notes) { SourceMethod = source.Method, Mode = route == "pairs" ? "exact" : "approximate", Route = route, RequestedRank = rank };
    }

    /// <summary>
    /// target_modules as the source config names them: a list keeps the source entries that name exported modules
    /// (module types such as q_proj stay types, which servers such as vLLM check); a regex or all-linear is kept.
    /// </summary>
    private static ModuleTargets Targets(ModuleTargets? source, IReadOnlyList<string> modules)
    {
        if (source?.Names is { } names)
        {
            var kept = names.Where(n => modules.Any(m => m == n || m.EndsWith("." + n, StringComparison.Ordinal))).Distinct(StringComparer.Ordinal).ToArray();
            if (kept.Length > 0) return ModuleTargets.List(kept);
        }
        else if (source is not null) return source;
        return ModuleTargets.List(modules.Select(m => m[(m.LastIndexOf('.') + 1)..]).Distinct(StringComparer.Ordinal).ToArray());
    }

    /// <summary>
    /// Notes the source config implies (what the export depends on), from its method. A note about the method's merge
    /// applies only to an export through ΔW (<paramref name="viaDeltaWeight"/>); pairs given as they are (ResLoRA bs
    /// concatenated, the least-squares fold of is/ms) never use that merge, and their caller says how they were made.
    /// </summary>
    private static IEnumerable<string> SourceNotes(AdapterConfigBase source, bool viaDeltaWeight) =>
        AdapterMethods.For(source).LoraExportNotes(source, viaDeltaWeight);

    /// <summary>Notes about what the layers hold that a LoRA carries differently or cannot carry: each method speaks for its own layers.</summary>
    private static IEnumerable<string> LayerNotes(IReadOnlyDictionary<string, IAdapter> adapters) =>
        AdapterMethods.All.SelectMany(m => m.LoraExportLayerNotes(adapters));

    private static JsonObject Report(LoraExportResult result)
    {
        var modules = new JsonArray();
        foreach (var p in result.Pairs)
            modules.Add(new JsonObject { ["module"] = p.Module, ["rank"] = p.Rank, ["energy_kept"] = p.EnergyKept });
        var notes = new JsonArray();
        foreach (var n in result.Notes) notes.Add(n);
        return new JsonObject
        {
            ["source_method"] = result.SourceMethod,
            ["mode"] = result.Mode,
            ["route"] = result.Route,
            ["requested_rank"] = result.RequestedRank,
            ["r"] = result.Config.R,
            ["min_energy_kept"] = result.MinEnergyKept,
            ["mean_energy_kept"] = result.MeanEnergyKept,
            ["modules"] = modules,
            ["notes"] = notes,
            ["held_out"] = result.HeldOut is { } h ? JsonSerializer.SerializeToNode(h, IO.Json.ReportJson.Indented) : null,
        };
    }
}
