using System.Text.Json.Nodes;
using ResLora.Models.Encoders;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

public sealed class EncoderTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-encoder-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private static (Tensor Ids, Tensor Mask, Tensor Types) PaddedPairs(int pad)
    {
        // Row 0: a pair filling the row (types 0 then 1); row 1: a shorter single text, right-padded.
        var ids = torch.tensor(new long[,] { { 2, 7, 11, 12, 3, 9, 13, 3 }, { 2, 5, 8, 3, pad, pad, pad, pad } });
        var mask = torch.tensor(new long[,] { { 1, 1, 1, 1, 1, 1, 1, 1 }, { 1, 1, 1, 1, 0, 0, 0, 0 } });
        var types = torch.tensor(new long[,] { { 0, 0, 0, 0, 0, 1, 1, 1 }, { 0, 0, 0, 0, 0, 0, 0, 0 } });
        return (ids, mask, types);
    }

    [Fact]
    public void BertEncoder_PaddedPairs_MatchesPlainOpsReference()
    {
        var (dir, c, w) = TinyEncoders.WriteFolder(Path.Combine(_dir, "bert"));
        using var model = EncoderLoader.LoadEncoder(dir, new RuntimeOptions());
        model.eval();
        var (ids, mask, types) = PaddedPairs(c.PadTokenId);
        using var got = model.HiddenStates(ids, mask, types);
        using var want = TinyEncoders.ReferenceHidden(c, w, ids, mask, types);
        // Padded positions are compared too: transformers computes them the same way (they attend to the real tokens).
        Assert.True(got.allclose(want, rtol: 0, atol: 1e-5), $"max |Δ| = {(got - want).abs().max().item<float>()}");
        // Token types matter: the same ids with all-zero types give different states for the second segment.
        using var zeroTypes = model.HiddenStates(ids, mask, null);
        Assert.True((zeroTypes[0, 6] - got[0, 6]).abs().max().item<float>() > 1e-3);
    }

    [Fact]
    public void RobertaEncoder_Padding_PositionsCountPastPadIndex()
    {
        var (dir, c, w) = TinyEncoders.WriteFolder(Path.Combine(_dir, "roberta"), "roberta", seed: 3);
        using var model = EncoderLoader.LoadEncoder(dir, new RuntimeOptions());
        model.eval();
        var ids = torch.tensor(new long[,] { { 0, 7, 11, 12, 2, 2, 9, 2 }, { 0, 5, 8, 2, 1, 1, 1, 1 } });
        var mask = ids.ne(1).to_type(ScalarType.Int64);
        using var got = model.HiddenStates(ids, mask, null);
        using var want = TinyEncoders.ReferenceHidden(c, w, ids, mask, null);
        Assert.True(got.allclose(want, rtol: 0, atol: 1e-5), $"max |Δ| = {(got - want).abs().max().item<float>()}");
        // BERT positions (0..n-1) would give other states: the offset is really applied.
        var bertStyle = c with { Family = EncoderFamily.Bert };
        using var wrong = TinyEncoders.ReferenceHidden(bertStyle, w, ids, mask, null);
        Assert.False(got.allclose(wrong, rtol: 0, atol: 1e-3));
    }

    [Fact]
    public void EncoderLoader_PrefixedCheckpointWithoutPooler_LoadsAndReportsLayout()
    {
        var (dir, c, w) = TinyEncoders.WriteFolder(Path.Combine(_dir, "prefixed"), pooler: false, keyPrefix: "bert.");
        var (_, ckpt, layout) = EncoderLoader.OpenChecked(dir);
        ckpt.Dispose();
        Assert.Equal(new EncoderCheckpointLayout("bert.", false, false), layout);
        using var model = EncoderLoader.LoadEncoder(dir, new RuntimeOptions());
        model.eval();
        var (ids, mask, types) = PaddedPairs(0);
        using var got = model.HiddenStates(ids, mask, types);
        using var want = TinyEncoders.ReferenceHidden(c, w, ids, mask, types);
        Assert.True(got.allclose(want, rtol: 0, atol: 1e-5));
    }

    [Fact]
    public void EncoderLoader_ConfigWithMoreLayersThanStored_NamesConfigBeforeAllocating()
    {
        var (dir, _, _) = TinyEncoders.WriteFolder(Path.Combine(_dir, "layers"));
        var json = TinyEncoders.ConfigJson();
        json["num_hidden_layers"] = 3;
        File.WriteAllText(Path.Combine(dir, "config.json"), json.ToJsonString());
        var e = Assert.Throws<UserInputException>(() => EncoderLoader.LoadEncoder(dir, new RuntimeOptions()));
        Assert.Contains("config.json", e.Message);
        Assert.Contains("encoder.layer.2", e.Message);
    }

    [Theory]
    [InlineData("llama", "not an encoder")]
    [InlineData("deberta", "DeBERTa")]
    public void EncoderConfig_OtherModelType_SaysWhatIsSupported(string type, string expected)
    {
        var json = TinyEncoders.ConfigJson();
        json["model_type"] = type;
        var e = Assert.Throws<UserInputException>(() => EncoderConfig.FromJson(json, "x/config.json"));
        Assert.Contains("x/config.json", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void EncoderConfig_WithHead_WritesHuggingFaceLabelFields()
    {
        var c = EncoderConfig.FromJson(TinyEncoders.ConfigJson()).WithHead(new[] { "neg", "pos" });
        var back = EncoderConfig.FromJson(JsonNode.Parse(c.ToJson())!.AsObject());
        Assert.Equal(2, back.NumLabels);
        Assert.Equal(new[] { "neg", "pos" }, back.Labels);
        Assert.Equal("BertForSequenceClassification", back.Raw["architectures"]![0]!.GetValue<string>());
        Assert.Equal(1, back.Raw["label2id"]!["pos"]!.GetValue<int>());
        Assert.True(back.DeclaresClassificationHead);
        var reg = EncoderConfig.FromJson(TinyEncoders.ConfigJson()).WithHead(null);
        Assert.True(reg.IsRegression);
        Assert.Equal("regression", reg.Raw["problem_type"]!.GetValue<string>());
    }

    [Theory]
    [InlineData("bert", "bert.pooler.dense.weight,classifier.weight,classifier.bias")]
    [InlineData("roberta", "classifier.dense.weight,classifier.dense.bias,classifier.out_proj.weight,classifier.out_proj.bias")]
    public void EncoderClassifier_StateDictKeys_AreHuggingFaces(string type, string headKeys)
    {
        var c = EncoderConfig.FromJson(TinyEncoders.ConfigJson(type)).WithHead(new[] { "a", "b", "c" });
        using var model = new EncoderClassifier(c, null, ScalarType.Float32, torch.CPU);
        var keys = model.state_dict().Keys.ToHashSet();
        string p = type == "bert" ? "bert." : "roberta.";
        Assert.Contains(p + "embeddings.word_embeddings.weight", keys);
        Assert.Contains(p + "encoder.layer.1.attention.self.query.weight", keys);
        Assert.Contains(p + "encoder.layer.1.attention.output.LayerNorm.bias", keys);
        Assert.Contains(p + "encoder.layer.0.output.dense.weight", keys);
        foreach (var k in headKeys.Split(',')) Assert.Contains(k, keys);
        Assert.Equal(type == "bert", keys.Contains("bert.pooler.dense.weight"));
        Assert.DoesNotContain(keys, k => k.StartsWith("roberta.pooler", StringComparison.Ordinal));
        using var logits = model.forward(torch.tensor(new long[,] { { 2, 5, 6, 3 } }));
        Assert.Equal(new long[] { 1, 3 }, logits.shape);
    }
}
