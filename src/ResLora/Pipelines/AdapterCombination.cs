using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;

namespace ResLora.Pipelines;

/// <summary>How <see cref="AdapterCombination"/> combines LoRA adapters: PEFT's <c>add_weighted_adapter</c> combination types.</summary>
public enum CombinationType
{
    /// <summary>A′ = Σ sign·√|wᵢsᵢ|·Aᵢ, B′ = Σ √|wᵢsᵢ|·Bᵢ (same rank); exact for one adapter, cross terms Bᵢ·Aⱼ otherwise.</summary>
    Linear,
    /// <summary>A′ = [wᵢsᵢ·Aᵢ] stacked, B′ = [Bᵢ] side by side: B′A′ = Σ wᵢ·ΔWᵢ exactly, rank = Σ rᵢ.</summary>
    Cat,
    /// <summary>Truncated SVD of Σ wᵢ·ΔWᵢ to a given rank (exact at full rank).</summary>
    Svd,
    /// <summary>TIES on A and B separately (as linear's √ split): magnitude pruning to the density, sign election, disjoint mean.</summary>
    Ties,
    /// <summary>DARE on A and B separately: random pruning to the density with 1/density rescaling, then the weighted sum.</summary>
    DareLinear,
}

/// <summary>PEFT's <c>majority_sign_method</c> for TIES: the sign of the summed values, or of the summed signs.</summary>
public enum MajoritySign
{
    /// <summary>The sign of Σ tᵢ per entry (PEFT's default).</summary>
    Total,
    /// <summary>The sign of Σ sign(tᵢ) per entry.</summary>
    Frequency,
}

/// <summary>Options of a combination (PEFT's add_weighted_adapter arguments).</summary>
public sealed record CombineOptions
{
    /// <summary>The combination type (PEFT's combination_type; its default is svd).</summary>
    public CombinationType How { get; init; } = CombinationType.Svd;

    /// <summary>svd: the rank of the result; default the largest input rank (PEFT's svd_rank=None).</summary>
    public int? Rank { get; init; }

    /// <summary>ties, dare_linear: the fraction of entries kept, in (0, 1].</summary>
    public double? Density { get; init; }

    /// <summary>dare_linear: the seed of the random pruning masks.</summary>
    public long Seed { get; init; }

    /// <summary>svd: PEFT's svd_clamp, a quantile q in (0, 1]; the factors are clamped to ±quantile(|entries|… , q).</summary>
    public double? SvdClamp { get; init; }

    /// <summary>ties: how the sign of each entry is elected.</summary>
    public MajoritySign MajoritySign { get; init; } = MajoritySign.Total;

    /// <summary>linear, cat, svd, ties or dare_linear (as PEFT and the CLI spell them).</summary>
    public static CombinationType ParseHow(string how) => how.Trim().ToLowerInvariant() switch
    {
        "linear" => CombinationType.Linear,
        "cat" => CombinationType.Cat,
        "svd" => CombinationType.Svd,
        "ties" => CombinationType.Ties,
        "dare_linear" or "dare-linear" => CombinationType.DareLinear,
        _ => throw new UserInputException($"--how '{how}' is not a combination type; use linear, cat, svd, ties or dare_linear."),
    };

    /// <summary>The CLI spelling of a combination type.</summary>
    public static string Name(CombinationType how) => how == CombinationType.DareLinear ? "dare_linear" : how.ToString().ToLowerInvariant();

    /// <summary>Throws naming the flag that does not fit the combination type.</summary>
    public void Validate()
    {
        string n = Name(How);
        bool pruned = How is CombinationType.Ties or CombinationType.DareLinear;
        if (pruned && Density is null) throw new UserInputException($"--how {n} needs --density D in (0, 1] (the fraction of entries kept; 1 keeps all).");
        if (!pruned && Density is not null) throw new UserInputException($"--density applies to --how ties and dare_linear, not {n}.");
        if (Density is { } d && !(d > 0 && d <= 1)) throw new UserInputException($"--density must be in (0, 1], got {d}.");
        if (Rank is not null && How != CombinationType.Svd) throw new UserInputException($"--rank applies to --how svd; {n} decides the rank itself (linear/ties/dare_linear: the inputs' rank, cat: their sum).");
        if (Rank is { } r && r < 1) throw new UserInputException($"--rank must be at least 1, got {r}.");
        if (SvdClamp is not null && How != CombinationType.Svd) throw new UserInputException($"--svd-clamp applies to --how svd, not {n}.");
        if (SvdClamp is { } q && !(q > 0 && q <= 1)) throw new UserInputException($"--svd-clamp must be a quantile in (0, 1], got {q}.");
    }
}

/// <summary>One adapter folder to combine, the name it is reported under and its weight.</summary>
public sealed record CombineInput(string Name, string Dir, double Weight = 1.0);

/// <summary>
/// A combined LoRA: the config to save (r = lora_alpha = the result's rank, so scaling 1, as PEFT writes it), one pair per
/// module padded with zeros to that rank, and notes. <see cref="ExportedPair.EnergyKept"/> is svd's kept share of
/// Σ s² (1 otherwise). <see cref="Deviation"/> is max |B′A′ − Σ wᵢ·ΔWᵢ| / max |Σ wᵢ·ΔWᵢ| over modules: 0 (to rounding)
/// for cat, full-rank svd and a single adapter, the cross terms for linear, the pruning for ties/dare. Owns the tensors.
/// </summary>
public sealed record CombinedAdapter(LoraConfig Config, IReadOnlyList<ExportedPair> Pairs, double Deviation, IReadOnlyList<string> Notes) : IDisposable
{
    public void Dispose()
    {
        foreach (var p in Pairs)
        {
            p.A.Dispose();
            p.B.Dispose();
        }
    }
}

/// <summary>What <see cref="AdapterCombination.CombineFolders"/> wrote.</summary>
public sealed record CombineReport(string OutDir, string How, int Rank, int Modules, double Deviation, double MinEnergyKept, IReadOnlyList<string> Notes)
{
    public const string FileName = "combine_report.json";
}

/// <summary>
/// PEFT's <c>add_weighted_adapter</c> for LoRA (peft-format.md §1.2), written as a normal PEFT LoRA folder: linear, cat,
/// svd, ties and dare_linear over LoRA / rsLoRA adapters of one base (DoRA is refused: its magnitude has no weighted
/// form in PEFT; export it as LoRA first). Each input's scaling sᵢ (α/r or α/√r) is folded into the factors and the
/// result is saved with r = lora_alpha and use_rslora off, so its scaling is 1 (PEFT PR #3449 for rsLoRA inputs).
/// One deliberate difference: PEFT's svd path multiplies sᵢ twice (its weights are wᵢ·sᵢ and get_delta_weight already
/// holds sᵢ); here svd factors Σ wᵢ·sᵢ·BᵢAᵢ, the same as PEFT whenever α = r.
/// </summary>
public static class AdapterCombination
{
    /// <summary>
    /// Loads the base once, the inputs as an <see cref="AdapterSet"/> (every folder is checked against the model), combines
    /// them and writes the result into <paramref name="outDir"/> (which must not exist or be empty) with combine_report.json.
    /// </summary>
    /// <param name="modelDir">The base the adapters were trained on.</param>
    /// <param name="inputs">The adapters and their weights, in order.</param>
    /// <param name="options">The combination type and its parameters.</param>
    /// <param name="outDir">The new adapter folder.</param>
    /// <param name="runtime">Device, dtype, threads.</param>
    /// <param name="warn">Receives config warnings.</param>
    public static CombineReport CombineFolders(string modelDir, IReadOnlyList<CombineInput> inputs, CombineOptions options, string outDir, RuntimeOptions runtime, Action<string>? warn = null)
    {
        options.Validate();
        CheckInputs(inputs.Select(i => (i.Name, i.Weight)).ToList());
        if (Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any())
            throw new IOException($"--out {outDir} exists and is not empty; choose a new folder (combining never overwrites).");
        using var set = AdapterSet.Load(modelDir, runtime);
        foreach (var i in inputs) set.Add(i.Name, i.Dir, warn);
        using var combined = Combine(set, inputs.Select(i => (i.Name, i.Weight)).ToList(), options);
        Save(combined, outDir, Report(combined, inputs, options));
        return new CombineReport(Path.GetFullPath(outDir), CombineOptions.Name(options.How), combined.Config.R, combined.Pairs.Count, combined.Deviation,
            combined.Pairs.Min(p => p.EnergyKept), combined.Notes);
    }

    /// <summary>Combines adapters loaded in <paramref name="set"/> (by name, with weights); the set is not changed.</summary>
    /// <param name="set">The base with the adapters loaded.</param>
    /// <param name="inputs">Adapter names and weights, in order (the result's other config fields come from the first).</param>
    /// <param name="options">The combination type and its parameters.</param>
    public static CombinedAdapter Combine(AdapterSet set, IReadOnlyList<(string Name, double Weight)> inputs, CombineOptions options)
    {
        options.Validate();
        CheckInputs(inputs);
        var loaded = inputs.Select(i => set.Adapters.FirstOrDefault(a => a.Name == i.Name)
            ?? throw new UserInputException($"combine: no adapter named '{i.Name}' is loaded.")).ToList();
        foreach (var a in loaded.Where(a => a.Config.UseDora))
            throw new UserInputException($"combine: adapter '{a.Name}' ({a.Source}) is DoRA (use_dora); PEFT's add_weighted_adapter has no weighted form for its magnitude vector. Export it as a plain LoRA first (reslora export --model M --adapter {a.Source} --rank R --out DIR) and combine that folder.");
        var notes = new List<string>();
        var how = options.How;
        if (inputs.Count == 1 && how != CombinationType.Linear)
        {
            notes.Add($"one adapter: combined by linear whatever --how says, as PEFT's add_weighted_adapter does (asked: {CombineOptions.Name(how)}).");
            how = CombinationType.Linear;
        }
        var pairs = inputs.Select(i => set.Plan.Pairs(i.Name).ToDictionary(p => p.Module, StringComparer.Ordinal)).ToList();
        var modules = pairs.SelectMany(p => p.Keys).Distinct(StringComparer.Ordinal).OrderBy(m => m, StringComparer.Ordinal).ToList();
        int svdRank = options.Rank ?? pairs.SelectMany(p => p.Values).Max(p => (int)p.A.shape[0]);
        using var gen = new torch.Generator((ulong)options.Seed);
        var raw = new List<(string Module, Tensor A, Tensor B, double Energy)>();
        double deviation = 0;
        try
        {
            foreach (var m in modules)
            {
                using var scope = torch.NewDisposeScope();
                using var noGrad = torch.no_grad();
                var present = Enumerable.Range(0, inputs.Count).Where(i => pairs[i].ContainsKey(m))
                    .Select(i => (Name: inputs[i].Name, Weight: inputs[i].Weight, Pair: pairs[i][m])).ToList();
                var (a, b, energy) = how switch
                {
                    CombinationType.Cat => Cat(present),
                    CombinationType.Svd => Svd(present, svdRank, options.SvdClamp),
                    _ => Factorwise(m, how, present, options, gen),
                };
                Tensor target = present.Select(p => Delta(p.Pair).mul(p.Weight)).Aggregate((x, y) => x.add(y)); // Σ wᵢ·ΔWᵢ, float64
                double scale = target.abs().max().item<double>();
                double dev = b.matmul(a).sub(target).abs().max().item<double>();
                deviation = Math.Max(deviation, scale > 0 ? dev / scale : dev);
                raw.Add((m, a.DetachFromDisposeScope(), b.DetachFromDisposeScope(), energy));
            }
            int rank = raw.Max(r => (int)r.A.shape[0]);
            var result = raw.Select(r => Padded(r.Module, r.A, r.B, r.Energy, rank)).ToList();
            if (how == CombinationType.Linear && inputs.Count > 1)
                notes.Add("linear (as PEFT) sums the A and the B factors separately, so B′A′ also holds the cross terms Bᵢ·Aⱼ (see the deviation); cat, or svd at full rank, gives Σ wᵢ·ΔWᵢ exactly.");
            if (how == CombinationType.Ties && options.Density >= 1)
                notes.Add("ties at density 1 prunes nothing but still elects a sign per entry and averages the agreeing entries (PEFT's disjoint merge), so it is not linear's sum.");
            if (how == CombinationType.DareLinear && options.Density >= 1)
                notes.Add("dare_linear at density 1 prunes nothing (as PEFT): it equals linear.");
            if (how == CombinationType.Svd && result.Min(p => p.EnergyKept) < 1 - 1e-6)
                notes.Add($"svd rank {svdRank}: the smallest share of a module's Σ wᵢ·ΔWᵢ energy kept is {result.Min(p => p.EnergyKept).ToString("0.######", CultureInfo.InvariantCulture)}; a larger --rank keeps more.");
            return new CombinedAdapter(Config(loaded[0].Config, rank, modules, set.Plan.Specs), result, deviation, notes);
        }
        finally
        {
            foreach (var r in raw) { r.A.Dispose(); r.B.Dispose(); }
        }
    }

    /// <summary>Writes the combined LoRA as a PEFT folder (config, float32 safetensors, <paramref name="report"/> as combine_report.json), whole or not at all.</summary>
    /// <param name="combined">The result of <see cref="Combine"/>.</param>
    /// <param name="outDir">A folder that does not exist or is empty.</param>
    /// <param name="report">Written beside the adapter when given.</param>
    public static void Save(CombinedAdapter combined, string outDir, JsonObject? report = null)
    {
        combined.Config.Validate();
        var tensors = new List<KeyValuePair<string, Tensor>>();
        foreach (var p in combined.Pairs)
        {
            tensors.Add(new(AdapterFolder.KeyPrefix + p.Module + ".lora_A.weight", p.A));
            tensors.Add(new(AdapterFolder.KeyPrefix + p.Module + ".lora_B.weight", p.B));
        }
        string json = AdapterConfigJson.Serialize(combined.Config);
        AtomicFolder.Write(outDir, dir =>
        {
            SafetensorsWriter.Write(Path.Combine(dir, AdapterFolder.WeightsFileName), tensors, new Dictionary<string, string> { ["format"] = "pt" });
            File.WriteAllText(Path.Combine(dir, AdapterFolder.ConfigFileName), json);
            if (report is not null)
                File.WriteAllText(Path.Combine(dir, CombineReport.FileName), report.ToJsonString(IO.Json.ReportJson.Indented));
        }, flag: "--out");
    }

    private static void CheckInputs(IReadOnlyList<(string Name, double Weight)> inputs)
    {
        if (inputs.Count == 0) throw new UserInputException("combine needs at least one --adapter NAME=DIR[:WEIGHT].");
        var dup = inputs.GroupBy(i => i.Name, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
        if (dup is not null) throw new UserInputException($"--adapter name '{dup.Key}' is given twice; give each adapter its own name.");
        foreach (var (name, w) in inputs)
            if (!double.IsFinite(w)) throw new UserInputException($"--adapter {name}: weight {w} must be a finite number.");
    }

    /// <summary>s·B·A (out, in) in float64 on the CPU.</summary>
    private static Tensor Delta(LoraPairView p) => F64(p.B).matmul(F64(p.A)).mul(p.Scaling);

    private static Tensor F64(Tensor t) => t.detach().to(ScalarType.Float64, torch.CPU);

    /// <summary>cat: A′ = [wᵢsᵢ·Aᵢ] (Σrᵢ, in), B′ = [Bᵢ] (out, Σrᵢ), so B′A′ = Σ wᵢsᵢ·BᵢAᵢ.</summary>
    private static (Tensor A, Tensor B, double Energy) Cat(IReadOnlyList<(string Name, double Weight, LoraPairView Pair)> present) =>
        (torch.cat(present.Select(p => F64(p.Pair.A).mul(p.Weight * p.Pair.Scaling)).ToArray(), 0),
         torch.cat(present.Select(p => F64(p.Pair.B)).ToArray(), 1), 1.0);

    /// <summary>
    /// svd: U S Vᵀ of Σ wᵢ·ΔWᵢ; B′ = U_k·diag(S_k), A′ = V_kᵀ with k = min(rank, out, in) (PEFT puts S on B); with a clamp
    /// q, both are clamped to ±(the q-quantile of their entries), as PEFT's svd_clamp.
    /// </summary>
    private static (Tensor A, Tensor B, double Energy) Svd(IReadOnlyList<(string Name, double Weight, LoraPairView Pair)> present, int rank, double? clamp)
    {
        Tensor dw = present.Select(p => Delta(p.Pair).mul(p.Weight)).Aggregate((x, y) => x.add(y));
        var (u, s, vh) = torch.linalg.svd(dw, fullMatrices: false); // u (out, k), s (k), vh (k, in)
        int k = (int)Math.Min(rank, s.shape[0]);
        Tensor sq = s.square();
        double total = sq.sum().item<double>();
        double energy = total > 0 ? Math.Min(1.0, sq.narrow(0, 0, k).sum().item<double>() / total) : 1.0;
        Tensor b = u.narrow(1, 0, k).mul(s.narrow(0, 0, k).unsqueeze(0));
        Tensor a = vh.narrow(0, 0, k);
        if (clamp is { } q)
        {
            double hi = torch.quantile(torch.cat(new[] { b.flatten(), a.flatten() }, 0), q).item<double>();
            b = b.clamp(-hi, hi);
            a = a.clamp(-hi, hi);
        }
        return (a, b, energy);
    }

    /// <summary>
    /// linear, ties, dare_linear on the factors (PEFT's _generalized_task_arithmetic_weighted_adapter): wᵢsᵢ is split as
    /// sign·√|wᵢsᵢ| on A and √|wᵢsᵢ| on B, then A′ = merge(Aᵢ) and B′ = merge(Bᵢ) separately. Same rank required.
    /// </summary>
    private static (Tensor A, Tensor B, double Energy) Factorwise(string module, CombinationType how, IReadOnlyList<(string Name, double Weight, LoraPairView Pair)> present, CombineOptions o, torch.Generator gen)
    {
        var ranks = present.Select(p => p.Pair.A.shape[0]).Distinct().ToList();
        if (ranks.Count > 1)
            throw new UserInputException($"combine --how {CombineOptions.Name(how)}: every adapter must have the same rank (PEFT's rule); at {module}: {string.Join(", ", present.Select(p => $"{p.Name} r={p.Pair.A.shape[0]}"))}. Use --how cat (exact, rank = the sum) or --how svd --rank R.");
        var ws = present.Select(p => p.Weight * p.Pair.Scaling).ToList();
        double[] wA = ws.Select(w => Math.Sign(w) * Math.Sqrt(Math.Abs(w))).ToArray(); // the sign on one side only, or it cancels
        double[] wB = ws.Select(w => Math.Sqrt(Math.Abs(w))).ToArray();
        Tensor Merge(IEnumerable<Tensor> factors, double[] weights)
        {
            var t = factors.Select(F64).ToList();
            return how switch
            {
                CombinationType.Ties => Ties(t, weights, o.Density!.Value, o.MajoritySign),
                CombinationType.DareLinear => WeightedSum(t.Select(x => RandomPrune(x, o.Density!.Value, gen)).ToList(), weights),
                _ => WeightedSum(t, weights),
            };
        }
        return (Merge(present.Select(p => p.Pair.A), wA), Merge(present.Select(p => p.Pair.B), wB), 1.0);
    }

    /// <summary>Σ wᵢ·tᵢ (PEFT's task_arithmetic).</summary>
    private static Tensor WeightedSum(IReadOnlyList<Tensor> t, double[] w) => t.Select((x, i) => x.mul(w[i])).Aggregate((x, y) => x.add(y));

    /// <summary>
    /// TIES (Yadav et al. 2023, PEFT merge_utils.ties): keep each tensor's top density·numel entries by magnitude; elect
    /// per entry the sign of Σ tᵢ (total) or Σ sign(tᵢ) (frequency), ties to +; average the weighted entries whose sign
    /// agrees (a zero entry never agrees), dividing by their count (at least 1).
    /// </summary>
    private static Tensor Ties(IReadOnlyList<Tensor> t, double[] w, double density, MajoritySign method)
    {
        Tensor stacked = torch.stack(t.Select(x => MagnitudePrune(x, density)).ToArray(), 0); // (n, ...)
        Tensor sign = stacked.sign();
        Tensor votes = method == MajoritySign.Total ? stacked.sum(dim: 0) : sign.sum(dim: 0);
        Tensor majority = torch.where(votes.ge(0), torch.ones_like(votes), torch.ones_like(votes).neg());
        Tensor agree = sign.eq(majority).to_type(ScalarType.Float64);
        Tensor weights = torch.tensor(w, dtype: ScalarType.Float64).view(new long[] { w.Length }.Concat(Enumerable.Repeat(1L, (int)stacked.dim() - 1)).ToArray());
        return stacked.mul(weights).mul(agree).sum(dim: 0).div(agree.sum(dim: 0).clamp_min(1.0));
    }

    /// <summary>Keeps the int(density·numel) largest-magnitude entries (PEFT's magnitude_based_pruning); density ≥ 1 keeps all.</summary>
    private static Tensor MagnitudePrune(Tensor t, double density)
    {
        if (density >= 1) return t;
        long k = (long)(density * t.numel());
        Tensor mask = torch.zeros(t.numel(), dtype: t.dtype);
        if (k > 0) mask.index_fill_(0, t.abs().reshape(-1).topk((int)k).indexes, 1.0);
        return t.mul(mask.reshape(t.shape));
    }

    /// <summary>DARE (Yu et al. 2023): keep each entry with probability density (seeded), rescale by 1/density; density ≥ 1 keeps all.</summary>
    private static Tensor RandomPrune(Tensor t, double density, torch.Generator gen)
    {
        if (density >= 1) return t;
        Tensor keep = torch.rand(t.shape, dtype: ScalarType.Float64, generator: gen).lt(density).to_type(ScalarType.Float64);
        return t.mul(keep).div(density);
    }

    /// <summary>The pair zero-padded to <paramref name="rank"/> (extra rows of A′, columns of B′ are 0: exact), float32.</summary>
    private static ExportedPair Padded(string module, Tensor a, Tensor b, double energy, int rank)
    {
        using var scope = torch.NewDisposeScope();
        long r = a.shape[0];
        Tensor pa = r == rank ? a : torch.cat(new[] { a, torch.zeros(rank - r, a.shape[1], dtype: a.dtype) }, 0);
        Tensor pb = r == rank ? b : torch.cat(new[] { b, torch.zeros(b.shape[0], rank - r, dtype: b.dtype) }, 1);
        return new ExportedPair(module,
            pa.to_type(ScalarType.Float32).contiguous().clone().DetachFromDisposeScope(),
            pb.to_type(ScalarType.Float32).contiguous().clone().DetachFromDisposeScope(), energy, rank);
    }

    /// <summary>
    /// The result's config (PEFT: the first adapter's config with r = lora_alpha = new rank, no patterns, use_rslora off):
    /// target_modules lists the module types when they name exactly the combined modules in this model, else the full paths.
    /// </summary>
    private static LoraConfig Config(LoraConfig first, int rank, IReadOnlyList<string> modules, IReadOnlyList<LinearSpec> specs)
    {
        var set = modules.ToHashSet(StringComparer.Ordinal);
        var types = ModuleTargets.List(specs.Where(s => set.Contains(s.Name)).Select(s => s.ModuleType).Distinct(StringComparer.Ordinal).ToArray());
        bool exact = specs.Where(types.Matches).Select(s => s.Name).ToHashSet(StringComparer.Ordinal).SetEquals(set);
        var config = new LoraConfig
        {
            R = rank,
            LoraAlpha = rank,
            LoraDropout = first.LoraDropout,
            TargetModules = exact ? types : ModuleTargets.List(modules.ToArray()),
            TaskType = first.TaskType,
            BaseModelNameOrPath = first.BaseModelNameOrPath,
            Revision = first.Revision,
            InferenceMode = true,
        };
        config.Validate();
        return config;
    }

    private static JsonObject Report(CombinedAdapter c, IReadOnlyList<CombineInput> inputs, CombineOptions o)
    {
        var ins = new JsonArray();
        foreach (var i in inputs) ins.Add(new JsonObject { ["name"] = i.Name, ["dir"] = Path.GetFullPath(i.Dir), ["weight"] = i.Weight });
        var modules = new JsonArray();
        foreach (var p in c.Pairs) modules.Add(new JsonObject { ["module"] = p.Module, ["energy_kept"] = p.EnergyKept });
        var notes = new JsonArray();
        foreach (var n in c.Notes) notes.Add(n);
        return new JsonObject
        {
            ["how"] = CombineOptions.Name(o.How),
            ["inputs"] = ins,
            ["r"] = c.Config.R,
            ["svd_rank"] = o.Rank,
            ["svd_clamp"] = o.SvdClamp,
            ["density"] = o.Density,
            ["seed"] = o.How == CombinationType.DareLinear ? o.Seed : null,
            ["majority_sign_method"] = o.How == CombinationType.Ties ? o.MajoritySign.ToString().ToLowerInvariant() : null,
            ["max_relative_deviation_from_weighted_sum"] = c.Deviation,
            ["modules"] = modules,
            ["notes"] = notes,
        };
    }
}
