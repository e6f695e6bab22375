using System.Text.Json.Nodes;
using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using Xunit.Abstractions;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters;

/// <summary>VeRA (Kopiczko et al. 2024) as PEFT's peft/tuners/vera defines it: projections, forward, ΔW, file layout, merge, training.</summary>
public sealed class VeraTests(ITestOutputHelper output)
{
    private static readonly LinearSpec Q = new("model.layers.0.self_attn.q_proj", "q_proj", 0, 6, 5, true);
    private static readonly LinearSpec V = new("model.layers.0.self_attn.v_proj", "v_proj", 0, 9, 3, false);

    private static VeraConfig Config(int r = 4, bool saveProjection = true, long key = 0) =>
        new() { R = r, ProjectionPrngKey = key, SaveProjection = saveProjection, TargetModules = ModuleTargets.List("q_proj", "v_proj") };

    /// <summary>q (in 6, out 5, biased) and v (in 9, out 3) on one plan: shared projections of (r, 9) and (5, r).</summary>
    private static Dictionary<string, VeraLinear> BuildPair(VeraConfig config, ulong seed = 11, long perturb = 3)
    {
        var plan = new AdapterPlan(config, new Generator(seed));
        var d = new[] { Q, V }.ToDictionary(s => s.Name, s => Assert.IsType<VeraLinear>(plan.Create(s, ScalarType.Float32, CPU)), StringComparer.Ordinal);
        foreach (var l in d.Values) Perturb(l, perturb++);
        return d;
    }

    private static Dictionary<string, IAdapter> AsAdapters(Dictionary<string, VeraLinear> d) => d.ToDictionary(kv => kv.Key, kv => (IAdapter)kv.Value, StringComparer.Ordinal);

    [Fact]
    public void Projection_IsKaimingUniformDrawnFromTheKey_AsPyTorchDrawsIt()
    {
        // PyTorch: torch.Generator().manual_seed(0) gives uniform draws 0.4963, 0.7682, 0.0885, 0.1320, 0.3074, 0.6341, 0.4901,
        // 0.8964 (the well-known torch.manual_seed(0); torch.rand(8)). PEFT's _kaiming_init draws A (r, in) then B (out, r) as
        // uniform_(−√(6/fan_in), √(6/fan_in)) = u·2b − b; with r = 1, in = 5, out = 3 that is A = u0..u4, B = u5..u7.
        double[] u = { 0.4963, 0.7682, 0.0885, 0.1320, 0.3074, 0.6341, 0.4901, 0.8964 };
        var p = new VeraProjection(1, 0, ScalarType.Float32, CPU);
        p.Reserve(5, 3, "a");
        p.Reserve(2, 1, "b"); // smaller layers do not shrink it
        Assert.Equal(new long[] { 1, 5 }, p.A.shape);
        Assert.Equal(new long[] { 3, 1 }, p.B.shape);
        double bA = Math.Sqrt(6.0 / 5), bB = Math.Sqrt(6.0);
        var a = p.A.data<float>().ToArray();
        var b = p.B.data<float>().ToArray();
        for (int i = 0; i < 5; i++) Assert.True(Math.Abs(a[i] - (u[i] * 2 * bA - bA)) < 1e-4 * 2 * bA, $"A[{i}] = {a[i]}");
        for (int i = 0; i < 3; i++) Assert.True(Math.Abs(b[i] - (u[5 + i] * 2 * bB - bB)) < 1e-4 * 2 * bB, $"B[{i}] = {b[i]}");
        // The same key gives the same tensors bit for bit; another key others; a layer built after the draw is refused.
        var again = new VeraProjection(1, 0, ScalarType.Float32, CPU);
        again.Reserve(5, 3, "a");
        Assert.Equal(0.0, MaxAbsDiff(again.A, p.A));
        var other = new VeraProjection(1, 7, ScalarType.Float32, CPU);
        other.Reserve(5, 3, "a");
        Assert.True(MaxAbsDiff(other.A, p.A) > 0.1);
        Assert.Contains("after the shared projections were drawn", Assert.Throws<InvalidOperationException>(() => p.Reserve(6, 3, "late")).Message);
    }

    [Fact]
    public void Forward_AndDeltaWeight_EqualAnIndependentFloat32Computation()
    {
        var layers = BuildPair(Config());
        var proj = layers[Q.Name].Projection;
        Assert.Same(proj, layers[V.Name].Projection); // one pair for the whole plan
        Assert.Equal(new long[] { 4, 9 }, proj.A.shape); // (r, largest in)
        Assert.Equal(new long[] { 5, 4 }, proj.B.shape); // (largest out, r)
        using var x6 = torch.randn(new long[] { 2, 3, 6 }, generator: new Generator(5));
        using var x9 = torch.randn(new long[] { 2, 3, 9 }, generator: new Generator(6));
        foreach (var (spec, x) in new[] { (Q, x6), (V, x9) })
        {
            var l = layers[spec.Name];
            l.eval();
            using var scope = torch.NewDisposeScope();
            // W x + b + λ_b ⊙ (B[:out] (λ_d ⊙ (A[:, :in] x))), written with plain matmuls on copies.
            Tensor a = proj.A.detach().clone()[.., ..(int)spec.InFeatures];   // (r, in)
            Tensor b = proj.B.detach().clone()[..(int)spec.OutFeatures, ..];  // (out, r)
            Tensor ld = l.LambdaD.detach().clone(), lb = l.LambdaB.detach().clone();
            Tensor w = l.Weight.detach().clone();
            Tensor expected = x.matmul(w.t());
            if (l.Bias is { } bias) expected = expected + bias.detach();
            expected = expected + x.matmul(a.t()).mul(ld).matmul(b.t()).mul(lb);
            Tensor y = l.call(x);
            Assert.True(MaxAbsDiff(y, expected) < 1e-5, $"{spec.Name}: |y − reference| = {MaxAbsDiff(y, expected)}");
            Assert.True(MaxAbsDiff(y, x.matmul(w.t())) > 1e-2, "the adapter must change the output");
            // ΔW = (λ_b ⊙ B_s)(λ_d ⊙ A_s): each entry Σ_k λ_b[o] B[o,k] λ_d[k] A[k,i].
            Tensor delta = torch.einsum("o,ok,k,ki->oi", lb, b, ld, a);
            Assert.True(MaxAbsDiff(l.DeltaWeight(), delta) < 1e-6);
        }
    }

    [Fact]
    public void Save_WritesPeftsKeys_Shapes_AndConfigFields()
    {
        var layers = BuildPair(Config(r: 4));
        string dir = Path.Combine(TempDir(), "vera");
        AdapterFolder.Save(dir, Config(r: 4), AsAdapters(layers));
        using (var f = SafetensorsFile.Open(Path.Combine(dir, AdapterFolder.WeightsFileName)))
        {
            var shapes = f.Entries.ToDictionary(e => e.Name, e => e.Shape.ToArray(), StringComparer.Ordinal);
            var expected = new Dictionary<string, long[]>
            {
                ["base_model.model.model.layers.0.self_attn.q_proj.vera_lambda_b"] = new long[] { 5 },
                ["base_model.model.model.layers.0.self_attn.q_proj.vera_lambda_d"] = new long[] { 4 },
                ["base_model.model.model.layers.0.self_attn.v_proj.vera_lambda_b"] = new long[] { 3 },
                ["base_model.model.model.layers.0.self_attn.v_proj.vera_lambda_d"] = new long[] { 4 },
                ["base_model.vera_A"] = new long[] { 4, 9 },
                ["base_model.vera_B"] = new long[] { 5, 4 },
            };
            Assert.Equal(expected.Keys.Order(StringComparer.Ordinal), shapes.Keys.Order(StringComparer.Ordinal));
            foreach (var (k, s) in expected) Assert.Equal(s, shapes[k]);
        }
        // adapter_config.json: exactly the fields PEFT's VeraConfig (and PeftConfig) write, with PEFT's values.
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, AdapterFolder.ConfigFileName)))!.AsObject();
        string[] peftFields =
        {
            "base_model_name_or_path", "bias", "d_initial", "fan_in_fan_out", "inference_mode", "init_weights", "layers_pattern",
            "layers_to_transform", "modules_to_save", "peft_type", "peft_version", "projection_prng_key", "r", "revision",
            "save_projection", "target_modules", "task_type", "vera_dropout",
        };
        Assert.Equal(peftFields, json.Select(p => p.Key).Order(StringComparer.Ordinal));
        Assert.Equal("VERA", (string?)json["peft_type"]);
        Assert.Equal(4, (int)json["r"]!);
        Assert.Equal(0L, (long)json["projection_prng_key"]!);
        Assert.True((bool)json["save_projection"]!);
        Assert.Equal(0.1, (double)json["d_initial"]!);
        Assert.Equal("none", (string?)json["bias"]);
        Assert.True((bool)json["init_weights"]!);
        Assert.True((bool)json["inference_mode"]!);
        // PEFT's defaults when a field is absent.
        var (parsed, warnings) = AdapterConfigJson.Parse("""{"peft_type": "VERA", "target_modules": ["q_proj"]}""");
        var v = Assert.IsType<VeraConfig>(parsed);
        Assert.Empty(warnings);
        Assert.Equal((256, 0L, true, 0.1, 0.0, true), (v.R, v.ProjectionPrngKey, v.SaveProjection, v.DInitial, v.VeraDropout, v.InitWeights));
    }

    [Fact]
    public void SaveThenLoad_UsesTheSavedProjections_AndWithoutThemRegeneratesFromTheKey()
    {
        using var x = torch.randn(new long[] { 3, 6 }, generator: new Generator(8));
        foreach (bool save in new[] { true, false })
        {
            var layers = BuildPair(Config(saveProjection: save));
            if (save) // saved projections win over the key: make them differ from what the key draws
                using (torch.no_grad()) layers[Q.Name].Projection.A.add_(0.5);
            string dir = Path.Combine(TempDir(), "vera");
            AdapterFolder.Save(dir, Config(saveProjection: save), AsAdapters(layers));
            using var contents = AdapterFolder.Load(dir);
            Assert.Empty(contents.Warnings);
            Assert.Equal(save ? 2 : 0, contents.Shared.Count);
            var fresh = BuildPair(Assert.IsType<VeraConfig>(contents.Config) with { InferenceMode = false }, seed: 99, perturb: 40);
            foreach (var s in new[] { Q, V }) // the same frozen base, as a loader has
                using (torch.no_grad()) fresh[s.Name].Weight.copy_(layers[s.Name].Weight);
            using (torch.no_grad()) fresh[Q.Name].Bias!.copy_(layers[Q.Name].Bias!);
            AdapterFolder.Apply(contents, AsAdapters(fresh));
            Assert.Equal(0.0, MaxAbsDiff(fresh[Q.Name].Projection.A, layers[Q.Name].Projection.A));
            Assert.Equal(0.0, MaxAbsDiff(fresh[Q.Name].Projection.B, layers[Q.Name].Projection.B));
            layers[Q.Name].eval(); fresh[Q.Name].eval();
            Assert.Equal(0.0, MaxAbsDiff(fresh[Q.Name].call(x), layers[Q.Name].call(x)));
        }
    }

    [Fact]
    public void Load_WithoutProjectionsWhenTheConfigSaysTheyAreSaved_IsRefused()
    {
        var layers = BuildPair(Config(saveProjection: false));
        string dir = Path.Combine(TempDir(), "vera");
        AdapterFolder.Save(dir, Config(saveProjection: false), AsAdapters(layers));
        string cfg = Path.Combine(dir, AdapterFolder.ConfigFileName);
        File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("\"save_projection\": false", "\"save_projection\": true", StringComparison.Ordinal));
        using var contents = AdapterFolder.Load(dir);
        var e = Assert.Throws<UserInputException>(() => AdapterFolder.Apply(contents, AsAdapters(BuildPair(Config()))));
        Assert.Contains("save_projection = true but the file has no 'base_model.vera_A'", e.Message);
    }

    [Fact]
    public void Merge_OnATinyModel_EqualsUnmerged_AndUnmergeIsBitExact()
    {
        // Projections of different shapes (q 32→32, k 32→16, gate 32→48, down 48→32): shared A (8, 48), B (48, 8).
        var cfg = Config(r: 8) with { TargetModules = ModuleTargets.List("q_proj", "k_proj", "gate_proj", "down_proj") };
        using var model = TinyModels.Build(TinyModels.Config(), seed: 9, factory: new AdapterPlan(cfg, new Generator(3)));
        var adapters = AdapterModel.ByModulePath(model).Values.Cast<VeraLinear>().ToList();
        Assert.Equal(8, adapters.Count);
        Assert.Equal(new long[] { 8, 48 }, adapters[0].Projection.A.shape);
        Assert.Equal(new long[] { 48, 8 }, adapters[0].Projection.B.shape);
        long seed = 5;
        foreach (var a in adapters) Perturb(a, seed++);
        var w0 = adapters.Select(a => a.Weight.detach().clone()).ToList();
        model.eval();
        using var ids = TinyModels.RandomIds(2, 10, 64, 4);
        using var before = model.forward(ids);
        Assert.Equal(8, AdapterModel.MergeAll(model));
        using var merged = model.forward(ids);
        double scale = Math.Max(1, before.abs().max().item<float>());
        output.WriteLine($"merged vs unmerged logits: max |Δ| {MaxAbsDiff(merged, before):E2} (largest logit {scale:0.00})");
        Assert.True(MaxAbsDiff(merged, before) <= 1e-5 * scale, $"merged vs unmerged: {MaxAbsDiff(merged, before)}");
        AdapterModel.UnmergeAll(model);
        for (int i = 0; i < adapters.Count; i++) Assert.True(adapters[i].Weight.eq(w0[i]).all().item<bool>(), $"{adapters[i].Spec.Name}: unmerge not bit-exact");
        using var again = model.forward(ids);
        Assert.Equal(0.0, MaxAbsDiff(again, before));
    }

    [Fact]
    public void ShortTraining_LowersTheLoss_AndTrainsOnlyTheVectors()
    {
        var cfg = Config(r: 16) with { TargetModules = ModuleTargets.AllLinear };
        using var reference = TinyModels.Build(TinyModels.Config(), seed: 9);
        var m = AdaptedCopy(reference, cfg);
        var trainable = m.parameters().Where(p => p.requires_grad).ToList();
        // 2 layers × 7 projections, each λ_d (16) + λ_b (out): q,k,v,o out 32,16,16,32; gate, up 48; down 32.
        Assert.Equal(2 * (7 * 16 + 32 + 16 + 16 + 32 + 48 + 48 + 32), trainable.Sum(p => p.numel()));
        using var ids = TinyModels.RandomIds(4, 12, 64, 7);
        using var opt = torch.optim.AdamW(trainable, 2e-2, weight_decay: 0);
        var losses = LossCurves.Train(m, ids, opt, steps: 20);
        m.Dispose();
        output.WriteLine($"VeRA r=16, all-linear, AdamW 2e-2, 20 steps: loss {losses[0]:0.0000} → {losses[^1]:0.0000}");
        Assert.True(losses[^1] < losses[0] - 0.05, $"loss {losses[0]:0.0000} → {losses[^1]:0.0000}");
    }

    [Fact]
    public void Init_IsPeftsReset_OrItsUnresetVectors()
    {
        var spec = new LinearSpec("m.q_proj", "q_proj", 0, 6, 5, false);
        var p = new VeraProjection(4, 0, ScalarType.Float32, CPU);
        using var reset = new VeraLinear(spec, p, Config() with { DInitial = 0.25 }, ScalarType.Float32, CPU, new Generator(1));
        Assert.Equal(new float[] { 0, 0, 0, 0, 0 }, reset.LambdaB.data<float>().ToArray()); // λ_b = 0: ΔW = 0
        Assert.Equal(new float[] { 0.25f, 0.25f, 0.25f, 0.25f }, reset.LambdaD.data<float>().ToArray());
        using var unreset = new VeraLinear(spec, p, Config() with { InitWeights = false }, ScalarType.Float32, CPU, new Generator(1));
        Assert.Equal(new float[] { 1, 1, 1, 1, 1 }, unreset.LambdaB.data<float>().ToArray()); // λ_b = 1, λ_d ~ N(0, 1)
        Assert.True(unreset.LambdaD.abs().sum().item<float>() > 0.1);
        Assert.True(unreset.DeltaWeight().abs().max().item<float>() > 1e-2);
    }

    [Fact]
    public void MethodSpec_Flags_AndBadInput()
    {
        var spec = AdapterMethods.ApplyFlags(new MethodSpec { Method = "vera", Rank = 32, Dropout = 0.05 }, new (MethodFlag, object)[]
        {
            (AdapterMethods.Flags.Single(f => f.Flag.Name == "--projection-prng-key").Flag, 42L),
            (AdapterMethods.Flags.Single(f => f.Flag.Name == "--save-projection").Flag, false),
            (AdapterMethods.Flags.Single(f => f.Flag.Name == "--d-initial").Flag, 0.5),
        });
        var c = Assert.IsType<VeraConfig>(AdapterMethods.Build(spec).Config);
        Assert.Equal((32, 42L, false, 0.5, 0.05), (c.R, c.ProjectionPrngKey, c.SaveProjection, c.DInitial, c.VeraDropout));

        Assert.Contains("'fan_in_fan_out'", Assert.Throws<UserInputException>(() => (Config() with { FanInFanOut = true }).Validate()).Message);
        Assert.Contains("'bias'", Assert.Throws<UserInputException>(() => (Config() with { Bias = "vera_only" }).Validate()).Message);
        Assert.Contains("'r'", Assert.Throws<UserInputException>(() => (Config() with { R = 0 }).Validate()).Message);
        Assert.Contains("--exclude", Assert.Throws<UserInputException>(() => AdapterMethods.Build(spec with { Exclude = ModuleTargets.List("k_proj") })).Message);
        Assert.Contains("'bias'", Assert.Throws<UserInputException>(() => AdapterConfigJson.Parse("""{"peft_type": "VERA", "target_modules": ["q_proj"], "bias": "all"}""")).Message);
    }
}
