using ResLora.Adapters;
using ResLora.IO;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Training;
using ResLora.Training.Preference;
using TorchSharp;
using static ResLora.Tests.Infrastructure.CliHarness;

namespace ResLora.Tests.Pipelines;

/// <summary>
/// <c>train --method full</c> on a tiny model: every weight trained, the loss falls, --out is a model folder whose
/// evaluation equals the run's own, a resumed run ends byte-identical, bf16 with checkpointing saves a bf16 folder, and
/// what cannot apply without an adapter is refused with the reason.
/// </summary>
[Collection("console")]
public sealed class FullFineTuningTests : IDisposable
{
    private readonly string _dir = TestDirs.InMemory("reslora-fullft-");

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private static readonly DataTemplates Arithmetic = new("{Body}", " {Answer}");

    private static FineTuneRequest Request(string model, string data, string outDir, int steps, string? evalData = null, bool resume = false) => new()
    {
        ModelDir = model,
        DataPath = data,
        EvalDataPath = evalData,
        EvalFraction = 0,
        Templates = Arithmetic,
        Method = new MethodSpec { Method = FullFineTuning.MethodName },
        Train = new TrainOptions { Steps = steps, BatchSize = 8, LearningRate = 2e-3, LogEvery = 1, SaveEvery = 2, EvalGenerateExamples = 0, TensorBoard = false },
        OutDir = outDir,
        Resume = resume,
    };

    private static Dictionary<string, torch.Tensor> Weights(string dir)
    {
        using var f = SafetensorsFile.Open(Path.Combine(dir, HfCheckpoint.SingleFile));
        return f.Entries.ToDictionary(e => e.Name, e => f.Load(e.Name));
    }

    [Fact]
    public async Task Full_LowersTheLoss_TrainsEveryWeight_AndItsFolderEvaluatesAsTheTrainedModel()
    {
        string model = ModelFolder(Path.Combine(_dir, "model"));
        string data = Data(Path.Combine(_dir, "train.jsonl"), 64, 1), eval = Data(Path.Combine(_dir, "eval.jsonl"), 16, 9);
        string outDir = Path.Combine(_dir, "full");
        var req = Request(model, data, outDir, steps: 12, evalData: eval);
        var summary = FineTuning.Run(req with { Train = req.Train with { SnapshotEvery = 6 } });
        Assert.Equal(FullFineTuning.MethodName, summary.Method);
        Assert.True(summary.Curve[^1].Loss < 0.8 * summary.Curve[0].Loss, $"loss {summary.Curve[0].Loss} -> {summary.Curve[^1].Loss}");

        // A complete model folder: config, weights, the base's tokenizer files; no adapter.
        foreach (var f in new[] { "config.json", HfCheckpoint.SingleFile, "tokenizer.json" }) Assert.True(File.Exists(Path.Combine(outDir, f)), f);
        Assert.False(File.Exists(Path.Combine(outDir, AdapterFolder.ConfigFileName)));
        var before = Weights(model);
        var after = Weights(outDir);
        Assert.Equal(before.Keys.Order(), after.Keys.Order());
        foreach (var (name, w) in before) Assert.False(w.equal(after[name]).all().item<bool>(), $"{name} did not change: full fine-tuning trains every weight");

        // Loaded as --model, the folder is the trained model: its held-out loss is the one the run measured at its end.
        var ev = EvalPipeline.Run(new EvalRequest { ModelDir = outDir, DataPath = eval, Templates = Arithmetic, SeqLen = 128, AccuracyExamples = 0 });
        Assert.True(Math.Abs(ev.Loss - summary.FinalEvalLoss!.Value) < 1e-5, $"folder eval loss {ev.Loss} vs the run's {summary.FinalEvalLoss}");
        var baseEv = EvalPipeline.Run(new EvalRequest { ModelDir = model, DataPath = eval, Templates = Arithmetic, SeqLen = 128, AccuracyExamples = 0 });
        Assert.True(ev.Loss < baseEv.Loss, $"trained {ev.Loss} vs base {baseEv.Loss}");

        // The resume checkpoint holds the same weights (and AdamW's state beside them).
        var ckpt = Weights(Path.Combine(TrainCheckpoint.Find(outDir)!, "adapter"));
        foreach (var (name, w) in after) Assert.True(w.equal(ckpt[name]).all().item<bool>(), name);
        long weightBytes = after.Values.Sum(w => w.numel() * 4), optimizerBytes = new FileInfo(Path.Combine(TrainCheckpoint.Find(outDir)!, "optimizer.bin")).Length;
        Assert.True(optimizerBytes >= 2 * weightBytes, $"optimizer.bin {optimizerBytes} bytes for {weightBytes} bytes of weights: AdamW's two moments of every parameter");

        var (rc, _, err) = Run("generate", "--model", outDir, "--prompt", "1 + 2 =", "--max-new-tokens", "4");
        Assert.True(rc == 0, err);
        (rc, _, err) = Run("export", "--as", "gguf", "--model", outDir, "--out", Path.Combine(_dir, "full.gguf"), "--gguf-type", "f32");
        Assert.True(rc == 0, err);
        using (var served = ResLora.Pipelines.Serving.ServedModel.Load(new ResLora.Pipelines.Serving.ServingOptions { ModelDir = outDir }, new RuntimeOptions()))
        {
            var done = await served.CompleteAsync(new ResLora.Pipelines.Serving.CompletionRequest { Model = served.Name, Prompt = "1 + 2 =", MaxTokens = 3, Temperature = 0 });
            Assert.True(done.PromptTokens > 0 && done.CompletionTokens is >= 1 and <= 3, $"served {done.PromptTokens} prompt and {done.CompletionTokens} completion tokens");
        }
        // --snapshot-every: checkpoint-6/ is a complete model folder too, between the base and the final model.
        string snap = Path.Combine(outDir, TrainCheckpoint.SnapshotPrefix + "6");
        var snapEv = EvalPipeline.Run(new EvalRequest { ModelDir = snap, DataPath = eval, Templates = Arithmetic, SeqLen = 128, AccuracyExamples = 0 });
        Assert.True(snapEv.Loss < baseEv.Loss && snapEv.Loss > ev.Loss, $"snapshot {snapEv.Loss}, base {baseEv.Loss}, final {ev.Loss}");
        // merge: the folder is a model, not an adapter.
        (rc, _, err) = Run("merge", "--model", model, "--adapter", outDir, "--out", Path.Combine(_dir, "merged"));
        Assert.Equal(2, rc);
        Assert.Contains("holds a model", err);
        Assert.Contains("--model", err);
    }

    [Fact]
    public void ResumedFullRun_EndsByteIdentical()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "train.jsonl"), 48, 2);
        string whole = Path.Combine(_dir, "whole"), split = Path.Combine(_dir, "split");
        FineTuning.Run(Request(model, data, whole, steps: 4));
        using (var cts = new CancellationTokenSource())
            Assert.Throws<TrainingInterruptedException>(() => FineTuning.Run(Request(model, data, split, steps: 4) with { Cancellation = cts.Token }, new StopAt(2, cts)));
        Assert.False(File.Exists(Path.Combine(split, HfCheckpoint.SingleFile)));
        FineTuning.Run(Request(model, data, split, steps: 4, resume: true));
        Assert.Equal(File.ReadAllBytes(Path.Combine(whole, HfCheckpoint.SingleFile)), File.ReadAllBytes(Path.Combine(split, HfCheckpoint.SingleFile)));
    }

    [Fact]
    public void Bf16WithGradCheckpoint_SavesABf16ModelFolder()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "train.jsonl"), 32, 3);
        string outDir = Path.Combine(_dir, "bf16");
        var (rc, _, err) = Run(new[] { "train", "--model", model, "--data", data, "--out", outDir, "--method", "full", "--dtype", "bf16", "--grad-checkpoint",
            "--steps", "3", "--batch-size", "4", "--eval-fraction", "0", "--eval-generate", "0", "--lr", "1e-3" }.Concat(CliHarness.Templates).ToArray());
        Assert.True(rc == 0, err);
        Assert.Contains("\"torch_dtype\": \"bfloat16\"", File.ReadAllText(Path.Combine(outDir, "config.json")));
        using var f = SafetensorsFile.Open(Path.Combine(outDir, HfCheckpoint.SingleFile));
        Assert.All(f.Entries, e => Assert.Equal("BF16", e.Dtype));
    }

    [Fact]
    public void FullRun_OnTwoThreadRanks_EqualsOneProcess_AndOnlyRankZeroWrites()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "train.jsonl"), 32, 7);
        FineTuneRequest Req(string outDir, ResLora.Training.Distributed.ICommunicator? comm) =>
            Request(model, data, outDir, steps: 4) with { Communicator = comm, Train = Request(model, data, outDir, steps: 4).Train with { BatchSize = 6, SaveEvery = 0 } };
        var one = FineTuning.Run(Req(Path.Combine(_dir, "one"), null));
        var two = new ResLora.Tests.Distributed.ThreadGroup(2).Run(comm => FineTuning.Run(Req(Path.Combine(_dir, "two"), comm)));
        foreach (var rank in two)
            for (int i = 0; i < one.Curve.Count; i++) Assert.Equal(one.Curve[i].Loss, rank.Curve[i].Loss, 4);
        var a = Weights(Path.Combine(_dir, "one"));
        var b = Weights(Path.Combine(_dir, "two"));
        foreach (var (name, w) in a) Assert.True(w.allclose(b[name], rtol: 0, atol: 1e-5), $"{name}: the two-rank run's weights differ from one process's");
    }

    [Fact]
    public void OverwriteBetweenAdapterAndFullRuns_LeavesOnlyTheNewKindOfResult()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "train.jsonl"), 16, 6);
        string outDir = Path.Combine(_dir, "out");
        var lora = Request(model, data, outDir, steps: 2) with { Method = new MethodSpec { Method = "lora", Rank = 2 } };
        FineTuning.Run(lora);
        Assert.True(File.Exists(Path.Combine(outDir, AdapterFolder.ConfigFileName)));
        var e = Assert.Throws<UserInputException>(() => FineTuning.Run(Request(model, data, outDir, steps: 2)));
        Assert.Contains("--overwrite", e.Message);
        FineTuning.Run(Request(model, data, outDir, steps: 2) with { Overwrite = true });
        Assert.False(File.Exists(Path.Combine(outDir, AdapterFolder.ConfigFileName)));
        Assert.False(File.Exists(Path.Combine(outDir, AdapterFolder.WeightsFileName)));
        Assert.True(File.Exists(Path.Combine(outDir, HfCheckpoint.SingleFile)));
        FineTuning.Run(lora with { Overwrite = true });
        Assert.False(File.Exists(Path.Combine(outDir, "config.json")));
        Assert.False(File.Exists(Path.Combine(outDir, HfCheckpoint.SingleFile)));
        Assert.True(File.Exists(Path.Combine(outDir, AdapterFolder.WeightsFileName)));
    }

    [Theory]
    [InlineData("--base-bits|4", "packed base weights are not trainable")]
    [InlineData("--rank|4", "--rank with --method full")]
    [InlineData("--targets|all-linear", "--targets with --method full")]
    [InlineData("--objective|dpo", "--precompute-reference")]
    [InlineData("--loraplus-lr-ratio|16", "LoRA+")]
    public void Full_RefusesWhatNeedsAnAdapter(string flags, string expected)
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "train.jsonl"), 16, 4);
        string outDir = Path.Combine(_dir, "refused");
        var args = new List<string> { "train", "--model", model, "--data", data, "--out", outDir, "--method", "full", "--steps", "2" };
        args.AddRange(flags.Split('|'));
        if (!flags.StartsWith("--objective", StringComparison.Ordinal)) args.AddRange(CliHarness.Templates);
        var (rc, _, err) = Run(args.ToArray());
        Assert.Equal(2, rc);
        Assert.Contains(expected, err);
        Assert.False(Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any(), "a refused run writes nothing");
    }

    [Fact]
    public void FullOrpo_TrainsOnPreferencePairs_AndDpoWithPrecomputedReferenceRuns()
    {
        string model = ModelFolder(Path.Combine(_dir, "model"));
        var (train, _) = ResLora.Demo.DemoCorpus.FinetuneTask(24, 1, 5);
        string pairs = Path.Combine(_dir, "pairs.jsonl");
        File.WriteAllLines(pairs, train.Select((e, i) => System.Text.Json.JsonSerializer.Serialize(new { prompt = e.Prompt, chosen = " " + e.Completion, rejected = " " + (int.Parse(e.Completion) + 1 + i % 5) })));
        foreach (var o in new[] { new PreferenceOptions { Objective = PreferenceObjective.Orpo }, new PreferenceOptions { Objective = PreferenceObjective.Dpo, PrecomputeReference = true } })
        {
            string outDir = Path.Combine(_dir, o.ObjectiveName);
            var summary = FineTuning.Run(Request(model, pairs, outDir, steps: 4) with { Templates = new(), Preference = o });
            Assert.Equal(4, summary.Steps);
            Assert.True(File.Exists(Path.Combine(outDir, HfCheckpoint.SingleFile)), o.ObjectiveName);
            Assert.True(double.IsFinite(summary.FinalTrainLoss));
        }
        Assert.True(File.Exists(Path.Combine(_dir, "dpo", PreferenceFineTune.ReferenceFile)));
    }

    private sealed class StopAt(int step, CancellationTokenSource cts) : ITrainObserver
    {
        public void OnStep(StepReport report)
        {
            if (report.Step == step) cts.Cancel();
        }
    }
}
