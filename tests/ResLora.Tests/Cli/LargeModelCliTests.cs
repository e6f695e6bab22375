using ResLora.Cli;
using ResLora.Demo;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.Cli;

/// <summary>The large-model flags from the command line on a tiny model: a packed base (--base-bits) for train, merge, eval and generate; --grad-checkpoint.</summary>
[Collection("console")]
public sealed class LargeModelCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-cli-large-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly string[] Template = { "--prompt-template", "{Body}", "--completion-template", " {Answer}" };

    private string ModelFolder()
    {
        string dir = Path.Combine(_dir, "model");
        var c = TinyModels.Config(vocab: DemoTokenizerFiles.VocabSize);
        using var m = TinyModels.Build(c, seed: 2);
        ResLora.Models.ModelFolder.Save(dir, c, m.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)));
        DemoTokenizerFiles.Write(dir);
        return dir;
    }

    private string Data(string name, int n, int seed)
    {
        var (train, _) = DemoCorpus.FinetuneTask(n, 1, seed);
        string p = Path.Combine(_dir, name);
        File.WriteAllLines(p, train.Select(e => System.Text.Json.JsonSerializer.Serialize(new { Body = e.Prompt, Answer = int.Parse(e.Completion) })));
        return p;
    }


    [Fact]
    public void QuantizedBase_TrainMergeEvalGenerate_FromTheCli()
    {
        string model = ModelFolder(), data = Data("train.jsonl", 16, 1), adapter = Path.Combine(_dir, "adapter");
        var (rc, output, err) = CliHarness.Run(new[] { "train", "--model", model, "--data", data, "--method", "dora", "--targets", "all-linear", "--base-bits", "4",
            "--steps", "4", "--batch-size", "8", "--lr", "3e-3", "--eval-fraction", "0", "--out", adapter, "--threads", "1" }.Concat(Template).ToArray());
        Assert.True(rc == 0, err);
        Assert.Contains("done: 4 steps", output);
        Assert.True(File.Exists(Path.Combine(adapter, "adapter_model.safetensors")));

        // Merging on the packed base merges into the dequantized weights, writes full precision and says so.
        string merged = Path.Combine(_dir, "merged");
        var mg = CliHarness.Run("merge", "--model", model, "--adapter", adapter, "--out", merged, "--base-bits", "4");
        Assert.True(mg.Rc == 0, mg.Err);
        Assert.Contains("quantized base: nf4 (--base-bits 4): merged into the dequantized base weights", mg.Out);
        Assert.Contains("\"QuantizedBase\"", File.ReadAllText(Path.Combine(merged, "merge_report.json")));
        Assert.Contains("\"torch_dtype\": \"float32\"", File.ReadAllText(Path.Combine(merged, "config.json")));

        var g = CliHarness.Run("generate", "--model", model, "--adapter", adapter, "--base-bits", "4", "--prompt", "What is 3 times 4? Answer:", "--max-new-tokens", "3");
        Assert.True(g.Rc == 0, g.Err);
        var ev = CliHarness.Run(new[] { "eval", "--model", model, "--adapter", adapter, "--data", data, "--base-bits", "8", "--accuracy-examples", "2", "--max-new-tokens", "2" }.Concat(Template).ToArray());
        Assert.True(ev.Rc == 0, ev.Err);
        Assert.Contains("perplexity", ev.Out);
    }

    [Fact]
    public void GradCheckpoint_TrainsTheSameLosses_AndRefusesResLoraIs()
    {
        string model = ModelFolder(), data = Data("train.jsonl", 16, 1);
        string[] Train(string outDir, params string[] extra) => new[] { "train", "--model", model, "--data", data, "--method", "lora", "--targets", "all-linear", "--dropout", "0.1",
            "--steps", "3", "--batch-size", "8", "--lr", "3e-3", "--eval-fraction", "0", "--log-every", "1", "--out", outDir, "--threads", "1" }.Concat(Template).Concat(extra).ToArray();
        string plain = Path.Combine(_dir, "plain"), ckpt = Path.Combine(_dir, "ckpt");
        var a = CliHarness.Run(Train(plain));
        var b = CliHarness.Run(Train(ckpt, "--grad-checkpoint"));
        Assert.True(a.Rc == 0, a.Err);
        Assert.True(b.Rc == 0, b.Err);
        static IEnumerable<double> Losses(string dir) => File.ReadAllLines(Path.Combine(dir, "metrics.jsonl"))
            .Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement).Where(e => e.TryGetProperty("loss", out _)).Select(e => e.GetProperty("loss").GetDouble());
        Assert.Equal(3, Losses(plain).Count());
        Assert.Equal(Losses(plain), Losses(ckpt)); // recomputation with dropout replays the same masks: identical training

        string bad = Path.Combine(_dir, "bad");
        var r = CliHarness.Run(new[] { "train", "--model", model, "--data", data, "--method", "reslora", "--grad-checkpoint", "--out", bad }.Concat(Template).ToArray());
        Assert.Equal(2, r.Rc);
        Assert.Contains("error: --grad-checkpoint: ResLoRA's is structure passes live tensors", r.Err);
        Assert.False(Directory.Exists(bad), "nothing is written before the combination is refused");
    }

    [Fact]
    public void BaseBits_BadValueOrCombination_IsOneLineError()
    {
        string model = ModelFolder(), data = Data("train.jsonl", 8, 1);
        var bad = CliHarness.Run(new[] { "train", "--model", model, "--data", data, "--base-bits", "3", "--out", Path.Combine(_dir, "a") }.Concat(Template).ToArray());
        Assert.Equal(2, bad.Rc);
        Assert.Contains("--base-bits 3 is not supported; use 8", bad.Err);
        Assert.False(Directory.Exists(Path.Combine(_dir, "a")), "nothing is written before the flag is checked");
        var both = CliHarness.Run(new[] { "eval", "--model", model, "--data", data, "--base-bits", "4", "--wbits", "4", "--accuracy-examples", "0" }.Concat(Template).ToArray());
        Assert.Equal(2, both.Rc);
        Assert.Contains("drop one of them", both.Err);
    }

    [Fact]
    public void Heap_BadValue_IsOneLineErrorNamingTheChoices()
    {
        string model = ModelFolder(), data = Data("train.jsonl", 8, 1);
        var bad = CliHarness.Run(new[] { "train", "--model", model, "--data", data, "--heap", "huge", "--out", Path.Combine(_dir, "h") }.Concat(Template).ToArray());
        Assert.Equal(2, bad.Rc);
        Assert.Contains("--heap 'huge' is not a heap policy: use fast (default: quickest steps, highest peak), balanced or lean", bad.Err);
        Assert.False(Directory.Exists(Path.Combine(_dir, "h")), "nothing is written before the flag is checked");
        Assert.Equal(HeapMode.Lean, RuntimeOptions.ParseHeap(" LEAN "));
        new RuntimeOptions { Heap = "lean" }.Apply();
        Assert.Equal(HeapMode.Lean, NativeHeap.Mode);
        new RuntimeOptions().Apply(); // generation and serving keep freed blocks for reuse
        Assert.Equal(HeapMode.Fast, NativeHeap.Mode);
    }
}
