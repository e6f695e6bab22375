using ResLora.Models;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>The family seam: Qwen3's per-head norms and explicit head_dim, Mistral's sliding window, the registry's refusals.</summary>
public sealed class ModelFamilyTests
{
    /// <summary>A tiny Qwen3: head_dim 12 ≠ hidden/heads (8), GQA, tied embeddings as in Qwen3-0.6B.</summary>
    internal static ModelConfig Qwen3(bool tied = true) => TinyModels.Config(tied: tied) with { ModelType = "qwen3", HeadDimRaw = 12 };

    /// <summary>A tiny Mistral whose window (4) is shorter than the test sequences.</summary>
    internal static ModelConfig Mistral(int? window = 4) => TinyModels.Config() with { ModelType = "mistral", SlidingWindow = window };

    private static float MaxDiffToReference(ModelConfig c, long seed, long[] ids)
    {
        using var model = TinyModels.Build(c, seed);
        using var input = torch.tensor(ids).unsqueeze(0);
        using var ours = model.forward(input)[0];
        var weights = model.BaseParameters().ToDictionary(kv => kv.Key, kv => (Tensor)kv.Value);
        using var reference = ReferenceLlama.Logits(c, weights, ids);
        return (ours - reference).abs().max().item<float>();
    }

    private static readonly long[] Ids = { 1, 5, 9, 33, 12, 60, 4, 4, 17, 2, 40, 7, 7, 21 };

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Qwen3_Logits_MatchTheIndependentReference(bool tied)
    {
        float diff = MaxDiffToReference(Qwen3(tied), 7, Ids);
        Assert.True(diff < 1e-5, $"max |ours - reference| = {diff}");
    }

    [Fact]
    public void Qwen3_HasPerHeadNormsOfHeadDim_AndTheyChangeTheLogits()
    {
        var c = Qwen3();
        var expected = ModelFamilies.ExpectedWeights(c);
        Assert.Equal(new long[] { 12 }, expected["model.layers.1.self_attn.q_norm.weight"]);
        Assert.Equal(new long[] { 12 }, expected["model.layers.0.self_attn.k_norm.weight"]);
        Assert.Equal(new long[] { 48, 32 }, expected["model.layers.0.self_attn.q_proj.weight"]); // 4 heads × 12
        Assert.Equal(new long[] { 32, 48 }, expected["model.layers.0.self_attn.o_proj.weight"]);
        using var model = TinyModels.Build(c, seed: 3);
        Assert.Equal(expected.Keys.OrderBy(k => k, StringComparer.Ordinal), model.BaseParameters().Keys.OrderBy(k => k, StringComparer.Ordinal));
        using var input = torch.tensor(Ids).unsqueeze(0);
        using var before = model.forward(input);
        using (torch.no_grad()) model.BaseParameters()["model.layers.0.self_attn.k_norm.weight"].mul_(3.0);
        using var after = model.forward(input);
        Assert.True((before - after).abs().max().item<float>() > 1e-3, "k_norm must take part in the forward");
        // The Llama family, given the same numbers, has no per-head norms.
        Assert.DoesNotContain(ModelFamilies.ExpectedWeights(c with { ModelType = "llama" }).Keys, k => k.Contains("q_norm"));
    }

    [Fact]
    public void Mistral_SlidingWindow_MatchesTheReferenceWithTheWindowApplied()
    {
        var c = Mistral(window: 4);
        float diff = MaxDiffToReference(c, 5, Ids);
        Assert.True(diff < 1e-5, $"max |ours - reference| = {diff}");
        // The window matters: beyond it the logits differ from full attention, within it they are the same.
        using var windowed = TinyModels.Build(c, seed: 5);
        using var full = TinyModels.Build(c with { SlidingWindow = null }, seed: 5);
        using var input = torch.tensor(Ids).unsqueeze(0);
        using var a = windowed.forward(input);
        using var b = full.forward(input);
        Assert.True((a.narrow(1, 0, 4) - b.narrow(1, 0, 4)).abs().max().item<float>() < 1e-6);
        Assert.True((a.narrow(1, 4, Ids.Length - 4) - b.narrow(1, 4, Ids.Length - 4)).abs().max().item<float>() > 1e-3);
    }

    [Fact]
    public void Mistral_SlidingWindow_CachedAndPaddedForwardsEqualTheFullOne()
    {
        var c = Mistral(window: 3);
        using var model = TinyModels.Build(c, seed: 11);
        model.eval();
        using var ids = TinyModels.RandomIds(1, 10, c.VocabSize, 5);
        using var full = model.forward(ids);
        using var cache = new KvCache(c.NumHiddenLayers);
        using var first = model.Forward(ids.narrow(1, 0, 6), null, cache);
        using var second = model.Forward(ids.narrow(1, 6, 1), null, cache);
        using var rest = model.Forward(ids.narrow(1, 7, 3), null, cache);
        Assert.True((first - full.narrow(1, 0, 6)).abs().max().item<float>() < 1e-5);
        Assert.True((second - full.narrow(1, 6, 1)).abs().max().item<float>() < 1e-5);
        Assert.True((rest - full.narrow(1, 7, 3)).abs().max().item<float>() < 1e-5);
        // Left padding: the same logits on the real tokens.
        using var padded = torch.cat(new[] { torch.zeros(1, 2, dtype: ScalarType.Int64), ids }, 1);
        using var mask = torch.cat(new[] { torch.zeros(1, 2, dtype: ScalarType.Int64), torch.ones(1, 10, dtype: ScalarType.Int64) }, 1);
        using var pl = model.forward(padded, mask);
        Assert.True((pl.narrow(1, 2, 10) - full).abs().max().item<float>() < 1e-5);
    }

    [Fact]
    public void Qwen2_UsesItsWindowOnlyWithUseSlidingWindow_FromMaxWindowLayersOn()
    {
        var off = TinyModels.Config(qkvBias: true) with { SlidingWindow = 3 };
        var on = off with { UseSlidingWindow = true, MaxWindowLayers = 1 };
        Assert.True(MaxDiffToReference(on, 9, Ids) < 1e-5);
        using var a = TinyModels.Build(off, seed: 9);
        using var b = TinyModels.Build(on, seed: 9);
        using var input = torch.tensor(Ids).unsqueeze(0);
        using var la = a.forward(input);
        using var lb = b.forward(input);
        Assert.True((la - lb).abs().max().item<float>() > 1e-4, "layer 1's window must change the logits");
        Assert.Null(a.Blocks[1].SlidingWindow);
        Assert.Null(b.Blocks[0].SlidingWindow);
        Assert.Equal(3, b.Blocks[1].SlidingWindow);
    }

    [Theory]
    [InlineData("gemma3", "not supported")]
    [InlineData("falcon", "not supported")]
    [InlineData("bert", "encoder")]
    public void UnknownOrEncoderModelType_IsRefusedUpFront_ListingTheFamilies(string modelType, string says)
    {
        var e = Assert.Throws<UserInputException>(() => (TinyModels.Config() with { ModelType = modelType }).Validate("x/config.json"));
        Assert.Contains("x/config.json", e.Message);
        Assert.Contains($"'{modelType}'", e.Message);
        Assert.Contains(says, e.Message);
        Assert.Contains("llama, mistral, qwen2, qwen3", e.Message);
    }

    [Fact]
    public void BadWindowSettings_AreRefusedNamingTheField()
    {
        Assert.Contains("'sliding_window'", Assert.Throws<UserInputException>(() => Mistral(window: 0).Validate()).Message);
        var e = Assert.Throws<UserInputException>(() => (TinyModels.Config(qkvBias: true) with { UseSlidingWindow = true }).Validate());
        Assert.Contains("use_sliding_window", e.Message);
    }

    [Fact]
    public void Registry_KnowsEachModelTypeOnce_AndEveryFamilyHasDefaults()
    {
        var types = ModelFamilies.All.SelectMany(f => f.ModelTypes).ToList();
        Assert.Equal(types.Count, types.Distinct().Count());
        Assert.All(ModelFamilies.All, f => Assert.NotEmpty(f.DefaultTargets));
        Assert.Equal("qwen3", ModelFamilies.Find("Qwen3")!.Name);
        Assert.Equal(ModelKind.Encoder, ModelFamilies.Find("xlm-roberta")!.Kind);
        Assert.Null(ModelFamilies.Find("gpt2"));
    }
}
