using System.Text.Json.Nodes;
using ResLora.IO;
using ResLora.Tests.Infrastructure;
using ResLora.Tests.Models;
using TorchSharp;

namespace ResLora.Tests.Cli;

/// <summary>A DeBERTa-v3-style folder through the CLI: train --task classify, merge, eval merged and unmerged.</summary>
[Collection("console")]
public sealed class DebertaCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-deberta-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void TrainClassify_Merge_Eval_MergedPredictsAsUnmerged()
    {
        var (model, _, w) = ReferenceDeberta.WriteFolder(Path.Combine(_dir, "deberta"), ReferenceDeberta.V3Json(), seed: 4);
        string data = Path.Combine(_dir, "train.tsv");
        var rng = new Random(1);
        string[] good = { "good", "great" }, bad = { "bad", "awful" };
        File.WriteAllLines(data, new[] { "sentence\tlabel" }.Concat(Enumerable.Range(0, 16).Select(i =>
            i % 2 == 0 ? $"the movie was really {good[rng.Next(2)]} and fun\tpos" : $"the plot was very {bad[rng.Next(2)]} and dull\tneg")));
        string adapter = Path.Combine(_dir, "adapter");
        var train = CliHarness.Run("train", "--model", model, "--task", "classify", "--data", data, "--text-field", "sentence", "--steps", "4",
            "--batch-size", "4", "--lr", "2e-2", "--eval-fraction", "0", "--out", adapter, "--threads", "1");
        Assert.True(train.Rc == 0, train.Err);

        // PEFT's SEQ_CLS layout: LoRA on query_proj/value_proj (deberta-v2's defaults), the new pooler and classifier saved whole.
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!;
        Assert.Equal("SEQ_CLS", cfg["task_type"]!.GetValue<string>());
        Assert.Equal(new[] { "classifier", "pooler" }, cfg["modules_to_save"]!.AsArray().Select(x => x!.GetValue<string>()));
        using (var f = SafetensorsFile.Open(Path.Combine(adapter, "adapter_model.safetensors")))
        {
            var keys = f.Entries.Select(e => e.Name).ToHashSet();
            Assert.Contains("base_model.model.deberta.encoder.layer.1.attention.self.query_proj.lora_B.weight", keys);
            Assert.Contains("base_model.model.deberta.encoder.layer.0.attention.self.value_proj.lora_A.weight", keys);
            Assert.Contains("base_model.model.pooler.dense.weight", keys);
            Assert.Contains("base_model.model.classifier.weight", keys);
            Assert.Equal(4 + 2 * 2 * 2, keys.Count); // pooler + classifier, A and B of 2 projections in 2 layers
        }

        string merged = Path.Combine(_dir, "merged");
        var merge = CliHarness.Run("merge", "--model", model, "--adapter", adapter, "--out", merged, "--threads", "1");
        Assert.True(merge.Rc == 0, merge.Err);
        using (var m = SafetensorsFile.Open(Path.Combine(merged, "model.safetensors")))
        {
            // The merge moved the adapted weight (the adapter trained), and left key_proj as it was.
            using var q = m.Load("deberta.encoder.layer.0.attention.self.query_proj.weight");
            using var k = m.Load("deberta.encoder.layer.0.attention.self.key_proj.weight");
            Assert.True((q - w["encoder.layer.0.attention.self.query_proj.weight"]).abs().max().item<float>() > 1e-4);
            Assert.Equal(0f, (k - w["encoder.layer.0.attention.self.key_proj.weight"]).abs().max().item<float>());
        }

        string p1 = Path.Combine(_dir, "unmerged.jsonl"), p2 = Path.Combine(_dir, "merged.jsonl");
        var e1 = CliHarness.Run("eval", "--model", model, "--adapter", adapter, "--data", data, "--predictions", p1, "--threads", "1");
        Assert.True(e1.Rc == 0, e1.Err);
        var e2 = CliHarness.Run("eval", "--model", merged, "--data", data, "--predictions", p2, "--threads", "1");
        Assert.True(e2.Rc == 0, e2.Err);
        var a = File.ReadAllLines(p1).Select(l => JsonNode.Parse(l)!).ToList();
        var b = File.ReadAllLines(p2).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.Equal(16, a.Count);
        Assert.Equal(a.Select(x => x["prediction"]!.GetValue<string>()), b.Select(x => x["prediction"]!.GetValue<string>()));
        for (int i = 0; i < a.Count; i++)
            foreach (var label in new[] { "neg", "pos" })
                Assert.Equal(a[i]["probabilities"]![label]!.GetValue<double>(), b[i]["probabilities"]![label]!.GetValue<double>(), 5);
    }

    /// <summary>
    /// ResLoRA's is/ms pass tensors along each chain within a forward; the positional projections (query_proj/key_proj on the
    /// shared rel_embeddings) run in a forward context of their own, so the chains never see a (1, 2·span, hidden) input
    /// next to a (batch, seq, hidden) one, which would stop the forward.
    /// </summary>
    [Theory]
    [InlineData("reslora-is")]
    [InlineData("reslora-ms")]
    public void Train_ResLoraChains_OnSharedKeyDeberta_RunAndMerge(string method)
    {
        var (model, _, _) = ReferenceDeberta.WriteFolder(Path.Combine(_dir, "deberta"), ReferenceDeberta.V3Json(), seed: 2);
        string data = Path.Combine(_dir, "train.tsv");
        File.WriteAllLines(data, new[] { "sentence\tlabel", "the movie was good\tpos", "the plot was bad\tneg", "it was great fun\tpos", "the film was dull\tneg" });
        string adapter = Path.Combine(_dir, method);
        var train = CliHarness.Run("train", "--model", model, "--task", "classify", "--data", data, "--text-field", "sentence", "--method", method,
            "--targets", "query_proj,key_proj,value_proj", "--steps", "2", "--batch-size", "2", "--eval-fraction", "0", "--out", adapter, "--threads", "1");
        Assert.True(train.Rc == 0, train.Err);
        var merge = CliHarness.Run("merge", "--model", model, "--adapter", adapter, "--out", Path.Combine(_dir, method + "-merged"), "--threads", "1");
        Assert.True(merge.Rc == 0, merge.Err);
        var inspect = CliHarness.Run("inspect", "--model", model);
        Assert.Contains("the default for --task classify is [query_proj, value_proj]", inspect.Out);
    }
}
