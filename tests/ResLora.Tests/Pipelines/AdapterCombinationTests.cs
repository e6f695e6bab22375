using ResLora.Adapters;
using ResLora.IO;
using ResLora.Pipelines;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Pipelines;

/// <summary>PEFT's add_weighted_adapter for LoRA: linear, cat, svd, ties, dare_linear, written as PEFT folders.</summary>
public sealed class AdapterCombinationTests : IClassFixture<MultiAdapterFixture>
{
    private readonly MultiAdapterFixture _f;

    public AdapterCombinationTests(MultiAdapterFixture fixture) => _f = fixture;

    /// <summary>ΔW = s·B·A per module (float64), read from a folder without the library's layers: s = α/r, or α/√r with rsLoRA.</summary>
    private static Dictionary<string, Tensor> Deltas(string dir)
    {
        using var c = AdapterFolder.Load(dir);
        var cfg = Assert.IsType<LoraConfig>(c.Config);
        Assert.Empty(cfg.RankPattern);
        double s = cfg.UseRslora ? cfg.LoraAlpha / Math.Sqrt(cfg.R) : cfg.LoraAlpha / cfg.R;
        return c.Tensors.ToDictionary(kv => kv.Key,
            kv => kv.Value["lora_B.weight"].to_type(ScalarType.Float64).matmul(kv.Value["lora_A.weight"].to_type(ScalarType.Float64)).mul(s),
            StringComparer.Ordinal);
    }

    /// <summary>Σ wᵢ·ΔWᵢ over the modules any input adapts.</summary>
    private Dictionary<string, Tensor> WeightedSum(params (string Name, double Weight)[] inputs)
    {
        var sum = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, w) in inputs)
            foreach (var (m, d) in Deltas(_f.Dir(name)))
                sum[m] = sum.TryGetValue(m, out var t) ? t.add(d.mul(w)) : d.mul(w);
        return sum;
    }

    private static double RelDiff(Tensor got, Tensor expected) =>
        got.sub(expected).abs().max().item<double>() / Math.Max(expected.abs().max().item<double>(), 1e-30);

    private static void AssertSameDeltas(Dictionary<string, Tensor> expected, Dictionary<string, Tensor> got, double tol)
    {
        Assert.Equal(expected.Keys.OrderBy(k => k, StringComparer.Ordinal), got.Keys.OrderBy(k => k, StringComparer.Ordinal));
        foreach (var (m, e) in expected) Assert.True(RelDiff(got[m], e) <= tol, $"{m}: relative max |Δ| {RelDiff(got[m], e)}");
    }

    private string Combine(CombineOptions options, params (string Name, double Weight)[] inputs)
    {
        string outDir = Path.Combine(_f.Root, "combined-" + Guid.NewGuid().ToString("N"));
        AdapterCombination.CombineFolders(_f.ModelDir, inputs.Select(i => new CombineInput(i.Name, _f.Dir(i.Name), i.Weight)).ToList(), options, outDir, new RuntimeOptions());
        return outDir;
    }

    private string Combine(CombineOptions options, params (string Name, string Dir, double Weight)[] inputs)
    {
        string outDir = Path.Combine(_f.Root, "combined-" + Guid.NewGuid().ToString("N"));
        AdapterCombination.CombineFolders(_f.ModelDir, inputs.Select(i => new CombineInput(i.Name, _f.Dir(i.Dir), i.Weight)).ToList(), options, outDir, new RuntimeOptions());
        return outDir;
    }

    [Theory]
    [InlineData("lora")]
    [InlineData("rslora")] // s = α/√r folded in, and the result has use_rslora off (PEFT PR #3449)
    public void Linear_OneAdapterWithWeightOne_IsThatAdapter(string name)
    {
        string dir = Combine(new CombineOptions { How = CombinationType.Linear }, (name, 1.0));
        AssertSameDeltas(Deltas(_f.Dir(name)), Deltas(dir), 1e-6);
        var cfg = Assert.IsType<LoraConfig>(AdapterConfigJson.Parse(File.ReadAllText(Path.Combine(dir, AdapterFolder.ConfigFileName))).Config);
        Assert.Equal(cfg.R, cfg.LoraAlpha);
        Assert.False(cfg.UseRslora);
        Assert.True(File.Exists(Path.Combine(dir, CombineReport.FileName)));
        // The folder is a normal adapter: today's single-adapter loader reads it.
        using var m = ModelSessions.LoadWithAdapter(_f.ModelDir, dir, new RuntimeOptions());
    }

    [Fact]
    public void Svd_AtFullRank_IsTheExactWeightedSum_AndTruncatesBelow()
    {
        // q_proj is 32×32 and v_proj 16×32 on the tiny model: rank 32 is full rank everywhere.
        string full = Combine(new CombineOptions { How = CombinationType.Svd, Rank = 32 }, ("lora8", 0.7), ("rslora", -0.4));
        AssertSameDeltas(WeightedSum(("lora8", 0.7), ("rslora", -0.4)), Deltas(full), 1e-5);
        string low = Combine(new CombineOptions { How = CombinationType.Svd, Rank = 3 }, ("lora8", 0.7), ("rslora", -0.4));
        var report = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(low, CombineReport.FileName)))!;
        Assert.True(report["max_relative_deviation_from_weighted_sum"]!.GetValue<double>() > 1e-3, "rank 3 cannot hold a rank-16 sum");
        Assert.All(report["modules"]!.AsArray(), m => Assert.True(m!["energy_kept"]!.GetValue<double>() < 1));
        // The clamp (a quantile of the factors' entries) bounds every factor entry.
        string clamped = Combine(new CombineOptions { How = CombinationType.Svd, Rank = 32, SvdClamp = 0.9 }, ("lora8", 0.7), ("rslora", -0.4));
        using var c = AdapterFolder.Load(clamped);
        using var fullC = AdapterFolder.Load(full);
        foreach (var (m, t) in c.Tensors)
        {
            double max = Math.Max(t["lora_A.weight"].abs().max().item<float>(), t["lora_B.weight"].abs().max().item<float>());
            double fullMax = Math.Max(fullC.Tensors[m]["lora_A.weight"].abs().max().item<float>(), fullC.Tensors[m]["lora_B.weight"].abs().max().item<float>());
            Assert.True(max < fullMax, $"{m}: clamped {max} vs {fullMax}");
        }
    }

    [Fact]
    public void Cat_IsTheWeightedSumOfTheDeltas_AcrossRanksAndTargets()
    {
        // lora: all-linear r 4; lora8: q/v r 8 → q/v get rank 12, the other modules 4 padded with zeros to 12.
        string dir = Combine(new CombineOptions { How = CombinationType.Cat }, ("lora", 0.5), ("lora8", -1.5));
        AssertSameDeltas(WeightedSum(("lora", 0.5), ("lora8", -1.5)), Deltas(dir), 1e-5);
        var cfg = (LoraConfig)AdapterConfigJson.Parse(File.ReadAllText(Path.Combine(dir, AdapterFolder.ConfigFileName))).Config;
        Assert.Equal(12, cfg.R);
        Assert.Equal(new[] { "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj" }, cfg.TargetModules!.Names!.OrderBy(n => n, StringComparer.Ordinal));
    }

    [Fact]
    public void TiesAndDare_AtDensityOne_AreWhatPeftDoes()
    {
        // Two copies of one adapter make the rules visible: linear sums the factors (B′A′ = (2√s B)(2√s A) = 4ΔW, cross
        // terms included), cat sums the deltas (2ΔW), ties at density 1 averages the sign-agreeing entries (the disjoint
        // mean: ΔW itself), dare_linear at density 1 prunes nothing and equals linear.
        var twice = new[] { ("a", "lora", 1.0), ("b", "lora", 1.0) };
        var delta = Deltas(_f.Dir("lora"));
        AssertSameDeltas(delta.ToDictionary(kv => kv.Key, kv => kv.Value.mul(4)), Deltas(Combine(new CombineOptions { How = CombinationType.Linear }, twice)), 1e-5);
        AssertSameDeltas(delta.ToDictionary(kv => kv.Key, kv => kv.Value.mul(2)), Deltas(Combine(new CombineOptions { How = CombinationType.Cat }, twice)), 1e-5);
        AssertSameDeltas(delta, Deltas(Combine(new CombineOptions { How = CombinationType.Ties, Density = 1 }, twice)), 1e-5);
    }

    private static Dictionary<string, (double[] A, double[] B)> Factors(string dir)
    {
        using var c = AdapterFolder.Load(dir);
        return c.Tensors.ToDictionary(kv => kv.Key,
            kv => (kv.Value["lora_A.weight"].to_type(ScalarType.Float64).data<double>().ToArray(), kv.Value["lora_B.weight"].to_type(ScalarType.Float64).data<double>().ToArray()),
            StringComparer.Ordinal);
    }

    [Fact]
    public void DareLinear_IsLinearAtDensityOne_AndSeededBelow()
    {
        var pair = new[] { ("lora8", 0.6), ("rslora", 0.3) };
        var linear = Factors(Combine(new CombineOptions { How = CombinationType.Linear }, pair));
        Assert.Equal(linear, Factors(Combine(new CombineOptions { How = CombinationType.DareLinear, Density = 1 }, pair)), new FactorsComparer());
        var seeded = Factors(Combine(new CombineOptions { How = CombinationType.DareLinear, Density = 0.5, Seed = 7 }, pair));
        Assert.Equal(seeded, Factors(Combine(new CombineOptions { How = CombinationType.DareLinear, Density = 0.5, Seed = 7 }, pair)), new FactorsComparer());
        Assert.NotEqual(seeded, Factors(Combine(new CombineOptions { How = CombinationType.DareLinear, Density = 0.5, Seed = 8 }, pair)), new FactorsComparer());
        // Kept entries are rescaled by 1/density: each entry is 0, one input's term ×2, or both inputs' terms ×2.
        using var a1 = AdapterFolder.Load(_f.Dir("lora8"));
        using var a2 = AdapterFolder.Load(_f.Dir("rslora"));
        const string m = "model.layers.0.self_attn.q_proj";
        double s2 = 4 / Math.Sqrt(8);
        var x1 = a1.Tensors[m]["lora_A.weight"].to_type(ScalarType.Float64).data<double>().ToArray();
        var x2 = a2.Tensors[m]["lora_A.weight"].to_type(ScalarType.Float64).data<double>().ToArray();
        double w1 = Math.Sqrt(0.6 * 1), w2 = Math.Sqrt(0.3 * s2);
        for (int i = 0; i < x1.Length; i++)
        {
            double v = seeded[m].A[i];
            var options = new[] { 0, 2 * w1 * x1[i], 2 * w2 * x2[i], 2 * (w1 * x1[i] + w2 * x2[i]) };
            Assert.Contains(options, o => Math.Abs(o - v) <= 1e-5 * (1 + Math.Abs(o)));
        }
    }

    [Fact]
    public void Ties_AtHalfDensity_MatchesAHandComputation()
    {
        var pair = new[] { ("lora8", 0.6), ("rslora", -0.3) };
        var got = Factors(Combine(new CombineOptions { How = CombinationType.Ties, Density = 0.5 }, pair));
        using var a1 = AdapterFolder.Load(_f.Dir("lora8"));
        using var a2 = AdapterFolder.Load(_f.Dir("rslora"));
        double ws1 = 0.6 * 1, ws2 = -0.3 * (4 / Math.Sqrt(8));
        foreach (var m in new[] { "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj" })
        {
            foreach (var (key, pick, w1, w2) in new[] { ("lora_A.weight", 0, Math.Sign(ws1) * Math.Sqrt(Math.Abs(ws1)), Math.Sign(ws2) * Math.Sqrt(Math.Abs(ws2))), ("lora_B.weight", 1, Math.Sqrt(Math.Abs(ws1)), Math.Sqrt(Math.Abs(ws2))) })
            {
                var t1 = Prune(a1.Tensors[m][key].to_type(ScalarType.Float64).data<double>().ToArray(), 0.5);
                var t2 = Prune(a2.Tensors[m][key].to_type(ScalarType.Float64).data<double>().ToArray(), 0.5);
                var actual = pick == 0 ? got[m].A : got[m].B;
                for (int i = 0; i < t1.Length; i++)
                {
                    int major = t1[i] + t2[i] >= 0 ? 1 : -1; // the sign of the summed (unweighted) values
                    double sum = 0;
                    int n = 0;
                    if (Math.Sign(t1[i]) == major) { sum += w1 * t1[i]; n++; }
                    if (Math.Sign(t2[i]) == major) { sum += w2 * t2[i]; n++; }
                    double expected = sum / Math.Max(n, 1);
                    Assert.True(Math.Abs(actual[i] - expected) <= 1e-6 * (1 + Math.Abs(expected)), $"{m}.{key}[{i}]: {actual[i]} vs {expected}");
                }
            }
        }
    }

    /// <summary>Keeps the int(d·n) largest magnitudes (entries here are distinct).</summary>
    private static double[] Prune(double[] t, double density)
    {
        int k = (int)(density * t.Length);
        var keep = t.Select((v, i) => (Math.Abs(v), i)).OrderByDescending(x => x.Item1).Take(k).Select(x => x.i).ToHashSet();
        return t.Select((v, i) => keep.Contains(i) ? v : 0).ToArray();
    }

    private sealed class FactorsComparer : IEqualityComparer<Dictionary<string, (double[] A, double[] B)>>
    {
        public bool Equals(Dictionary<string, (double[] A, double[] B)>? x, Dictionary<string, (double[] A, double[] B)>? y) =>
            x!.Count == y!.Count && x.All(kv => y.TryGetValue(kv.Key, out var o) && kv.Value.A.SequenceEqual(o.A) && kv.Value.B.SequenceEqual(o.B));

        public int GetHashCode(Dictionary<string, (double[] A, double[] B)> obj) => obj.Count;
    }

    [Fact]
    public void Refusals_NameTheFixInOneLine()
    {
        string Err(CombineOptions o, params (string Name, string Dir, double Weight)[] inputs) =>
            Assert.Throws<UserInputException>(() => Combine(o, inputs)).Message;
        string ranks = Err(new CombineOptions { How = CombinationType.Linear }, ("a", "lora", 1), ("b", "lora8", 1));
        Assert.Contains("same rank", ranks);
        Assert.Contains("a r=4, b r=8", ranks);
        Assert.Contains("--how cat", ranks);
        Assert.Contains("DoRA (use_dora)", Err(new CombineOptions { How = CombinationType.Cat }, ("a", "lora", 1), ("d", "dora", 1)));
        Assert.Contains("loha adapter (peft_type LOHA)", Err(new CombineOptions { How = CombinationType.Cat }, ("a", "lora", 1), ("h", "loha", 1)));
        Assert.Contains("needs --density", Err(new CombineOptions { How = CombinationType.Ties }, ("a", "lora", 1)));
        Assert.Contains("--rank applies to --how svd", Err(new CombineOptions { How = CombinationType.Linear, Rank = 4 }, ("a", "lora", 1)));
        Assert.Contains("given twice", Err(new CombineOptions { How = CombinationType.Cat }, ("a", "lora", 1), ("a", "lora8", 1)));
        Assert.DoesNotContain('\n', ranks);
    }
}
