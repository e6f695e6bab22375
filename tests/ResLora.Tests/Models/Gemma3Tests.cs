using System.Text.Json.Nodes;
using ResLora.Adapters;
using ResLora.Demo;
using ResLora.Models;
using ResLora.Models.Gemma3;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>
/// Gemma 3 text (gemma3_text): logits against the independent plain-tensor reference, the layer pattern and its two rotary
/// bases, KV-cache generation, merged adapters, the tied-by-default head, presets, GGUF names, and every refusal.
/// </summary>
[Collection("console")]
public sealed class Gemma3Tests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-gemma3-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>
    /// A tiny Gemma 3: 6 layers, period 3 (layers 2 and 5 global), window 5 (shorter than the test sequences), head_dim 16 ≠
    /// hidden/heads (8), GQA 4:2, query_pre_attn_scalar 24 ≠ head_dim, global base 1e6 and local base 100, tied head.
    /// </summary>
    internal static ModelConfig Tiny(int vocab = 64, int pattern = 3, double scalar = 24, double localBase = 100) =>
        (TinyModels.Config(tied: true, vocab: vocab) with
        {
            ModelType = "gemma3_text",
            Architectures = new[] { "Gemma3ForCausalLM" },
            NumHiddenLayers = 6,
            HeadDimRaw = 16,
            SlidingWindow = 5,
            RopeTheta = 1e6,
        })
        .WithExtra("hidden_activation", "gelu_pytorch_tanh")
        .WithExtra("query_pre_attn_scalar", scalar)
        .WithExtra("rope_local_base_freq", localBase)
        .WithExtra("sliding_window_pattern", pattern);

    /// <summary>
    /// <see cref="TinyModels.Build"/> with Gemma's norm weights redrawn around 0 (uniform ±0.25): Gemma stores 1 + w offsets,
    /// so TinyModels' draws around 1 would double every norm's scale, far from real checkpoints.
    /// </summary>
    internal static CausalLM Build(ModelConfig c, long seed, ScalarType dtype = ScalarType.Float32) => CenterNorms(TinyModels.Build(c, seed, dtype: dtype), seed);

    /// <summary>Redraws <paramref name="model"/>'s norm weights uniformly in ±0.25 (Gemma's 1 + w offsets); returns it.</summary>
    internal static CausalLM CenterNorms(CausalLM model, long seed)
    {
        using var noGrad = torch.no_grad();
        using var gen = new torch.Generator((ulong)seed + 2000);
        foreach (var (name, p) in model.BaseParameters())
            if (name.EndsWith("norm.weight", StringComparison.Ordinal))
            {
                using var r = torch.rand(p.shape, generator: gen) * 0.5 - 0.25;
                p.copy_(r.to(p.dtype));
            }
        return model;
    }

    private static readonly long[] Ids = { 1, 5, 9, 33, 12, 60, 4, 4, 17, 2, 40, 7, 7, 21 };

    public static TheoryData<string> Variants => new() { "pattern", "layer-types", "linear-rope-bias-untied" };

    private static ModelConfig Variant(string name) => name switch
    {
        "pattern" => Tiny(),
        "layer-types" => Tiny().WithExtra("layer_types", new[] { "full_attention", "sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention" }),
        "linear-rope-bias-untied" => Tiny() with { RopeScaling = new RopeScaling { RopeType = "linear", Factor = 2 }, AttentionBias = true, TieWordEmbeddings = false },
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [MemberData(nameof(Variants))]
    public void Logits_MatchTheIndependentReference(string variant)
    {
        var c = Variant(variant);
        using var model = Build(c, seed: 7);
        using var input = torch.tensor(Ids).unsqueeze(0);
        using var ours = model.forward(input)[0];
        var weights = model.BaseParameters().ToDictionary(kv => kv.Key, kv => (Tensor)kv.Value);
        using var reference = ReferenceGemma3.Logits(c, weights, Ids);
        float diff = (ours - reference).abs().max().item<float>();
        float scale = reference.abs().max().item<float>();
        Assert.True(diff <= 1e-5, $"{variant}: max |ours - reference| = {diff}, max |logit| = {scale}");
        Assert.True(reference.abs().max().item<float>() > 0.5, "logits too small to compare");
    }

    [Fact]
    public void LayerPattern_SlidingLayersTakeTheWindowAndTheLocalRotary()
    {
        using var model = TinyModels.Build(Tiny(), seed: 1);
        Assert.Equal(new int?[] { 5, 5, null, 5, 5, null }, model.Blocks.Select(b => b.SlidingWindow).ToArray());
        Assert.Equal(new[] { 1, 1, 0, 1, 1, 0 }, model.Blocks.Select(b => b.RotaryIndex).ToArray());
        // transformers' default period is 6: only layer 5 is global.
        using var six = TinyModels.Build(Tiny().WithExtra("sliding_window_pattern", null), seed: 1);
        Assert.Equal(new int?[] { 5, 5, 5, 5, 5, null }, six.Blocks.Select(b => b.SlidingWindow).ToArray());
    }

    [Fact]
    public void LocalBase_And_Window_ChangeTheLogits()
    {
        // Guards the reference test against features that happen not to matter at this size.
        using var input = torch.tensor(Ids).unsqueeze(0);
        using var a = TinyModels.Build(Tiny(), seed: 3);
        using var b = TinyModels.Build(Tiny(localBase: 1e6), seed: 3);
        using var w = TinyModels.Build(Tiny() with { SlidingWindow = 64 }, seed: 3);
        using var la = a.forward(input);
        using var lb = b.forward(input);
        using var lw = w.forward(input);
        Assert.True((la - lb).abs().max().item<float>() > 1e-3);
        Assert.True((la - lw).abs().max().item<float>() > 1e-3);
    }

    [Fact]
    public void KvCachedForward_EqualsFullForward_PastTheWindow()
    {
        var c = Tiny();
        using var model = TinyModels.Build(c, seed: 11);
        model.eval();
        using var ids = TinyModels.RandomIds(2, 12, c.VocabSize, 5);
        using var full = model.forward(ids);
        using var cache = new KvCache(c.NumHiddenLayers);
        using var first = model.Forward(ids.narrow(1, 0, 6), null, cache);
        using var second = model.Forward(ids.narrow(1, 6, 1), null, cache);
        using var rest = model.Forward(ids.narrow(1, 7, 5), null, cache);
        Assert.Equal(12, cache.Length);
        float d1 = (first - full.narrow(1, 0, 6)).abs().max().item<float>();
        float d2 = (second - full.narrow(1, 6, 1)).abs().max().item<float>();
        float d3 = (rest - full.narrow(1, 7, 5)).abs().max().item<float>();
        // The cached and full forwards sum in different orders (one position against a masked square): float32 rounding
        // reaches 1.0e-5 on an AMD EPYC (AVX-512) here and less on Intel; a wrong window or rotary offset is ≥ 1e-3.
        Assert.True(d1 < 5e-5 && d2 < 5e-5 && d3 < 5e-5, $"cached vs full: {d1:e2}, {d2:e2}, {d3:e2}");
    }

    [Theory]
    [InlineData("lora")]
    [InlineData("dora")]
    public void MergedAdapter_EqualsUnmergedForward(string method)
    {
        var c = Tiny();
        using var baseModel = TinyModels.Build(c, seed: 4);
        var cfg = AdapterMethods.Build(new MethodSpec { Method = method, Rank = 4, Alpha = 8, Targets = ModuleTargets.AllLinear, TotalSteps = 10 }).Config;
        using var gen = new torch.Generator(9);
        using var m = ModelFamilies.CreateCausalLM(c, new AdapterPlan(cfg, gen), ScalarType.Float32, CPU);
        var weights = baseModel.BaseParameters();
        m.LoadWeights(name => weights[name]);
        AdapterModel.OnBaseWeightsLoaded(m);
        var adapters = AdapterModel.FindAdapters(m);
        Assert.Equal(6 * 7, adapters.Count); // q, k, v, o, gate, up, down in every layer
        using (torch.no_grad())
            foreach (var (_, a) in adapters)
                foreach (var p in a.TrainableParameters) p.add_(torch.randn(p.shape, generator: gen) * 0.2);
        m.eval();
        using var input = torch.tensor(Ids).unsqueeze(0);
        using var unmerged = m.forward(input);
        using var plain = baseModel.forward(input);
        AdapterModel.MergeAll(m);
        using var merged = m.forward(input);
        Assert.True((unmerged - plain).abs().max().item<float>() > 1e-2, "the adapter must change the model");
        Assert.True((merged - unmerged).abs().max().item<float>() < 1e-4, $"{method}: merged vs unmerged");
    }

    [Fact]
    public void TieWordEmbeddings_AbsentMeansTied_AndStaysAbsentWhenSaved()
    {
        string model = Path.Combine(_dir, "m");
        var c = Tiny(vocab: DemoTokenizerFiles.VocabSize);
        using (var built = TinyModels.Build(c, seed: 2))
            ModelFolder.Save(model, c, built.BaseParameters().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)));
        string path = Path.Combine(model, "config.json");
        var node = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        node.Remove("tie_word_embeddings");
        File.WriteAllText(path, node.ToJsonString());
        var read = ModelFolder.LoadConfig(model);
        Assert.Null(read.TieWordEmbeddingsRaw);
        Assert.True(read.TieWordEmbeddings);
        Assert.DoesNotContain("lm_head.weight", read.ExpectedWeightsOf());
        Assert.DoesNotContain("tie_word_embeddings", read.ToJson());
        Assert.Contains("lm_head.weight", (read with { TieWordEmbeddings = false }).ExpectedWeightsOf());
        // Llama's default stays untied.
        Assert.False((read with { ModelType = "llama", TieWordEmbeddingsRaw = null }).TieWordEmbeddings);
    }

    [Theory]
    [InlineData("gemma-3-1b", 999_885_952L, 26)]
    [InlineData("gemma-3-270m", 268_098_176L, 18)]
    public void Presets_HaveThePublishedParameterCounts(string name, long expected, int layers)
    {
        var c = ModelPresets.Get(name);
        Assert.Equal("gemma3_text", c.ModelType);
        Assert.True(c.TieWordEmbeddings);
        Assert.Equal(layers, c.NumHiddenLayers);
        Assert.Equal(expected, ModelPresets.ParameterCount(c));
    }

    [Fact]
    public void GgufNames_MapEveryWeight_AndShiftNormsByOne()
    {
        var c = Tiny() with { AttentionBias = true };
        var names = Gemma3Family.Instance.Gguf(c);
        Assert.Equal("gemma3", names.Architecture);
        Assert.False(names.PermuteQk);
        foreach (var hf in Gemma3Family.Instance.ExpectedWeights(c).Keys)
        {
            string gg = names.ToGguf(hf) ?? throw new Xunit.Sdk.XunitException($"no GGUF name for {hf}");
            Assert.Equal(hf, names.ToHf(gg));
        }
        Assert.Equal("blk.3.ffn_norm.weight", names.ToGguf("model.layers.3.pre_feedforward_layernorm.weight"));
        Assert.Equal("blk.3.post_ffw_norm.weight", names.ToGguf("model.layers.3.post_feedforward_layernorm.weight"));
        Assert.Equal("blk.3.post_attention_norm.weight", names.ToGguf("model.layers.3.post_attention_layernorm.weight"));
        Assert.Equal("blk.0.attn_k_norm.weight", names.ToGguf("model.layers.0.self_attn.k_norm.weight"));
        Assert.Equal(new[] { 1.25f, 0f }, names.ToGgufValues!("model.layers.0.self_attn.q_norm.weight", new[] { 0.25f, -1f }));
        Assert.Equal(new[] { 0.25f, -1f }, names.FromGgufValues!("model.norm.weight", new[] { 1.25f, 0f }));
        Assert.Equal(new[] { 0.25f }, names.ToGgufValues!("model.layers.0.mlp.up_proj.weight", new[] { 0.25f }));
        Assert.Equal(3, Gemma3Gguf.PeriodOf(new[] { true, true, false, true, true, false }));
        Assert.Equal(4, Gemma3Gguf.PeriodOf(new[] { true, true, true })); // no global layer: any period past the last layer
        Assert.Null(Gemma3Gguf.PeriodOf(new[] { false, true, true, false, true, false }));
    }

    public static TheoryData<string, string> BadConfigs => new()
    {
        { "head_dim", "'head_dim' is missing" },
        { "num_key_value_heads", "'num_key_value_heads' is missing" },
        { "sliding_window", "'sliding_window' is missing" },
        { "window-0", "'sliding_window' must be a positive" },
        { "final_logit_softcapping", "'final_logit_softcapping' is 30" },
        { "attn_logit_softcapping", "'attn_logit_softcapping' is 50" },
        { "activation", "'hidden_activation' is 'gelu'" },
        { "hidden_act-silu-ok", "" },
        { "layer_types-length", "'layer_types' has 2 entries but 'num_hidden_layers' is 6" },
        { "layer_types-value", "'layer_types'[1] is 'chunked_attention'" },
        { "pattern", "'sliding_window_pattern' must be a positive integer, got 0" },
        { "scalar", "'query_pre_attn_scalar' must be > 0" },
        { "rope-kind", "'rope_scaling.rope_type' 'yarn' is not supported for gemma3_text" },
        { "rope_parameters", "'rope_parameters'" },
        { "bidirectional", "'use_bidirectional_attention' is true" },
    };

    [Theory]
    [MemberData(nameof(BadConfigs))]
    public void BadConfig_IsRefused_NamingTheField(string mutation, string expected)
    {
        var c = Tiny();
        c = mutation switch
        {
            "head_dim" => c with { HeadDimRaw = null },
            "num_key_value_heads" => c with { NumKeyValueHeadsRaw = null },
            "sliding_window" => c with { SlidingWindow = null },
            "window-0" => c with { SlidingWindow = 0 },
            "final_logit_softcapping" => c.WithExtra("final_logit_softcapping", 30.0),
            "attn_logit_softcapping" => c.WithExtra("attn_logit_softcapping", 50.0),
            "activation" => c.WithExtra("hidden_activation", "gelu"),
            "hidden_act-silu-ok" => c.WithExtra("hidden_activation", null) with { HiddenAct = "silu" }, // transformers ignores hidden_act: gelu_pytorch_tanh
            "layer_types-length" => c.WithExtra("layer_types", new[] { "sliding_attention", "full_attention" }),
            "layer_types-value" => c.WithExtra("layer_types", new[] { "sliding_attention", "chunked_attention", "full_attention", "sliding_attention", "sliding_attention", "full_attention" }),
            "pattern" => c.WithExtra("sliding_window_pattern", 0),
            "scalar" => c.WithExtra("query_pre_attn_scalar", -1.0),
            "rope-kind" => c with { RopeScaling = new RopeScaling { RopeType = "yarn", Factor = 4 } },
            "rope_parameters" => c.WithExtra("rope_parameters", new { full_attention = new { rope_theta = 1e6 } }),
            "bidirectional" => c.WithExtra("use_bidirectional_attention", true),
            _ => throw new ArgumentException(mutation),
        };
        if (expected.Length == 0)
        {
            c.Validate("cfg.json");
            return;
        }
        var e = Assert.Throws<UserInputException>(() => c.Validate("cfg.json"));
        Assert.StartsWith("cfg.json: ", e.Message);
        Assert.Contains(expected, e.Message);
    }

    /// <summary>A Gemma 3 folder the CLI can load (demo tokenizer, the tiny config at its vocabulary).</summary>
    private string Folder(string name)
    {
        string model = Path.Combine(_dir, name);
        var c = Tiny(vocab: DemoTokenizerFiles.VocabSize);
        using (var built = TinyModels.Build(c, seed: 2))
            ModelFolder.Save(model, c, built.BaseParameters().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)));
        DemoTokenizerFiles.Write(model);
        return model;
    }

    [Fact]
    public void MultimodalFolder_IsRefused_SayingHowToGetTheTextModel()
    {
        string model = Folder("mm");
        string path = Path.Combine(model, "config.json");
        var text = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        var mm = new JsonObject
        {
            ["architectures"] = new JsonArray("Gemma3ForConditionalGeneration"),
            ["model_type"] = "gemma3",
            ["text_config"] = text.DeepClone(),
            ["vision_config"] = new JsonObject { ["model_type"] = "siglip_vision_model" },
        };
        File.WriteAllText(path, mm.ToJsonString());
        foreach (var args in new[] { new[] { "inspect", "--model", model }, new[] { "generate", "--model", model, "--prompt", "hi" } })
        {
            var r = CliHarness.Run(args);
            Assert.True(r.Rc == 2, $"{args[0]}: rc {r.Rc}\n{r.Err}");
            Assert.Contains("vision part is not supported", r.Err);
            Assert.Contains("gemma3_text", r.Err);
            Assert.Contains("language_model.model.", r.Err);
            Assert.DoesNotContain("   at ", r.Err);
        }
    }

    [Fact]
    public void RoLoraTraining_IsRefused_ForThePostNorms()
    {
        string model = Folder("rolora");
        string data = CliHarness.Data(Path.Combine(_dir, "d.jsonl"), 8, 1);
        var r = CliHarness.Run(new[] { "train", "--model", model, "--data", data, "--method", "rolora", "--steps", "2", "--out", Path.Combine(_dir, "o") }.Concat(CliHarness.Templates).ToArray());
        Assert.True(r.Rc == 2, $"rc {r.Rc}\n{r.Out}\n{r.Err}");
        Assert.Contains("RoLoRA's rotation is not available for model_type 'gemma3_text'", r.Err);
        Assert.Contains("post_attention_layernorm", r.Err);
        Assert.False(Directory.Exists(Path.Combine(_dir, "o", "adapter_model.safetensors")));
    }
}

internal static class Gemma3TestExtensions
{
    public static IReadOnlyCollection<string> ExpectedWeightsOf(this ModelConfig c) => ModelFamilies.ExpectedWeights(c).Keys.ToList();
}
