using System.Text.Json;
using System.Text.Json.Nodes;
using ResLora.Adapters;
using ResLora.Demo;
using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Tests.Pipelines;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Cli;

/// <summary>
/// Issue 27: inspect and tokenize on BERT-family encoder folders and classification data (TSV/CSV as train reads it),
/// and merge keeping a bf16 base in bf16.
/// </summary>
[Collection("console")]
public sealed class Issue27CliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-issue27-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Theory]
    [InlineData("bert")]
    [InlineData("roberta")]
    public void Inspect_EncoderFolder_ShowsSummary_AndTargetNamesThatSelectEachKind(string modelType)
    {
        var (dir, config, weights) = TinyEncoders.WriteFolder(Path.Combine(_dir, modelType), modelType);
        var (rc, output, err) = CliHarness.Run("inspect", "--model", dir);
        Assert.True(rc == 0, err);
        Assert.Contains(modelType == "bert" ? "BertModel" : "RobertaModel", output);
        long total = weights.Values.Sum(w => w.numel());
        Assert.Contains($"{total:N0}", output);
        foreach (var name in new[] { "query", "key", "value", "attention.output.dense", "intermediate.dense", @".*\.layer\.\d+\.output\.dense" })
            Assert.Contains(name, output);
        Assert.Contains("--targets", output);

        // Every grouped name, given to --targets, selects exactly its kind: layers × 1 module each.
        var all = InspectPipeline.DescribeEncoder(dir, groupByType: false).Linears.Select(l => l.Name).ToList();
        Assert.Equal(6 * config.NumHiddenLayers, all.Count);
        foreach (var g in InspectPipeline.DescribeEncoder(dir).Linears)
        {
            var t = ModuleTargets.FromCommandLine(g.Name, "--targets");
            Assert.Equal(config.NumHiddenLayers, all.Count(p => t.Matches(new LinearSpec(p, "", 0, 0, 0, false))));
        }

        var full = CliHarness.Run("inspect", "--model", dir, "--all");
        Assert.True(full.Rc == 0, full.Err);
        Assert.Contains("encoder.layer.1.attention.self.query", full.Out);
    }

    [Fact]
    public void Inspect_EncoderTargets_AreAcceptedByTrain()
    {
        var (dir, _, _) = TinyEncoders.WriteFolder(Path.Combine(_dir, "bert"));
        string data = Path.Combine(_dir, "train.tsv");
        File.WriteAllLines(data, new[] { "sentence\tlabel" }.Concat(Enumerable.Range(0, 8).Select(i => (i % 2 == 0 ? "the movie was great\t1" : "the plot was awful\t0"))));
        var (rc, _, err) = CliHarness.Run("train", "--model", dir, "--task", "classify", "--data", data, "--text-field", "sentence", "--targets", @".*\.layer\.\d+\.output\.dense", "--steps", "1", "--batch-size", "4", "--eval-fraction", "0", "--out", Path.Combine(_dir, "out"), "--threads", "1");
        Assert.True(rc == 0, err);
    }

    [Fact]
    public void Tokenize_TsvAndCsv_OnEncoder_ReadAsTrainDoes()
    {
        var (dir, _, _) = TinyEncoders.WriteFolder(Path.Combine(_dir, "bert"));
        string tsv = Path.Combine(_dir, "data.tsv");
        File.WriteAllLines(tsv, new[] { "sentence\tlabel", "the movie was great\tpos", "the plot was awful\tneg" });
        var (rc, output, err) = CliHarness.Run("tokenize", "--model", dir, "--data", tsv, "--text-field", "sentence");
        Assert.True(rc == 0, err);
        Assert.Contains("record 1 (line 2): 6 tokens, label pos", output);
        Assert.Contains("\"[CLS]\"", output);
        Assert.Contains("\"great\"", output);
        Assert.Contains("\"[SEP]\"", output);
        Assert.Contains("label neg", output);

        string csv = Path.Combine(_dir, "pairs.csv");
        File.WriteAllLines(csv, new[] { "sentence1,sentence2,label", "the film is fun,i loved it,1" });
        var pair = CliHarness.Run("tokenize", "--model", dir, "--data", csv, "--text-pair-field", "sentence2", "--json");
        Assert.True(pair.Rc == 0, pair.Err);
        using var doc = JsonDocument.Parse(pair.Out.Trim());
        var types = doc.RootElement.GetProperty("type_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var pieces = doc.RootElement.GetProperty("pieces").EnumerateArray().Select(e => e.GetString()).ToArray();
        Assert.Equal(new[] { "[CLS]", "the", "film", "is", "fun", "[SEP]", "i", "loved", "it", "[SEP]" }, pieces);
        Assert.Equal(new[] { 0, 0, 0, 0, 0, 0, 1, 1, 1, 1 }, types);
        Assert.Equal("1", doc.RootElement.GetProperty("label").GetString());

        // The same errors as train: a missing field names the fields the file has.
        var bad = CliHarness.Run("tokenize", "--model", dir, "--data", tsv, "--text-field", "nope");
        Assert.Equal(2, bad.Rc);
        Assert.Contains("nope", bad.Err);
    }

    [Fact]
    public void Merge_Bf16Base_WritesBf16_AndMatchesTheUnmergedModel()
    {
        string model = Path.Combine(_dir, "model");
        var c = TinyModels.Config(vocab: DemoTokenizerFiles.VocabSize);
        using (var m = TinyModels.Build(c, seed: 2))
        using (var scope = torch.NewDisposeScope())
            ModelFolder.Save(model, c, m.BaseParameters().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value.to_type(ScalarType.BFloat16))).ToList());
        DemoTokenizerFiles.Write(model);
        Assert.Equal("bfloat16", JsonNode.Parse(File.ReadAllText(Path.Combine(model, "config.json")))!["torch_dtype"]!.GetValue<string>());
        string adapter = Path.Combine(_dir, "adapter");
        MultiAdapterFixture.SaveTrainedLooking(model, adapter, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ModuleTargets.AllLinear }, 7, 0.2);

        string merged = Path.Combine(_dir, "merged");
        var (rc, output, err) = CliHarness.Run("merge", "--model", model, "--adapter", adapter, "--out", merged, "--threads", "1");
        Assert.True(rc == 0, err);
        Assert.Contains("wrote bfloat16 weights (the base's stored dtype", output);
        Assert.Equal("bfloat16", JsonNode.Parse(File.ReadAllText(Path.Combine(merged, "config.json")))!["torch_dtype"]!.GetValue<string>());
        using (var f = SafetensorsFile.Open(Path.Combine(merged, "model.safetensors")))
            Assert.All(f.Entries, e => Assert.Equal("BF16", e.Dtype));
        Assert.Equal(new FileInfo(Path.Combine(model, "model.safetensors")).Length, new FileInfo(Path.Combine(merged, "model.safetensors")).Length, 1024.0);
        Assert.Equal("bfloat16", JsonNode.Parse(File.ReadAllText(Path.Combine(merged, MergeReport.FileName)))!["Dtype"]!.GetValue<string>());

        // --out-dtype float32 keeps the merge unrounded.
        string f32 = Path.Combine(_dir, "merged32");
        var r32 = CliHarness.Run("merge", "--model", model, "--adapter", adapter, "--out", f32, "--out-dtype", "float32", "--threads", "1");
        Assert.True(r32.Rc == 0, r32.Err);

        // Merged against unmerged (bf16 base + float32 adapter), all run in float32. The float32 merge is exact to float
        // rounding (1e-4 of the largest logit); the bf16 one rounds each merged weight once (relative error ≤ 2^-9),
        // which through two layers and the head moves logits by ~2 % of the largest here: the stated bound is 5 %.
        var rt = new RuntimeOptions();
        using var ids = TinyModels.RandomIds(2, 12, c.VocabSize, 5);
        using var reference = ModelSessions.LoadWithAdapter(model, adapter, rt);
        using var mergedModel = ModelSessions.LoadBase(merged, rt);
        using var merged32 = ModelSessions.LoadBase(f32, rt);
        using (torch.no_grad())
        using (var a = reference.forward(ids))
        using (var b = mergedModel.forward(ids))
        using (var b32 = merged32.forward(ids))
        {
            double diff = (a - b).abs().max().item<float>(), diff32 = (a - b32).abs().max().item<float>(), scale = a.abs().max().item<float>();
            Assert.True(diff32 <= 1e-4 * scale, $"float32 merge: max |Δlogit| {diff32} vs largest logit {scale}");
            Assert.True(diff <= 0.05 * scale, $"bf16 merge: max |Δlogit| {diff} vs largest logit {scale}");
        }
        Assert.Contains("wrote float32 weights (--out-dtype", r32.Out);
        Assert.Equal("float32", JsonNode.Parse(File.ReadAllText(Path.Combine(f32, "config.json")))!["torch_dtype"]!.GetValue<string>());
        var badDtype = CliHarness.Run("merge", "--model", model, "--adapter", adapter, "--out", Path.Combine(_dir, "x"), "--out-dtype", "int8");
        Assert.Equal(2, badDtype.Rc);
        Assert.Contains("--out-dtype int8", badDtype.Err);
    }
}
