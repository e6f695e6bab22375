using ResLora.Adapters;
using ResLora.Models;
using ResLora.Models.Phi3;
using ResLora.Tests.Adapters;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>
/// Phi-3 / Phi-4-mini: logits against the independent <see cref="ReferencePhi3"/> with partial rotary and LongRoPE in both
/// regimes, KV-cache decoding, merging into the fused projections, RoLoRA's rotation, config checks, preset sizes.
/// </summary>
public sealed class Phi3Tests
{
    internal static readonly double[] Short = { 1.0, 1.25, 1.6, 2.1, 2.9, 4.0 };
    internal static readonly double[] Long = { 1.5, 2.4, 3.8, 6.0, 9.5, 15.0 };

    /// <summary>
    /// A tiny Phi-4-mini-shaped config: head_dim 16 with partial_rotary_factor 0.75 (12 rotary dims, 6 LongRoPE factors),
    /// GQA 4/2 heads, original context <paramref name="original"/> of max <paramref name="maxPos"/> (attention factor
    /// sqrt(1 + ln 8 / ln 16) by default).
    /// </summary>
    internal static ModelConfig Tiny(bool longrope = true, int? window = null, bool tied = false, int original = 16, int maxPos = 128, int vocab = 64, string kind = "longrope")
    {
        var c = new ModelConfig
        {
            ModelType = "phi3",
            VocabSize = vocab,
            HiddenSize = 64,
            IntermediateSize = 64,
            NumHiddenLayers = 2,
            NumAttentionHeads = 4,
            NumKeyValueHeadsRaw = 2,
            RmsNormEps = 1e-5,
            RopeTheta = 10000,
            MaxPositionEmbeddings = maxPos,
            TieWordEmbeddings = tied,
            SlidingWindow = window,
            BosTokenId = 1,
            EosTokenIds = new[] { 2 },
            RopeScaling = longrope ? new RopeScaling { Type = kind, ShortFactor = Short, LongFactor = Long } : null,
        };
        return c.WithExtra("partial_rotary_factor", 0.75).WithExtra("original_max_position_embeddings", original);
    }

    private static Dictionary<string, Tensor> Weights(CausalLM m) => m.BaseParameters().ToDictionary(kv => kv.Key, kv => (Tensor)kv.Value);

    private static Tensor Logits(CausalLM m, long[] ids)
    {
        using var _ = torch.no_grad();
        using var input = torch.tensor(ids).unsqueeze(0);
        return m.forward(input)[0];
    }

    [Theory]
    [InlineData(12, false, null)] // short regime: 12 ≤ original 16
    [InlineData(24, false, null)] // long regime
    [InlineData(12, true, 5)]     // tied, sliding window 5
    [InlineData(24, true, 7)]
    [InlineData(40, true, 7)]
    public void Logits_MatchTheReference_InBothLongRopeRegimes(int length, bool tied, int? window)
    {
        var c = Tiny(window: window, tied: tied);
        long[] ids = TinyModels.RandomIds(1, length, c.VocabSize, 5).data<long>().ToArray();
        // Our cos/sin are float32 as transformers' (whatever the model dtype), the reference's angles float64: within 1e-5 up
        // to 24 positions, in float64 and float32 models alike; at 40 positions the float32 angle rounding reaches 1.3e-5.
        foreach (var (dtype, bound) in new[] { (ScalarType.Float64, length <= 24 ? 1e-5 : 2e-5), (ScalarType.Float32, length <= 24 ? 1e-5 : 2e-5) })
        {
            using var model = TinyModels.Build(c, seed: 7, dtype: dtype);
            using var ours = Logits(model, ids);
            using var reference = ReferencePhi3.Logits(c, Weights(model), ids);
            double diff = (ours - reference).abs().max().to_type(ScalarType.Float64).item<double>();
            Assert.True(diff < bound, $"{dtype}: max |ours - reference| = {diff}");
            // LongRoPE matters: the same weights without it give other logits.
            using var plain = TinyModels.Build(Tiny(longrope: false, window: window, tied: tied), seed: 7, dtype: dtype);
            using var unscaled = Logits(plain, ids);
            Assert.True((ours - unscaled).abs().max().to_type(ScalarType.Float64).item<double>() > 1e-3);
        }
    }

    [Fact]
    public void LongSequence_SwitchesEveryPositionToTheLongFactors()
    {
        var c = Tiny();
        using var model = TinyModels.Build(c, seed: 3);
        long[] ids = TinyModels.RandomIds(1, 24, c.VocabSize, 9).data<long>().ToArray();
        using var whole = Logits(model, ids);            // 24 > 16: long factors at every position
        using var prefix = Logits(model, ids[..16]);     // 16 ≤ 16: short factors
        using var wholePrefix = whole.narrow(0, 0, 16);
        // transformers' dynamic longrope update: the table follows the forward's length, so even position 0..15 change.
        Assert.True((wholePrefix - prefix).abs().max().item<float>() > 1e-3);
        using var rot = new Rotary(c, CPU, Phi3Family.RotaryDim(c));
        Assert.Equal(12, rot.Dim);
    }

    [Theory]
    [InlineData(8, 16)]  // stays in the short regime
    [InlineData(20, 30)] // the prompt already exceeds the original context: long throughout
    public void KvCacheDecoding_EqualsTheFullForward(int prompt, int total)
    {
        var c = Tiny(window: 6);
        using var model = TinyModels.Build(c, seed: 11, dtype: ScalarType.Float64); // float64: equal up to rounding
        long[] ids = TinyModels.RandomIds(1, total, c.VocabSize, 4).data<long>().ToArray();
        using var full = Logits(model, ids);
        using var _ = torch.no_grad();
        using var cache = new KvCache(c.NumHiddenLayers);
        using (var first = model.Forward(torch.tensor(ids[..prompt]).unsqueeze(0), null, cache))
            Assert.True((first[0] - full.narrow(0, 0, prompt)).abs().max().item<double>() < 1e-10);
        for (int i = prompt; i < total; i++)
        {
            using var step = model.Forward(torch.tensor(new[] { ids[i] }).unsqueeze(0), null, cache);
            double d = (step[0, 0] - full[i]).abs().max().item<double>();
            Assert.True(d < 1e-10, $"position {i}: {d}");
        }
    }

    [Fact]
    public void Lora_OnTheFusedProjections_MergesIntoThem()
    {
        var c = Tiny(tied: true);
        using var reference = TinyModels.Build(c, seed: 2);
        var lora = new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ModuleTargets.List(Phi3Family.Instance.DefaultTargets.ToArray()) };
        using var m = AdapterTestKit.AdaptedCopy(reference, lora);
        m.eval();
        var adapters = AdapterModel.ByModulePath(m);
        Assert.Equal(new[] { "mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj", "self_attn.qkv_proj" },
            adapters.Keys.Where(p => p.StartsWith("model.layers.0.", StringComparison.Ordinal)).Select(p => p["model.layers.0.".Length..]).Order(StringComparer.Ordinal));
        long[] ids = TinyModels.RandomIds(1, 20, c.VocabSize, 1).data<long>().ToArray();
        using var unmerged = Logits(m, ids);
        using var baseLogits = Logits(reference, ids);
        Assert.True((unmerged - baseLogits).abs().max().item<float>() > 1e-3, "the perturbed adapters must change the model");
        var qkv = (LoraLinear)adapters["model.layers.1.self_attn.qkv_proj"];
        using var expectedDelta = (qkv.LoraB.matmul(qkv.LoraA) * qkv.Scaling).detach().clone(); // (heads·d + 2·kv·d, hidden): q, k and v rows
        Assert.Equal(new long[] { (4 + 2 * 2) * 16, 64 }, expectedDelta.shape);
        Assert.Equal(8, AdapterModel.MergeAll(m));
        using var merged = Logits(m, ids);
        double d = (merged - unmerged).abs().max().item<float>();
        Assert.True(d < 1e-4, $"merged vs unmerged {d}"); // the merge adds ΔW in float32 (LowRankLinear): rounding only
        using var delta = m.BaseParameters()["model.layers.1.self_attn.qkv_proj.weight"] - reference.BaseParameters()["model.layers.1.self_attn.qkv_proj.weight"];
        Assert.True((delta - expectedDelta).abs().max().item<float>() < 1e-6);
    }

    [Theory]
    [InlineData("q_proj", "qkv_proj")]
    [InlineData("v_proj", "qkv_proj")]
    [InlineData("gate_proj", "gate_up_proj")]
    [InlineData("mlp.up_proj", "gate_up_proj")]
    public void UnfusedTargetNames_AreRefused_PointingToTheFusedProjection(string target, string fused)
    {
        var plan = new AdapterPlan(new LoraConfig { R = 2, LoraAlpha = 2, TargetModules = ModuleTargets.List(target, "o_proj") });
        using var m = ModelFamilies.CreateCausalLM(Tiny(), plan, ScalarType.Float32, CPU);
        var e = Assert.Throws<UserInputException>(plan.EnsureAllPatternsMatched);
        Assert.Contains($"'{target}' matched no module", e.Message);
        Assert.Contains($"target {fused} instead", e.Message);
    }

    public static TheoryData<string, Func<ModelConfig, ModelConfig>, string> BadConfigs => new()
    {
        { "short too short", c => c with { RopeScaling = c.RopeScaling! with { ShortFactor = Short[..5] } }, "'rope_scaling.short_factor' has 5 entries; the rotary dimension is 12, so it needs 6" },
        { "long missing", c => c with { RopeScaling = c.RopeScaling! with { LongFactor = null } }, "needs 'long_factor'" },
        { "negative factor", c => c with { RopeScaling = c.RopeScaling! with { LongFactor = Long.Select(x => -x).ToArray() } }, "'rope_scaling.long_factor' must hold positive" },
        { "yarn", c => c with { RopeScaling = c.RopeScaling! with { Type = "yarn" } }, "set it to 'longrope'" },
        { "llama3 kind", c => c with { RopeScaling = c.RopeScaling! with { Type = "llama3" } }, "supported: default, longrope" },
        { "odd partial", c => c.WithExtra("partial_rotary_factor", 0.7), "'partial_rotary_factor' 0.7 gives 11 rotary dims" },
        { "partial > 1", c => c.WithExtra("partial_rotary_factor", 1.5), "'partial_rotary_factor' must be in (0, 1]" },
        { "bad original", c => c.WithExtra("original_max_position_embeddings", 0), "'original_max_position_embeddings' must be a positive" },
        { "window 0", c => c with { SlidingWindow = 0 }, "'sliding_window' must be a positive" },
        { "bias", c => c with { AttentionBias = true }, "Phi-3 has no projection biases" },
    };

    [Theory]
    [MemberData(nameof(BadConfigs))]
    public void BadConfigs_AreRefused_NamingTheField(string name, Func<ModelConfig, ModelConfig> spoil, string expected)
    {
        var e = Assert.Throws<UserInputException>(() => spoil(Tiny()).Validate("phi3/config.json"));
        Assert.Contains(expected, e.Message);
        Assert.StartsWith("phi3/config.json", e.Message);
        Assert.False(string.IsNullOrEmpty(name));
    }

    [Fact]
    public void OldSuName_IsLongRope_AndTheConfigSurvivesJson()
    {
        using var a = TinyModels.Build(Tiny(kind: "su"), seed: 4);
        using var b = TinyModels.Build(Tiny(), seed: 4);
        long[] ids = Enumerable.Range(3, 30).Select(i => (long)i).ToArray();
        using var la = Logits(a, ids);
        using var lb = Logits(b, ids);
        Assert.Equal(0f, (la - lb).abs().max().item<float>());
        // Through config.json: the factors and the root's original context come back; rope_scaling gains no llama3 default.
        string json = Tiny().ToJson();
        Assert.DoesNotContain("8192", json);
        var back = System.Text.Json.JsonSerializer.Deserialize<ModelConfig>(json, ModelConfig.JsonOptions)!;
        Assert.Equal(Long, back.RopeScaling!.LongFactor);
        Assert.Equal(16, back.Extra<int?>("original_max_position_embeddings"));
        Assert.Null(back.RopeScaling.OriginalMaxPositionEmbeddingsRaw);
    }

    [Fact]
    public void PartialRotary_RotatesTheHeadStartAndPassesTheRestThrough()
    {
        using var x = torch.randn(1, 2, 3, 8);
        var ang = torch.rand(1, 3, 2);
        using var cos = torch.cat(new[] { ang, ang }, -1).cos();
        using var sin = torch.cat(new[] { ang, ang }, -1).sin();
        using var y = Rotary.Apply(x, cos, sin);
        Assert.Equal(0f, (y.narrow(-1, 4, 4) - x.narrow(-1, 4, 4)).abs().max().item<float>());
        // The rotated dims: pair (i, i + 2) turns by the angle: y_i = x_i cos − x_{i+2} sin.
        using var expected = x.narrow(-1, 0, 2) * ang.cos().unsqueeze(1) - x.narrow(-1, 2, 2) * ang.sin().unsqueeze(1);
        Assert.True((y.narrow(-1, 0, 2) - expected).abs().max().item<float>() < 1e-6);
    }

    [Fact]
    public void RoLoraRotation_KeepsTheLogits()
    {
        var c = Tiny(tied: true);
        using var model = TinyModels.Build(c, seed: 6);
        var (rotated, cfg, warnings) = RoLoraRotation.Rotate(c, Weights(model), seed: 2);
        Assert.Empty(warnings);
        using var r = ModelFamilies.CreateCausalLM(cfg, null, ScalarType.Float32, CPU);
        r.LoadWeights(n => rotated[n]);
        RoLoraRotation.ApplyOnline(r);
        long[] ids = TinyModels.RandomIds(1, 24, c.VocabSize, 8).data<long>().ToArray();
        using var a = Logits(model, ids);
        using var b = Logits(r, ids);
        Assert.True((a - b).abs().max().item<float>() < 1e-4, $"rotated vs original {(a - b).abs().max().item<float>()}");
        Assert.True((Weights(model)["model.layers.0.self_attn.qkv_proj.weight"] - rotated["model.layers.0.self_attn.qkv_proj.weight"]).abs().max().item<float>() > 1e-2);
        foreach (var t in rotated.Values) t.Dispose();
    }

    [Fact]
    public void Presets_HaveThePublishedShapes()
    {
        var phi4 = ModelPresets.Get("phi-4-mini");
        Assert.Equal(3_836_021_760L, ModelPresets.ParameterCount(phi4)); // ≈ 3.836e9, tied
        Assert.Equal(96, Phi3Family.RotaryDim(phi4));
        var p = Rotary.LongRopeParameters(phi4, 96);
        Assert.Equal(4096, p.OriginalMaxPositions);
        Assert.Equal(Math.Sqrt(1 + Math.Log(32) / Math.Log(4096)), p.AttentionFactor, 12); // 1.190238, as published GGUFs carry
        var phi3 = ModelPresets.Get("phi-3-mini-4k");
        Assert.Equal(3_821_079_552L, ModelPresets.ParameterCount(phi3)); // ≈ 3.82e9, untied
        Assert.Equal(2047, phi3.SlidingWindow);
        using var m = ModelFamilies.CreateCausalLM(Tiny(window: 2047), null, ScalarType.Float32, CPU);
        Assert.All(m.Blocks, b => Assert.Equal(2047, b.SlidingWindow));
        Assert.Equal(m.ExpectedWeights().Keys.Order(StringComparer.Ordinal), m.state_dict().Keys.Order(StringComparer.Ordinal));
    }
}
