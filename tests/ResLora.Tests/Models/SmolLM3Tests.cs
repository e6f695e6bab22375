using System.Text.Json;
using ResLora.Models;
using ResLora.Models.SmolLM3;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>SmolLM3: layers without rotary (NoPE), its window rule, tied-by-default embeddings, config checks, the 3B preset.</summary>
public sealed class SmolLM3Tests
{
    /// <summary>A tiny SmolLM3: 4 layers, so the default interval (4) makes layer 3 a NoPE layer; GQA; tied.</summary>
    internal static ModelConfig Tiny() => TinyModels.Config(tied: true) with { ModelType = "smollm3", NumHiddenLayers = 4 };

    private static readonly long[] Ids = { 1, 5, 9, 33, 12, 60, 4, 4, 17, 2, 40, 7, 7, 21 };

    private static Tensor Logits(CausalLM model, long[] ids)
    {
        using var input = torch.tensor(ids).unsqueeze(0);
        using var _ = torch.no_grad();
        return model.forward(input)[0];
    }

    private static float MaxDiffToReference(ModelConfig c, long seed)
    {
        using var model = TinyModels.Build(c, seed);
        using var ours = Logits(model, Ids);
        var weights = model.BaseParameters().ToDictionary(kv => kv.Key, kv => (Tensor)kv.Value);
        using var reference = ReferenceLlama.Logits(c, weights, Ids);
        return (ours - reference).abs().max().item<float>();
    }

    [Fact]
    public void RopeLayers_FollowTheListOrTheInterval()
    {
        Assert.Equal(new[] { true, true, true, false }, SmolLM3Family.RopeLayers(Tiny()));
        Assert.Equal(new[] { true, false, true, false }, SmolLM3Family.RopeLayers(Tiny().WithExtra("no_rope_layer_interval", 2)));
        // The list wins over the interval; a longer list is read up to num_hidden_layers (transformers does the same).
        var listed = Tiny().WithExtra("no_rope_layer_interval", 2).WithExtra("no_rope_layers", new[] { 0, 1, 1, 1, 0, 0 });
        Assert.Equal(new[] { false, true, true, true }, SmolLM3Family.RopeLayers(listed));
    }

    [Theory]
    [InlineData(null)]
    [InlineData(new[] { 0, 1, 0, 1 })]
    public void Logits_MatchTheIndependentReference_WithNoRopeLayers(int[]? noRopeLayers)
    {
        var c = noRopeLayers is null ? Tiny() : Tiny().WithExtra("no_rope_layers", noRopeLayers);
        float diff = MaxDiffToReference(c, 7);
        Assert.True(diff < 1e-5, $"max |ours - reference| = {diff}");
        // The switch is live: the same weights with rotary on every layer give other logits.
        using var nope = TinyModels.Build(c, seed: 7);
        using var rope = TinyModels.Build(c.WithExtra("no_rope_layers", new[] { 1, 1, 1, 1 }), seed: 7);
        using var a = Logits(nope, Ids);
        using var b = Logits(rope, Ids);
        Assert.True((a - b).abs().max().item<float>() > 1e-3, "NoPE layers must change the logits");
    }

    [Fact]
    public void ANoRopeLayer_SeesTheSetOfEarlierTokens_NotTheirOrder()
    {
        // One layer without rotary: the query at position p ≥ 2 attends to the same keys and values whether tokens 0 and 1
        // are swapped or not (softmax over a set), so its logits are unchanged; with rotary the scores depend on distance.
        // (With more causal layers the earlier positions' hidden states differ and order leaks through the mask.)
        long[] swapped = (long[])Ids.Clone();
        (swapped[0], swapped[1]) = (swapped[1], swapped[0]);
        var one = Tiny() with { NumHiddenLayers = 1 };
        using var nope = TinyModels.Build(one.WithExtra("no_rope_layers", new[] { 0 }), seed: 4);
        using var a = Logits(nope, Ids).narrow(0, 2, Ids.Length - 2);
        using var b = Logits(nope, swapped).narrow(0, 2, Ids.Length - 2);
        Assert.True((a - b).abs().max().item<float>() < 1e-5);
        using var rope = TinyModels.Build(one.WithExtra("no_rope_layers", new[] { 1 }), seed: 4);
        using var c = Logits(rope, Ids).narrow(0, 2, Ids.Length - 2);
        using var d = Logits(rope, swapped).narrow(0, 2, Ids.Length - 2);
        Assert.True((c - d).abs().max().item<float>() > 1e-3);
    }

    [Fact]
    public void SlidingWindow_IsOnTheNoRopeLayers_OrWhereLayerTypesSay()
    {
        var derived = Tiny() with { UseSlidingWindow = true, SlidingWindow = 3 };
        using (var m = TinyModels.Build(derived, seed: 2))
            Assert.Equal(new int?[] { null, null, null, 3 }, m.Blocks.Select(b => b.SlidingWindow).ToArray());
        Assert.True(MaxDiffToReference(derived, 2) < 1e-5);
        var typed = derived.WithExtra("layer_types", new[] { "sliding_attention", "full_attention", "sliding_attention", "full_attention" });
        using (var m = TinyModels.Build(typed, seed: 2))
            Assert.Equal(new int?[] { 3, null, 3, null }, m.Blocks.Select(b => b.SlidingWindow).ToArray());
        Assert.True(MaxDiffToReference(typed, 2) < 1e-5);
        // Without use_sliding_window no layer is windowed, whatever layer_types says (modeling_smollm3.py).
        using (var m = TinyModels.Build(typed with { UseSlidingWindow = false }, seed: 2))
            Assert.All(m.Blocks, b => Assert.Null(b.SlidingWindow));
    }

    [Fact]
    public void CachedForward_EqualsTheFullOne_WithNoRopeAndWindowedLayers()
    {
        var c = Tiny() with { UseSlidingWindow = true, SlidingWindow = 3 };
        using var model = TinyModels.Build(c, seed: 11);
        model.eval();
        using var ids = TinyModels.RandomIds(1, 12, c.VocabSize, 5);
        using var _ = torch.no_grad();
        using var full = model.forward(ids);
        using var cache = new KvCache(c.NumHiddenLayers);
        using var first = model.Forward(ids.narrow(1, 0, 5), null, cache);
        Assert.True((first - full.narrow(1, 0, 5)).abs().max().item<float>() < 1e-5);
        for (int p = 5; p < 12; p++)
        {
            using var step = model.Forward(ids.narrow(1, p, 1), null, cache);
            Assert.True((step - full.narrow(1, p, 1)).abs().max().item<float>() < 1e-5, $"position {p}");
        }
    }

    [Theory]
    [InlineData("no_rope_layers", new[] { 1, 1, 0 }, "3 entries")]
    [InlineData("no_rope_layers", new[] { 1, 2, 1, 0 }, "entry 1 is 2")]
    [InlineData("no_rope_layers", new[] { 1, -1, 1, 0 }, "entry 1 is -1")]
    [InlineData("no_rope_layer_interval", 0, "positive")]
    [InlineData("layer_types", new[] { "full_attention", "local" }, "2 entries")]
    [InlineData("layer_types", new[] { "full_attention", "local", "full_attention", "full_attention" }, "'local'")]
    [InlineData("no_rope_layers", "1,1,1,0", "must be a list of integers, got \"1,1,1,0\"")]
    public void BadNoRopeSettings_AreRefusedNamingTheField(string field, object value, string says)
    {
        var e = Assert.Throws<UserInputException>(() => Tiny().WithExtra(field, value).Validate("m/config.json"));
        Assert.Contains("m/config.json", e.Message);
        Assert.Contains($"'{field}'", e.Message);
        Assert.Contains(says, e.Message);
    }

    [Fact]
    public void ConfigWithoutTieWordEmbeddings_IsTiedForSmolLM3_AndUntiedForLlama()
    {
        const string json = """{"model_type": "smollm3", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2}""";
        var c = JsonSerializer.Deserialize<ModelConfig>(json, ModelConfig.JsonOptions)!;
        Assert.True(c.TieWordEmbeddings);
        Assert.DoesNotContain("lm_head.weight", ModelFamilies.ExpectedWeights(c).Keys);
        Assert.False((c with { ModelType = "llama" }).TieWordEmbeddings);
        Assert.False((c with { TieWordEmbeddings = false }).TieWordEmbeddings);
        Assert.Contains("lm_head.weight", ModelFamilies.ExpectedWeights(c with { TieWordEmbeddings = false }).Keys);
        // An absent field stays absent when the config is written back, so the family default holds on reload.
        Assert.DoesNotContain("tie_word_embeddings", c.ToJson());
    }

    [Fact]
    public void Preset3B_HasThePublishedShapeAndParameterCount()
    {
        var c = ModelPresets.Get("smollm3-3b");
        // 128,256 × 2,048 tied embedding + 36 × (q 2048² + k, v 512 × 2048 + o 2048² + 3 × 11,008 × 2,048 + 2 norms) + norm.
        long perLayer = 2L * 2048 * 2048 + 2L * 512 * 2048 + 3L * 11008 * 2048 + 2 * 2048;
        Assert.Equal(128256L * 2048 + 36 * perLayer + 2048, ModelPresets.ParameterCount(c));
        Assert.Equal(3_075_098_624L, ModelPresets.ParameterCount(c));
        Assert.True(c.TieWordEmbeddings);
        Assert.Equal(5_000_000.0, c.RopeTheta);
        Assert.Equal(65536, c.MaxPositionEmbeddings);
        var rope = SmolLM3Family.RopeLayers(c);
        Assert.Equal(9, rope.Count(r => !r));
        Assert.False(rope[3]);
        Assert.False(rope[35]);
        Assert.True(rope[34]);
        Assert.Equal("smollm3", ModelFamilies.ForCausalLM(c.ModelType).Gguf(c).Architecture);
    }

    [Fact]
    public void GgufNames_RefuseWhatLlamaCppHardCodesDifferently()
    {
        var family = ModelFamilies.ForCausalLM("smollm3");
        var names = family.Gguf(Tiny());
        Assert.True(names.PermuteQk);
        Assert.All(family.ExpectedWeights(Tiny()).Keys, k => Assert.NotNull(names.ToGguf(k)));
        var e = Assert.Throws<UserInputException>(() => family.Gguf(Tiny().WithExtra("no_rope_layers", new[] { 1, 0, 1, 1 })));
        Assert.Contains("'no_rope_layers'", e.Message);
        Assert.Contains("layer 1", e.Message);
        e = Assert.Throws<UserInputException>(() => family.Gguf(Tiny().WithExtra("no_rope_layer_interval", 2)));
        Assert.Contains("'no_rope_layers'", e.Message);
        // The same pattern spelled out as a list is exportable.
        Assert.Equal("smollm3", family.Gguf(Tiny().WithExtra("no_rope_layers", new[] { 1, 1, 1, 0 })).Architecture);
        e = Assert.Throws<UserInputException>(() => family.Gguf(Tiny() with { UseSlidingWindow = true, SlidingWindow = 3 }));
        Assert.Contains("sliding_window", e.Message);
    }
}
