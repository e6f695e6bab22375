using System.Text.Json;
using ResLora.Adapters;
using ResLora.Bench;
using ResLora.IO;
using ResLora.Models;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.Cli;

/// <summary>
/// <c>bench pytorch --model</c>'s inputs for bench/pytorch/peer.py, written from a tiny Hugging Face folder built here, and
/// our side trained on them. Python and torch are never needed: the peer's side runs only in the benchmark.
/// </summary>
[Collection("console")]
public sealed class PytorchParityTests : IDisposable
{
    private const int TokenizerIds = 40;

    private readonly string _root = Directory.CreateTempSubdirectory("reslora-parity-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    /// <summary>
    /// A Qwen2-style tiny folder (q/k/v biases, tied embeddings, llama3 rope scaling) stored as bf16 in several shards,
    /// with a tokenizer.json of fewer ids than vocab_size, as `bench scale make-model` writes for the real presets.
    /// </summary>
    private (string Dir, ModelConfig Config) TinyFolder()
    {
        string dir = Path.Combine(_root, "model");
        var rope = new RopeScaling { RopeType = "llama3", Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 32 };
        var c = TinyModels.Config(tied: true, qkvBias: true, rope: rope);
        using (var m = TinyModels.Build(c, dtype: torch.ScalarType.BFloat16))
            ModelFolder.Save(dir, c, m.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)), maxShardBytes: 16_000);
        var vocab = Enumerable.Range(0, TokenizerIds).ToDictionary(i => $"t{i}", i => i);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), JsonSerializer.Serialize(new { version = "1.0", added_tokens = Array.Empty<object>(), model = new { type = "BPE", vocab, merges = Array.Empty<string>() } }));
        return (dir, c);
    }

    private static MethodSpec Lora(int rank) => new() { Method = "lora", Rank = rank, Alpha = 2 * rank, Targets = ModuleTargets.List("q_proj", "k_proj", "v_proj", "o_proj") };

    [Fact]
    public void WriteInputs_WithModel_PointsToFolderWithBatchesInVocabAndFactorsOfTheTargets()
    {
        var (model, c) = TinyFolder();
        Assert.True(Directory.GetFiles(model, "*.safetensors").Length > 1, "the folder should be sharded");
        string work = Path.Combine(_root, "work");
        var run = new ParityModelRun { ModelDir = model, Batch = 2, SeqLen = 24, Dtype = "bf16" };

        PytorchParity.WriteInputs(work, run, Lora(4), steps: 3, lr: 1e-3, seed: 1);

        using (var p = JsonDocument.Parse(File.ReadAllText(Path.Combine(work, "parity.json"))))
        {
            var r = p.RootElement;
            Assert.Equal(Path.GetFullPath(model), r.GetProperty("model_dir").GetString());
            Assert.Equal("bfloat16", r.GetProperty("dtype").GetString());
            Assert.Equal(2.0, r.GetProperty("scaling").GetDouble());
            Assert.Equal(TokenizerIds, r.GetProperty("vocab_used").GetInt32());
        }
        Assert.False(Directory.Exists(Path.Combine(work, "model")), "the weights are referenced, never copied");

        using (var batches = SafetensorsFile.Open(Path.Combine(work, "batches.safetensors")))
        using (var ids = batches.Load("input_ids"))
        {
            Assert.Equal(new long[] { 3, 2, 24 }, ids.shape);
            Assert.True(ids.min().item<long>() >= 3);
            Assert.True(ids.max().item<long>() < TokenizerIds, "ids stay within the tokenizer's ids, below vocab_size");
        }

        long q = (long)c.NumAttentionHeads * c.HeadDim, kv = (long)c.NumKeyValueHeads * c.HeadDim, h = c.HiddenSize;
        var outIn = new Dictionary<string, (long Out, long In)> { ["q_proj"] = (q, h), ["k_proj"] = (kv, h), ["v_proj"] = (kv, h), ["o_proj"] = (h, q) };
        using var init = SafetensorsFile.Open(Path.Combine(work, "adapter_init.safetensors"));
        var expected = Enumerable.Range(0, c.NumHiddenLayers).SelectMany(i => outIn.Keys.SelectMany(m => new[] { $"model.layers.{i}.self_attn.{m}.A", $"model.layers.{i}.self_attn.{m}.B" }));
        Assert.Equal(expected.OrderBy(k => k, StringComparer.Ordinal), init.Entries.Select(e => e.Name).OrderBy(k => k, StringComparer.Ordinal));
        foreach (var (m, (o, i)) in outIn)
        {
            using var a = init.Load($"model.layers.0.self_attn.{m}.A");
            using var b = init.Load($"model.layers.0.self_attn.{m}.B");
            Assert.Equal(new long[] { 4, i }, a.shape);
            Assert.Equal(new long[] { o, 4 }, b.shape);
            Assert.Equal(torch.ScalarType.Float32, a.dtype);
            Assert.True(b.abs().sum().item<float>() > 0, "B starts non-zero so the adapters shape the loss from step one");
        }
    }

    [Fact]
    public void Train_OnModelInputs_ReadsTheFolderInBf16AndLearns()
    {
        var (model, _) = TinyFolder();
        string work = Path.Combine(_root, "work");
        PytorchParity.WriteInputs(work, new ParityModelRun { ModelDir = model, Batch = 2, SeqLen = 16, Dtype = "bfloat16" }, Lora(4), steps: 4, lr: 1e-2, seed: 1);

        var spec = PytorchParity.SpecOf(work);
        Assert.Equal(4, spec.Rank);
        Assert.Equal(8, spec.Alpha);
        var run = PytorchParity.Train(work, spec, threads: 1);

        Assert.Equal(4, run.Losses.Count);
        Assert.All(run.Losses, l => Assert.True(double.IsFinite(l)));
        Assert.True(run.LoadSeconds > 0);
    }

    [Fact]
    public void BenchPytorch_MissingModelFolder_IsOneLineNamingTheFlag()
    {
        string missing = Path.Combine(_root, "nope");
        var (rc, _, err) = CliHarness.Run("bench", "pytorch", "--model", missing, "--dir", Path.Combine(_root, "work"));
        Assert.Equal(2, rc);
        string line = Assert.Single(err.Trim().Split('\n'));
        Assert.StartsWith($"error: --model {missing}: no such folder", line);
    }

    [Fact]
    public void BenchPytorch_ModelFolderWithoutConfig_IsOneLineNamingTheFlag()
    {
        string empty = Directory.CreateDirectory(Path.Combine(_root, "empty")).FullName;
        File.WriteAllText(Path.Combine(empty, "model.safetensors"), "");
        var (rc, _, err) = CliHarness.Run("bench", "pytorch", "--model", empty, "--dir", Path.Combine(_root, "work"));
        Assert.Equal(2, rc);
        string line = Assert.Single(err.Trim().Split('\n'));
        Assert.StartsWith($"error: --model {empty}: no config.json", line);
    }

    [Fact]
    public void BenchPytorch_ModelFlagsWithoutModel_AreRefused()
    {
        var (rc, _, err) = CliHarness.Run("bench", "pytorch", "--seq-len", "64", "--dir", Path.Combine(_root, "work"));
        Assert.Equal(2, rc);
        Assert.Contains("--seq-len applies with --model only", err);
        Assert.False(Directory.Exists(Path.Combine(_root, "work")), "nothing is written before the flags are checked");
    }
}
