using System.Text.Json.Nodes;
using ResLora.IO;
using ResLora.Models;
using ResLora.Models.Deberta;
using ResLora.Models.Encoders;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>DeBERTa-v2/v3 against an independent plain-tensor forward, its keys, the v3-base shape and the config checks.</summary>
public sealed class DebertaTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-deberta-").FullName;

    public DebertaTests() => torch.set_num_threads(1);

    public void Dispose() => Directory.Delete(_dir, true);

    private static Tensor Ids(int rows, int length, int seed)
    {
        var rng = new Random(seed);
        var ids = new long[rows * length];
        for (int i = 0; i < ids.Length; i++) ids[i] = rng.Next(5, ResLora.Tests.Infrastructure.TinyEncoders.Vocab.Length);
        for (int r = 0; r < rows; r++) ids[r * length] = 2; // [CLS]
        return torch.tensor(ids, new long[] { rows, length });
    }

    private static Tensor Mask(int length, params int[] real)
    {
        var m = new long[real.Length * length];
        for (int r = 0; r < real.Length; r++)
            for (int j = 0; j < real[r]; j++) m[r * length + j] = 1;
        return torch.tensor(m, new long[] { real.Length, length });
    }

    [Fact]
    public void V3Classifier_LongPaddedBatch_LogitsMatchPlainOpsReference()
    {
        // 40 tokens with 8 buckets: relative distances up to 39 fall in the log buckets (|r| > 4) and beyond them.
        var head = EncoderConfig.FromJson(ReferenceDeberta.V3Json()).WithHead(new[] { "a", "b", "c" });
        var (dir, c, w) = ReferenceDeberta.WriteFolder(Path.Combine(_dir, "v3"), head.Raw, seed: 7, head: true);
        var (model, layout) = EncoderLoader.LoadClassifier(dir, new RuntimeOptions(), null, null, 0);
        using var _ = model;
        model.eval();
        Assert.True(layout.HasHead && layout.HasPooler);
        Assert.Equal("deberta.", layout.Prefix);
        var ids = Ids(2, 40, 1);
        var mask = Mask(40, 40, 23);
        using var noGrad = torch.no_grad();
        var got = model.Forward(ids, mask, null);
        var want = ReferenceDeberta.Logits(c, w, ids, mask, null);
        double diff = (got - want).abs().max().item<float>();
        Assert.True(diff < 1e-5, $"max |logit difference| {diff}");
        // The padded row's real tokens too (its padding rows are zeroed by the embeddings mask and XSoftmax alike).
        var hGot = model.Encoder.HiddenStates(ids, mask, null);
        var hWant = ReferenceDeberta.Hidden(c, w, ids, mask, null);
        Assert.True((hGot - hWant).abs().max().item<float>() < 1e-5);
        // Without the positional terms the logits differ: the test would notice c2p/p2c being dropped.
        var noRel = ReferenceDeberta.Logits(c, w.ToDictionary(kv => kv.Key, kv => kv.Key == "encoder.rel_embeddings.weight" ? torch.zeros_like(kv.Value) : kv.Value), ids, mask, null);
        Assert.True((got - noRel).abs().max().item<float>() > 1e-3);
    }

    [Fact]
    public void V2Variant_SeparatePositionProjections_TokenTypes_EmbedProj_MatchReference()
    {
        // max_relative_positions 6 without buckets: distances up to 19 are clamped to the 12-row table.
        var (dir, c, w) = ReferenceDeberta.WriteFolder(Path.Combine(_dir, "v2"), ReferenceDeberta.V2Json(), seed: 3, keyPrefix: "");
        using var model = EncoderLoader.LoadEncoder(dir, new RuntimeOptions());
        model.eval();
        var ids = Ids(2, 20, 2);
        var types = torch.cat(new[] { torch.zeros(2, 12, ScalarType.Int64), torch.ones(2, 8, ScalarType.Int64) }, 1);
        using var noGrad = torch.no_grad();
        var got = model.HiddenStates(ids, null, types);
        var want = ReferenceDeberta.Hidden(c, w, ids, null, types);
        Assert.True((got - want).abs().max().item<float>() < 1e-5);
        Assert.Contains("encoder.layer.1.attention.self.pos_query_proj.weight", model.state_dict().Keys);
    }

    [Fact]
    public void RelativePositions_AreTransformersLogBuckets()
    {
        // make_log_bucket_position(r, 256, 512) from torch 1.13: 129 → 129, 200 → 169, −300 → −207, 511 → 255, 1000 → 317.
        using var rel = RelativePositions.Build(1001, 256, 512, torch.CPU);
        Assert.Equal(new long[] { 0, 128, 129, 169, 255, 317 }, new[] { 0, 128, 129, 200, 511, 1000 }.Select(r => rel[r, 0].item<long>()));
        Assert.Equal(-207, rel[0, 300].item<long>());
        Assert.Equal(-5, rel[0, 5].item<long>());
        for (int r = -63; r < 64; r++) Assert.Equal(ReferenceDeberta.Bucket(r, 8, 64), RelativePositions.Build(64, 8, 64, torch.CPU)[Math.Max(r, 0), Math.Max(-r, 0)].item<long>());
    }

    [Fact]
    public void ClassifierKeys_AreTransformersStateDict()
    {
        var c = EncoderConfig.FromJson(ReferenceDeberta.V3Json()).WithHead(new[] { "x", "y" });
        using var model = new EncoderClassifier(c, null, ScalarType.Float32, torch.CPU);
        var keys = model.state_dict().Keys.ToHashSet();
        foreach (var k in new[]
        {
            "deberta.embeddings.word_embeddings.weight", "deberta.embeddings.LayerNorm.bias", "deberta.encoder.rel_embeddings.weight",
            "deberta.encoder.LayerNorm.weight", "deberta.encoder.layer.1.attention.self.query_proj.weight", "deberta.encoder.layer.0.attention.self.value_proj.bias",
            "deberta.encoder.layer.0.attention.output.LayerNorm.weight", "deberta.encoder.layer.0.intermediate.dense.weight", "deberta.encoder.layer.0.output.dense.weight",
            "pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias",
        })
            Assert.Contains(k, keys);
        Assert.DoesNotContain(keys, k => k.Contains("position_embeddings") || k.Contains("token_type") || k.Contains("pos_key_proj"));
        Assert.Equal(DebertaFamily.Instance.EncoderWeights(c).Count + 4, keys.Count);
        Assert.Equal("DebertaV2ForSequenceClassification", c.ClassificationArchitecture);
        Assert.Equal(new[] { "classifier", "pooler" }, model.TrainedModules(poolerFromCheckpoint: false));
        Assert.Equal(new[] { "query_proj", "value_proj" }, ModelFamilies.Find("deberta-v2")!.DefaultTargets);
    }

    /// <summary>microsoft/deberta-v3-base's config.json fields that shape the model.</summary>
    private static JsonObject V3Base() => new()
    {
        ["model_type"] = "deberta-v2",
        ["vocab_size"] = 128100,
        ["hidden_size"] = 768,
        ["num_hidden_layers"] = 12,
        ["num_attention_heads"] = 12,
        ["intermediate_size"] = 3072,
        ["max_position_embeddings"] = 512,
        ["type_vocab_size"] = 0,
        ["relative_attention"] = true,
        ["position_buckets"] = 256,
        ["max_relative_positions"] = -1,
        ["pos_att_type"] = "p2c|c2p",
        ["norm_rel_ebd"] = "layer_norm",
        ["share_att_key"] = true,
        ["position_biased_input"] = false,
        ["layer_norm_eps"] = 1e-7,
        ["hidden_act"] = "gelu",
        ["pad_token_id"] = 0,
    };

    [Fact]
    public void V3BaseShape_Has184MParameters()
    {
        // 128100·768 embeddings + 12 × 7,087,872 per layer + 512·768 rel_embeddings + 3 LayerNorms = 183,831,552.
        var c = EncoderConfig.FromJson(V3Base());
        var shapes = DebertaFamily.Instance.EncoderWeights(c);
        Assert.Equal(183_831_552L, shapes.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b)));
        Assert.Equal(new long[] { 512, 768 }, shapes["encoder.rel_embeddings.weight"]);
        // Built (one layer, so the test stays small): its parameters are exactly the named shapes.
        var one = EncoderConfig.FromJson(V3Base().Also(j => j["num_hidden_layers"] = 1));
        using var model = new DebertaModel(one, null, ScalarType.Float32, torch.CPU);
        var built = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.shape);
        var want = DebertaFamily.Instance.EncoderWeights(one);
        Assert.Equal(want.Keys.OrderBy(k => k), built.Keys.OrderBy(k => k));
        Assert.All(want, kv => Assert.Equal(kv.Value, built[kv.Key]));
        Assert.Equal(98_380_800L + 7_087_872 + 393_216 + 2 * 1536, built.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b)));
    }

    [Theory]
    [InlineData("conv_kernel_size", "3", "conv_kernel_size")]
    [InlineData("pos_att_type", "\"p2p|c2p\"", "'p2p'")]
    [InlineData("pooler_hidden_size", "8", "pooler_hidden_size")]
    [InlineData("max_relative_positions", "4", "position_buckets")]
    [InlineData("embedding_size", "0", "embedding_size")]
    public void BadConfig_IsRefusedNamingTheField(string field, string value, string expected)
    {
        var json = ReferenceDeberta.V3Json();
        json[field] = JsonNode.Parse(value);
        var e = Assert.Throws<UserInputException>(() => EncoderConfig.FromJson(json, "m/config.json"));
        Assert.Contains("m/config.json", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void ConfigDisagreeingWithStoredRelEmbeddings_NamesConfigJson()
    {
        var (dir, _, _) = ReferenceDeberta.WriteFolder(Path.Combine(_dir, "buckets"), ReferenceDeberta.V3Json(buckets: 8));
        File.WriteAllText(Path.Combine(dir, "config.json"), ReferenceDeberta.V3Json(buckets: 16).ToJsonString());
        var e = Assert.Throws<UserInputException>(() => EncoderLoader.LoadEncoder(dir, new RuntimeOptions()));
        Assert.Contains("config.json", e.Message);
        Assert.Contains("deberta.encoder.rel_embeddings.weight: stored [16, 16], config.json implies [32, 16]", e.Message);
    }
}

internal static class JsonObjectExtensions
{
    public static JsonObject Also(this JsonObject o, Action<JsonObject> edit)
    {
        edit(o);
        return o;
    }
}
