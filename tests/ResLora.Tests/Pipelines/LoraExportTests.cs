using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Pipelines;

/// <summary>Export of any adapter as a plain PEFT LoRA: SVD exactness and truncation, the saved folder, notes.</summary>
public sealed class LoraExportTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-export-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly LoHaConfig LoHa = new() { R = 2, Alpha = 3, TargetModules = ModuleTargets.List("q_proj") };

    /// <summary>A standalone perturbed adapter on a (10 × 12) projection (IA3 and DoRA on a tiny (5 × 6) one).</summary>
    private static IAdapter Layer(string kind, long seed)
    {
        var g = new Generator((ulong)seed);
        IAdapter a = kind switch
        {
            "lora" => new LoraLinear(Spec(0, "self_attn", "q_proj", 12, 10), new LoraLayerOptions(2, 4), ScalarType.Float32, CPU, g),
            "loha" => new LoHaLinear(Spec(0, "self_attn", "q_proj", 12, 10), 2, 3, LoHa, ScalarType.Float32, CPU, g),
            "loha3" => new LoHaLinear(Spec(0, "self_attn", "q_proj", 12, 10), 3, 3, LoHa with { R = 3 }, ScalarType.Float32, CPU, g),
            "ia3" => new Ia3Linear(Spec(0, "self_attn", "q_proj", 6, 5, bias: true), feedforward: false, initOnes: true, ScalarType.Float32, CPU, g),
            "dora" => new DoraLinear(Spec(0, "self_attn", "q_proj", 6, 5, bias: true), new LoraLayerOptions(2, 3), ScalarType.Float32, CPU, g),
            _ => throw new ArgumentException(kind),
        };
        Perturb(a, seed + 1);
        return a;
    }

    private static Dictionary<string, IAdapter> One(IAdapter a) => new() { [a.Spec.Name] = a };

    private static double RelMaxDiff(Tensor a, Tensor b) => MaxAbsDiff(a, b) / b.abs().max().item<float>();

    /// <summary>Singular values² of ΔW from the eigenvalues of ΔW·ΔWᵀ (float64), descending: independent of the export's SVD.</summary>
    private static double[] SquaredSingularValues(Tensor dw)
    {
        using var d = dw.to_type(ScalarType.Float64);
        using var gram = d.matmul(d.t());
        using var eig = torch.linalg.eigvalsh(gram);
        return eig.data<double>().ToArray().Select(v => Math.Max(v, 0)).OrderByDescending(v => v).ToArray();
    }

    [Theory]
    [InlineData("lora", 4, 2)] // LoRA r = 2 exported at 4
    [InlineData("loha", 4, 4)] // LoHa r = 2: true rank ≤ r² = 4
    [InlineData("ia3", 5, 5)]  // full rank of a (5 × 6) layer
    [InlineData("dora", 5, 5)] // perturbed DoRA: ΔW is full rank, exact at full rank
    public void FromDeltaWeights_RankAtLeastTrueRank_IsExactWithAllEnergy(string kind, int rank, int trueRank)
    {
        var a = Layer(kind, 11);
        using var dw = a.DeltaWeight();
        Assert.True(dw.abs().max().item<float>() > 1e-2, "the adapter must be non-trivial");
        using var r = LoraExport.FromDeltaWeights(One(a), rank, new LoraConfig { TargetModules = ModuleTargets.List("q_proj") });
        var p = Assert.Single(r.Pairs);
        Assert.Equal(rank, p.Rank);
        Assert.Equal(new long[] { rank, dw.shape[1] }, p.A.shape);
        Assert.Equal(new long[] { dw.shape[0], rank }, p.B.shape);
        Assert.Equal(ScalarType.Float32, p.A.dtype);
        using var ba = p.B.matmul(p.A);
        Assert.True(RelMaxDiff(ba, dw) <= 1e-5, $"{kind}: max |B·A − ΔW| relative {RelMaxDiff(ba, dw)}");
        Assert.True(p.EnergyKept > 1 - 1e-9 && p.EnergyKept <= 1, $"energy {p.EnergyKept}");
        Assert.Equal(p.EnergyKept, r.MinEnergyKept);
        Assert.Equal(rank, r.Config.R);
        Assert.Equal(rank, r.Config.LoraAlpha);

        // The true rank really is that: one direction fewer loses energy and exactness (so the test can tell).
        using var fewer = LoraExport.FromDeltaWeights(One(a), trueRank - 1, new LoraConfig { TargetModules = ModuleTargets.List("q_proj") });
        using var baFewer = fewer.Pairs[0].B.matmul(fewer.Pairs[0].A);
        Assert.True(fewer.Pairs[0].EnergyKept < 1 - 1e-4, $"{kind}: rank {trueRank - 1} kept energy {fewer.Pairs[0].EnergyKept}");
        Assert.True(RelMaxDiff(baFewer, dw) > 1e-3);
        ((nn.Module)a).Dispose();
    }

    [Theory]
    [InlineData("loha3", 3)] // true rank 9 (r² with r = 3) on a (10 × 12) layer
    [InlineData("loha3", 6)]
    [InlineData("dora", 2)]  // full rank 5
    [InlineData("ia3", 1)]
    public void FromDeltaWeights_RankBelowTrueRank_KeepsTheTopSingularDirections(string kind, int rank)
    {
        var a = Layer(kind, 21);
        using var dw = a.DeltaWeight();
        var s2 = SquaredSingularValues(dw);
        Assert.True(s2[rank] > 1e-6 * s2[0], "the dropped directions must carry energy");
        using var r = LoraExport.FromDeltaWeights(One(a), rank, new LoraConfig { TargetModules = ModuleTargets.List("q_proj") });
        var p = r.Pairs[0];
        Assert.Equal(rank, p.Rank);

        double total = s2.Sum(), kept = s2.Take(rank).Sum(), dropped = s2.Skip(rank).Sum();
        Assert.Equal(kept / total, p.EnergyKept, 6);

        // Eckart–Young: the best rank-R approximation's Frobenius error is √(Σ dropped s²).
        using var a64 = p.A.to_type(ScalarType.Float64);
        using var b64 = p.B.to_type(ScalarType.Float64);
        using var err = b64.matmul(a64).sub(dw.to_type(ScalarType.Float64));
        double frob = err.square().sum().sqrt().item<double>();
        Assert.True(Math.Abs(frob - Math.Sqrt(dropped)) <= 1e-4 * Math.Sqrt(total), $"‖B·A − ΔW‖_F = {frob}, √Σdropped s² = {Math.Sqrt(dropped)}");

        // The split is balanced: A·Aᵀ = Bᵀ·B = diag(s_1..s_R) (B = U√S, A = √S Vᵀ).
        var s = s2.Take(rank).Select(Math.Sqrt).ToArray();
        using var diag = torch.diag(torch.tensor(s, dtype: ScalarType.Float64));
        using var aat = a64.matmul(a64.t());
        using var btb = b64.t().matmul(b64);
        Assert.True(MaxAbsDiff(aat, diag) <= 1e-5 * s[0], $"A·Aᵀ vs diag(S): {MaxAbsDiff(aat, diag)}");
        Assert.True(MaxAbsDiff(btb, diag) <= 1e-5 * s[0], $"Bᵀ·B vs diag(S): {MaxAbsDiff(btb, diag)}");
        ((nn.Module)a).Dispose();
    }

    [Fact]
    public void FromDeltaWeights_ZeroDelta_KeepsAllEnergyWithZeroFactors()
    {
        using var l = new LoraLinear(Spec(0, "self_attn", "q_proj", 12, 10), new LoraLayerOptions(2, 4), ScalarType.Float32, CPU, new Generator(3)); // B = 0
        using var r = LoraExport.FromDeltaWeights(One(l), 3, new LoraConfig { TargetModules = ModuleTargets.List("q_proj") });
        Assert.Equal(1.0, r.Pairs[0].EnergyKept);
        using var ba = r.Pairs[0].B.matmul(r.Pairs[0].A);
        Assert.Equal(0.0, ba.abs().max().item<float>());
    }

    /// <summary>A tiny model folder, and a model built with <paramref name="cfg"/>, base loaded, adapters perturbed.</summary>
    private (string ModelDir, CausalLM Model, ModelConfig Config) Prepare(AdapterConfigBase cfg, long seed, bool qkvBias = false)
    {
        var c = TinyModels.Config(qkvBias: qkvBias);
        string modelDir = Path.Combine(_dir, "model");
        if (!Directory.Exists(modelDir))
            using (var m = TinyModels.Build(c, seed: 4))
                ModelFolder.Save(modelDir, c, m.BaseParameters().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)));
        using var gen = new Generator((ulong)seed);
        var model = ModelSessions.LoadBase(modelDir, new RuntimeOptions(), new AdapterPlan(cfg, gen));
        AdapterModel.OnBaseWeightsLoaded(model);
        foreach (var (i, (_, a)) in AdapterModel.FindAdapters(model).Select((x, i) => (i, x))) Perturb(a, seed * 100 + i);
        model.eval();
        return (modelDir, model, c);
    }

    private static Tensor Logits(CausalLM m, Tensor ids)
    {
        using var _ = torch.no_grad();
        return m.forward(ids).detach();
    }

    /// <summary>
    /// Checks the saved folder is PEFT's LORA: config (r = max rank, α = r, rank/α patterns whose keys name exactly their
    /// module under PEFT's current and older matching rules), float32 keys base_model.model.&lt;module&gt;.lora_A/B.weight.
    /// </summary>
    private static JsonObject CheckFolder(string exportDir, IReadOnlyDictionary<string, int> ranks)
    {
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(exportDir, AdapterFolder.ConfigFileName)))!.AsObject();
        int r = ranks.Values.Max();
        Assert.Equal("LORA", (string?)json["peft_type"]);
        Assert.Equal(r, (int)json["r"]!);
        Assert.Equal(r, (double)json["lora_alpha"]!);
        Assert.False((bool)json["use_dora"]!);
        Assert.False((bool)json["use_rslora"]!);
        var rankPattern = json["rank_pattern"]!.AsObject();
        var alphaPattern = json["alpha_pattern"]!.AsObject();
        Assert.Equal(ranks.Count(kv => kv.Value != r), rankPattern.Count);
        foreach (var (module, rank) in ranks)
        {
            // PEFT ≥ 0.15: (.*\.)?(K)$; PEFT < 0.15: .*\.K$ — both must pick exactly this module's key (or none at rank r).
            var newRule = rankPattern.Where(kv => Regex.IsMatch(module, @"^(.*\.)?(" + kv.Key + ")$")).ToList();
            var oldRule = rankPattern.Where(kv => Regex.IsMatch(module, @"^.*\." + kv.Key + "$")).ToList();
            if (rank == r)
            {
                Assert.Empty(newRule);
                Assert.Empty(oldRule);
            }
            else
            {
                Assert.Equal(rank, (int)Assert.Single(newRule).Value!);
                Assert.Equal(rank, (int)Assert.Single(oldRule).Value!);
                Assert.Equal(rank, (double)alphaPattern[newRule[0].Key]!);
            }
        }
        using var file = SafetensorsFile.Open(Path.Combine(exportDir, AdapterFolder.WeightsFileName));
        var expected = ranks.Keys.SelectMany(m => new[] { $"base_model.model.{m}.lora_A.weight", $"base_model.model.{m}.lora_B.weight" }).OrderBy(k => k, StringComparer.Ordinal);
        Assert.Equal(expected, file.Entries.Select(e => e.Name).OrderBy(k => k, StringComparer.Ordinal));
        Assert.All(file.Entries, e => Assert.Equal("F32", e.Dtype));
        Assert.All(file.Entries.Where(e => e.Name.EndsWith("lora_A.weight", StringComparison.Ordinal)),
            e => Assert.Equal(ranks[AdapterFolder.SplitKey(e.Name).ModulePath], e.Shape[0]));
        Assert.True(File.Exists(Path.Combine(exportDir, LoraExport.ReportFileName)));
        return json;
    }

    /// <summary>Reloads the export as LoRA: LoraLinear layers of the expected ranks, scaling 1, ΔW = the exported B·A.</summary>
    private static CausalLM Reload(string modelDir, string exportDir, LoraExportResult r)
    {
        var m = ModelSessions.LoadWithAdapter(modelDir, exportDir, new RuntimeOptions());
        var adapters = AdapterModel.ByModulePath(m);
        Assert.Equal(r.Pairs.Select(p => p.Module).OrderBy(k => k, StringComparer.Ordinal), adapters.Keys.OrderBy(k => k, StringComparer.Ordinal));
        foreach (var p in r.Pairs)
        {
            var l = Assert.IsType<LoraLinear>(adapters[p.Module]);
            Assert.Equal(p.Rank, l.LoraA.shape[0]);
            Assert.Equal(1.0, l.Scaling, 12);
            using var dw = l.DeltaWeight();
            using var ba = p.B.matmul(p.A);
            Assert.True(MaxAbsDiff(dw, ba) <= 1e-6 * Math.Max(1, ba.abs().max().item<float>()), $"{p.Module}: reloaded ΔW vs exported B·A {MaxAbsDiff(dw, ba)}");
        }
        return m;
    }

    [Theory]
    [InlineData("loha", 24)] // LoHa r = 4 (true rank ≤ 16): q/o/gate/up/down at 24, k/v (16 × 32) at 16; exact
    [InlineData("dora", 48)] // perturbed DoRA (full rank): every module at min(out, in); exact
    public void Save_ExactExport_ReloadsAsPlainLoraWithTheSameLogits(string kind, int rank)
    {
        AdapterConfigBase cfg = kind == "loha"
            ? new LoHaConfig { R = 4, Alpha = 4, TargetModules = ModuleTargets.AllLinear, BaseModelNameOrPath = "tiny/base" }
            : new LoraConfig { R = 2, LoraAlpha = 4, UseDora = true, TargetModules = ModuleTargets.List("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), BaseModelNameOrPath = "tiny/base" };
        var (modelDir, model, c) = Prepare(cfg, 31);
        using var ids = TinyModels.RandomIds(2, 9, c.VocabSize, 8);
        using var original = Logits(model, ids);
        using (var baseModel = ModelSessions.LoadBase(modelDir, new RuntimeOptions()))
        using (var baseLogits = Logits(baseModel, ids))
            Assert.True(MaxAbsDiff(original, baseLogits) > 1e-1, "the adapter must change the output");

        var adapters = AdapterModel.ByModulePath(model);
        using var r = LoraExport.FromDeltaWeights(adapters, rank, cfg);
        var ranks = adapters.ToDictionary(kv => kv.Key, kv => Math.Min(rank, Math.Min(kv.Value.Spec.InFeatures, kv.Value.Spec.OutFeatures)));
        Assert.Equal(ranks, r.Pairs.ToDictionary(p => p.Module, p => p.Rank));
        Assert.Contains(ranks.Values, v => v != ranks.Values.Max()); // rank_pattern is exercised
        Assert.True(r.MinEnergyKept > 1 - 1e-9, $"energy {r.MinEnergyKept}");
        foreach (var p in r.Pairs)
        {
            using var dw = adapters[p.Module].DeltaWeight();
            using var ba = p.B.matmul(p.A);
            Assert.True(RelMaxDiff(ba, dw) <= 1e-5, $"{p.Module}: {RelMaxDiff(ba, dw)}");
        }
        Assert.Equal(kind == "dora", r.Notes.Any(n => n.StartsWith("DoRA:", StringComparison.Ordinal)));

        string exportDir = Path.Combine(_dir, "export");
        LoraExport.Save(r, exportDir);
        var json = CheckFolder(exportDir, ranks);
        Assert.Equal("tiny/base", (string?)json["base_model_name_or_path"]);
        if (kind == "loha") Assert.Equal("all-linear", (string?)json["target_modules"]);
        else Assert.Equal(new[] { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj" }, json["target_modules"]!.AsArray().Select(n => (string?)n));
        var report = JsonNode.Parse(File.ReadAllText(Path.Combine(exportDir, LoraExport.ReportFileName)))!.AsObject();
        Assert.Equal(cfg.Method, (string?)report["source_method"]);
        Assert.Equal(rank, (int)report["requested_rank"]!);
        Assert.Equal(ranks.Count, report["modules"]!.AsArray().Count);

        using var reloaded = Reload(modelDir, exportDir, r);
        using var logits = Logits(reloaded, ids);
        double scale = original.abs().max().item<float>();
        Assert.True(MaxAbsDiff(logits, original) <= 1e-4 * scale, $"reloaded LoRA vs {kind}: max |Δlogit| {MaxAbsDiff(logits, original)} of {scale}");
        Assert.Contains("not empty", Assert.Throws<IOException>(() => LoraExport.Save(r, exportDir)).Message);
        model.Dispose();
    }

    [Fact]
    public void Save_TruncatedExport_ReloadsWithTheExportedDeltaAndKeepsLessEnergy()
    {
        var cfg = new LoraConfig { R = 2, LoraAlpha = 4, UseDora = true, TargetModules = ModuleTargets.List("q_proj", "v_proj") };
        var (modelDir, model, c) = Prepare(cfg, 41);
        var adapters = AdapterModel.ByModulePath(model);
        using var r = LoraExport.FromDeltaWeights(adapters, 3, cfg);
        Assert.True(r.MinEnergyKept < 0.999 && r.MinEnergyKept > 0, $"energy {r.MinEnergyKept}");
        Assert.Contains(r.Notes, n => n.StartsWith("rank 3:", StringComparison.Ordinal));
        string exportDir = Path.Combine(_dir, "export-truncated");
        LoraExport.Save(r, exportDir);
        CheckFolder(exportDir, r.Pairs.ToDictionary(p => p.Module, p => p.Rank));
        using var reloaded = Reload(modelDir, exportDir, r); // ΔW of every reloaded layer = the exported B·A
        model.Dispose();
    }

    [Fact]
    public void FromLowRankPairs_LoraWithRankPattern_IsAnExactResaveThatReloads()
    {
        var cfg = new LoraConfig
        {
            R = 4,
            LoraAlpha = 8,
            UseRslora = true,
            TargetModules = ModuleTargets.List("q_proj", "v_proj", "down_proj"),
            RankPattern = new() { ["v_proj"] = 2, [@"layers\.1\.mlp\.down_proj"] = 3 },
            AlphaPattern = new() { ["v_proj"] = 5 },
        };
        var (modelDir, model, c) = Prepare(cfg, 51);
        using var ids = TinyModels.RandomIds(2, 9, c.VocabSize, 9);
        using var original = Logits(model, ids);
        var adapters = AdapterModel.ByModulePath(model);
        var pairs = adapters.ToDictionary(kv => kv.Key, kv => (ILowRankPair)kv.Value);
        using var r = LoraExport.FromLowRankPairs(pairs, cfg);
        Assert.Equal("exact", r.Mode);
        Assert.Equal(1.0, r.MinEnergyKept);
        foreach (var p in r.Pairs)
        {
            var l = (LoraLinear)adapters[p.Module];
            Assert.Equal(l.Options.R, p.Rank);
            Assert.Equal(0.0, MaxAbsDiff(p.A, l.LoraA));
            using var sb = l.LoraB.mul(l.Scaling);
            Assert.Equal(0.0, MaxAbsDiff(p.B, sb));
        }
        var ranks = r.Pairs.ToDictionary(p => p.Module, p => p.Rank);
        Assert.Equal(new[] { 2, 3, 4 }, ranks.Values.Distinct().Order());

        string exportDir = Path.Combine(_dir, "export-pairs");
        LoraExport.Save(r, exportDir);
        CheckFolder(exportDir, ranks);
        using var reloaded = Reload(modelDir, exportDir, r);
        using var logits = Logits(reloaded, ids);
        Assert.True(MaxAbsDiff(logits, original) <= 5e-5 * original.abs().max().item<float>(), $"max |Δlogit| {MaxAbsDiff(logits, original)}");
        model.Dispose();
    }

    [Fact]
    public void FromLowRankPairs_DoraPair_IsRefusedNamingTheMagnitude()
    {
        using var d = (DoraLinear)Layer("dora", 61);
        var e = Assert.Throws<UserInputException>(() => LoraExport.FromLowRankPairs(new Dictionary<string, ILowRankPair> { [d.Spec.Name] = d }, new LoraConfig { TargetModules = ModuleTargets.List("q_proj") }));
        Assert.Contains("lora_magnitude_vector", e.Message);
        Assert.Contains("FromDeltaWeights", e.Message);
    }

    [Fact]
    public void FromDeltaWeights_Ia3WithBias_NotesTheLargestDroppedBiasChange()
    {
        var cfg = new Ia3Config { TargetModules = ModuleTargets.List("q_proj", "v_proj", "down_proj"), FeedforwardModules = ModuleTargets.List("down_proj") };
        var (_, model, _) = Prepare(cfg, 71, qkvBias: true);
        var adapters = AdapterModel.ByModulePath(model);
        // Independently: max over output-scaling modules with a bias of |(l − 1) ⊙ b|; feedforward down_proj has no bias change.
        double expected = 0;
        foreach (var a in adapters.Values.Cast<Ia3Linear>())
        {
            if (a.IsFeedforward || a.Bias is null) continue;
            using var db = a.Vector.flatten().sub(1).mul(a.Bias);
            expected = Math.Max(expected, db.abs().max().item<float>());
        }
        Assert.True(expected > 1e-3, "the test needs a non-trivial bias change");
        Assert.Equal(4, adapters.Values.Cast<Ia3Linear>().Count(a => !a.IsFeedforward && a.Bias is not null));

        using var r = LoraExport.FromDeltaWeights(adapters, 48, cfg); // full rank: ΔW is exact, only the bias is lost
        Assert.True(r.MinEnergyKept > 1 - 1e-9);
        string note = Assert.Single(r.Notes, n => n.StartsWith("IA3:", StringComparison.Ordinal));
        var m = Regex.Match(note, @"\|Δbias\| = ([0-9.eE+-]+)");
        Assert.True(m.Success, note);
        double noted = double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.True(Math.Abs(noted - expected) <= 1e-5 * expected, $"noted {noted}, expected {expected}");
        Assert.Contains("4 module(s)", note);
        model.Dispose();

        // Without biases (LLaMA) there is nothing to drop, so no note.
        using var plain = new Ia3Linear(Spec(0, "self_attn", "q_proj", 6, 5, bias: false), false, true, ScalarType.Float32, CPU, new Generator(1));
        Perturb(plain, 2);
        using var r2 = LoraExport.FromDeltaWeights(One(plain), 5, cfg);
        Assert.DoesNotContain(r2.Notes, n => n.StartsWith("IA3:", StringComparison.Ordinal));
    }
}
