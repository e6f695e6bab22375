using ResLora.Models;

namespace ResLora.Tests.Models;

/// <summary>The shape presets hold the real checkpoints' config.json values: pinned by their published parameter counts.</summary>
public sealed class ModelPresetsTests
{
    [Fact]
    public void Names_ListEveryEmbeddedPreset()
    {
        Assert.Equal(new[] { "gemma-3-1b", "gemma-3-270m", "llama-3.2-1b", "phi-3-mini-4k", "phi-4-mini", "qwen2.5-0.5b", "qwen3-0.6b", "smollm2-135m", "smollm3-3b", "tinyllama-1.1b" }, ModelPresets.Names);
    }

    [Theory]
    // Parameter counts as the checkpoints report them (sum of numel over the stored tensors; tied heads once).
    [InlineData("tinyllama-1.1b", 1_100_048_384L, false)]
    [InlineData("llama-3.2-1b", 1_235_814_400L, true)]
    [InlineData("qwen2.5-0.5b", 494_032_768L, true)]
    [InlineData("smollm2-135m", 134_515_008L, true)]
    // Qwen3-0.6B: 0.44 B outside the embedding (its model card), 151,936 × 1,024 tied embedding, q/k norms of head_dim 128.
    [InlineData("qwen3-0.6b", 596_049_920L, true)]
    public void Preset_HasThePublishedParameterCount(string name, long parameters, bool tied)
    {
        var c = ModelPresets.Get(name);
        Assert.Equal(parameters, ModelPresets.ParameterCount(c));
        Assert.Equal(tied, c.TieWordEmbeddings);
    }

    [Fact]
    public void Qwen_HasQkvBiasesAndItsRopeTheta()
    {
        var c = ModelPresets.Get("Qwen2.5-0.5B");
        Assert.True(c.HasQkvBias);
        Assert.Equal(1_000_000.0, c.RopeTheta);
        Assert.Equal(1e-6, c.RmsNormEps);
        Assert.Contains("model.layers.0.self_attn.k_proj.bias", ModelFamilies.ExpectedWeights(c).Keys);
    }

    [Fact]
    public void Llama32_UsesLlama3RopeScaling()
    {
        var c = ModelPresets.Get("llama-3.2-1b");
        Assert.Equal("llama3", c.RopeScaling!.Kind);
        Assert.Equal(32.0, c.RopeScaling.Factor);
        Assert.Equal(500_000.0, c.RopeTheta);
    }

    [Fact]
    public void Get_UnknownName_ListsThePresets()
    {
        var e = Assert.Throws<UserInputException>(() => ModelPresets.Get("llama-7b"));
        Assert.Contains("tinyllama-1.1b", e.Message, StringComparison.Ordinal);
    }
}
