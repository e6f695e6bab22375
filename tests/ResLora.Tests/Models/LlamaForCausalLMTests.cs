using ResLora.Models;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

public sealed class LlamaForCausalLMTests
{
    public static TheoryData<bool, int, bool> Variants => new()
    {
        { false, 2, false }, // untied, GQA 4 heads / 2 kv heads
        { true, 2, false },  // tied embeddings
        { false, 4, false }, // multi-head (no GQA)
        { false, 1, true },  // Qwen2-style q/k/v biases, multi-query
    };

    [Theory]
    [MemberData(nameof(Variants))]
    public void Logits_MatchIndependentReference(bool tied, int kvHeads, bool qkvBias)
    {
        var c = TinyModels.Config(tied, kvHeads, qkvBias);
        using var model = TinyModels.Build(c, seed: 7);
        long[] ids = { 1, 5, 9, 33, 12, 60, 4, 4, 17, 2, 40 };
        using var input = torch.tensor(ids).unsqueeze(0);
        using var ours = model.forward(input)[0];
        var weights = model.BaseParameters().ToDictionary(kv => kv.Key, kv => (Tensor)kv.Value);
        using var reference = ReferenceLlama.Logits(c, weights, ids);
        double diff = (ours - reference).abs().max().item<float>();
        Assert.True(diff < 1e-5, $"max |ours - reference| = {diff}");
    }

    [Theory]
    [InlineData("linear")]
    [InlineData("llama3")]
    public void Logits_WithRopeScaling_MatchTheReferenceAndDifferFromUnscaled(string kind)
    {
        var rope = new RopeScaling { RopeType = kind, Factor = 4, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 16 };
        var c = TinyModels.Config(rope: rope);
        using var model = TinyModels.Build(c, seed: 3);
        using var plain = TinyModels.Build(TinyModels.Config(), seed: 3);
        long[] ids = Enumerable.Range(3, 20).Select(i => (long)i).ToArray();
        using var input = torch.tensor(ids).unsqueeze(0);
        using var ours = model.forward(input)[0];
        using var unscaled = plain.forward(input)[0];
        var weights = model.BaseParameters().ToDictionary(kv => kv.Key, kv => (Tensor)kv.Value);
        using var reference = ReferenceLlama.Logits(c, weights, ids);
        Assert.True((ours - reference).abs().max().item<float>() < 1e-5);
        Assert.True((ours - unscaled).abs().max().item<float>() > 1e-3, "rope scaling must change positions' angles");
    }

    [Fact]
    public void InverseFrequencies_Llama3Scaling_FollowTheThreeBands()
    {
        // head_dim 32, theta 10000: wavelengths 2π·10000^(2i/32) = 6.3, 11.2, 19.9, … ~36,000. With original length 16,
        // low factor 1, high factor 2: wavelengths < 8 stay (i = 0), > 16 are divided by 8 (i ≥ 2), the band between is blended (i = 1).
        var c = TinyModels.Config() with { HiddenSize = 128, RopeScaling = new RopeScaling { RopeType = "llama3", Factor = 8, LowFreqFactor = 1, HighFreqFactor = 2, OriginalMaxPositionEmbeddings = 16 } };
        using var scaled = Rotary.InverseFrequencies(c);
        Assert.Equal(16, scaled.shape[0]);
        int kept = 0, divided = 0, blended = 0;
        for (int i = 0; i < 16; i++)
        {
            double f = 1.0 / Math.Pow(10000, 2.0 * i / 32), s = scaled[i].item<float>();
            double wavelen = 2 * Math.PI / f;
            if (wavelen < 8) { Assert.Equal(f, s, 6); kept++; }
            else if (wavelen > 16) { Assert.Equal(f / 8, s, 6); divided++; }
            else
            {
                double smooth = (16 / wavelen - 1) / (2 - 1);
                Assert.Equal((1 - smooth) * f / 8 + smooth * f, s, 5);
                blended++;
            }
        }
        Assert.Equal((1, 1, 14), (kept, blended, divided));
    }

    public static TheoryData<string, int, double[]> HandFrequencies => new()
    {
        // d = 4, θ = 10⁴: 1/θ^(0/4), 1/θ^(2/4) = [1, 0.01].
        { "default", 4, new[] { 1.0, 0.01 } },
        // d = 8: [1, 10⁻¹, 10⁻², 10⁻³].
        { "default", 8, new[] { 1.0, 0.1, 0.01, 0.001 } },
        // linear, factor 4: every frequency / 4.
        { "linear", 4, new[] { 0.25, 0.0025 } },
        // llama3, factor 8, low 1, high 4, original length 1000: wavelengths 2π·[1, 10, 100, 1000] = [6.3, 63, 628, 6283].
        // < 250 kept; > 1000 divided by 8; 628 is blended with s = (1000/(200π) − 1)/3: 0.01·((1 − s)/8 + s) = 0.0029753525.
        { "llama3", 8, new[] { 1.0, 0.1, 0.01 * (1 + 7 * ((5 / Math.PI - 1) / 3)) / 8, 0.001 / 8 } },
    };

    [Theory]
    [MemberData(nameof(HandFrequencies))]
    public void InverseFrequencies_SmallHeadDim_EqualHandComputedValues(string kind, int headDim, double[] expected)
    {
        var rope = kind == "default" ? null : new RopeScaling { RopeType = kind, Factor = kind == "linear" ? 4 : 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 1000 };
        var c = TinyModels.Config() with { HeadDimRaw = headDim, RopeTheta = 10000, RopeScaling = rope };
        Assert.Equal(headDim, c.HeadDim);
        using var ours = Rotary.InverseFrequencies(c);
        var reference = ReferenceLlama.InverseFrequencies(c);
        Assert.Equal(expected.Length, ours.shape[0]);
        Assert.Equal(expected.Length, reference.Length);
        if (kind == "llama3") Assert.Equal(0.0029753525, expected[2], 1e-10);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(Math.Abs(ours[i].item<float>() - expected[i]) <= 1e-6 * expected[i], $"Rotary [{i}]: {ours[i].item<float>()} vs {expected[i]}");
            Assert.True(Math.Abs(reference[i] - expected[i]) <= 1e-12 * expected[i], $"reference [{i}]: {reference[i]} vs {expected[i]}");
        }
    }

    [Fact]
    public void KvCachedForward_EqualsFullForward()
    {
        var c = TinyModels.Config();
        using var model = TinyModels.Build(c, seed: 11);
        model.eval();
        using var ids = TinyModels.RandomIds(2, 9, c.VocabSize, 5);
        using var full = model.forward(ids);
        using var cache = new KvCache(c.NumHiddenLayers);
        using var first = model.Forward(ids.narrow(1, 0, 5), null, cache);
        using var rest = model.Forward(ids.narrow(1, 5, 4), null, cache);
        Assert.Equal(9, cache.Length);
        Assert.True((first - full.narrow(1, 0, 5)).abs().max().item<float>() < 1e-5);
        Assert.True((rest - full.narrow(1, 5, 4)).abs().max().item<float>() < 1e-5);
    }

    [Fact]
    public void LeftPadding_GivesTheUnpaddedLogits()
    {
        var c = TinyModels.Config();
        using var model = TinyModels.Build(c, seed: 13);
        long[] row = { 1, 7, 8, 9, 10 };
        using var alone = model.forward(torch.tensor(row).unsqueeze(0));
        using var padded = torch.tensor(new long[] { 0, 0, 1, 7, 8, 9, 10 }).unsqueeze(0);
        using var mask = torch.tensor(new long[] { 0, 0, 1, 1, 1, 1, 1 }).unsqueeze(0);
        using var logits = model.forward(padded, mask);
        Assert.False(logits.isnan().any().item<bool>());
        Assert.True((logits.narrow(1, 2, 5) - alone).abs().max().item<float>() < 1e-5);
    }

    [Fact]
    public void StateDictKeys_AreHuggingFaces()
    {
        var c = TinyModels.Config(qkvBias: true);
        using var model = TinyModels.Build(c);
        var keys = model.state_dict().Keys.OrderBy(k => k, StringComparer.Ordinal).ToArray();
        var expected = ModelFamilies.ExpectedWeights(c).Keys.OrderBy(k => k, StringComparer.Ordinal).ToArray();
        Assert.Equal(expected, keys);
        Assert.Contains("model.layers.1.self_attn.q_proj.bias", keys);
        Assert.Contains("model.layers.0.mlp.down_proj.weight", keys);
        Assert.Equal(new long[] { 16, 32 }, ModelFamilies.ExpectedWeights(c)["model.layers.0.self_attn.k_proj.weight"]);
        using var tied = TinyModels.Build(TinyModels.Config(tied: true));
        Assert.DoesNotContain("lm_head.weight", tied.state_dict().Keys);
    }

    [Fact]
    public void BFloat16_RunsAndStaysCloseToFloat32()
    {
        var c = TinyModels.Config();
        using var f32 = TinyModels.Build(c, seed: 17);
        using var bf16 = TinyModels.Build(c, seed: 17, dtype: ScalarType.BFloat16);
        using var ids = TinyModels.RandomIds(1, 6, c.VocabSize, 2);
        using var a = f32.forward(ids);
        using var b = bf16.forward(ids);
        Assert.Equal(ScalarType.BFloat16, b.dtype);
        double scale = a.abs().max().item<float>();
        double diff = (a - b.to_type(ScalarType.Float32)).abs().max().item<float>();
        Assert.True(diff < 0.1 * scale, $"bf16 differs by {diff} (scale {scale})");
    }

    [Fact]
    public void Forward_KeepsLiveTensorCountFlat()
    {
        var c = TinyModels.Config();
        using var model = TinyModels.Build(c);
        using var ids = TinyModels.RandomIds(1, 8, c.VocabSize, 3);
        void Step()
        {
            using var scope = torch.NewDisposeScope();
            var loss = model.forward(ids).pow(2).mean();
            loss.backward();
            model.zero_grad();
        }
        Step();
        long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 5; i++) Step();
        Assert.Equal(before, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }
}
