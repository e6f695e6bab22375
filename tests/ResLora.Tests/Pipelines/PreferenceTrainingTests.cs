using System.Text.Json;
using ResLora.Adapters;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Training;
using ResLora.Training.Preference;
using static ResLora.Tests.Infrastructure.CliHarness;

namespace ResLora.Tests.Pipelines;

/// <summary>
/// <c>train --objective</c> end to end on a tiny model: held-out preference accuracy rises, TRL's metrics are logged,
/// a resumed run ends byte-identical, the precomputed reference gives the per-step reference's losses, and a resume
/// on changed data is refused.
/// </summary>
[Collection("console")]
public sealed class PreferenceTrainingTests : IDisposable
{
    private readonly string _dir = TestDirs.InMemory("reslora-pref-");

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    /// <summary>Arithmetic prompts; the chosen response is the right answer, the rejected one a wrong answer.</summary>
    private static string Pairs(string path, int n, int seed, int offset = 0)
    {
        var (train, _) = ResLora.Demo.DemoCorpus.FinetuneTask(n, 1, seed);
        File.WriteAllLines(path, train.Select((e, i) => JsonSerializer.Serialize(new
        {
            prompt = e.Prompt,
            chosen = " " + e.Completion,
            rejected = " " + (int.Parse(e.Completion) + 1 + (i + offset) % 7),
        })));
        return path;
    }

    private FineTuneRequest Request(string model, string data, string outDir, PreferenceOptions o, int steps = 40, bool resume = false) => new()
    {
        ModelDir = model,
        DataPath = data,
        EvalFraction = 0.2,
        Method = new MethodSpec { Method = "lora", Rank = 4, Alpha = 8, Targets = ModuleTargets.AllLinear },
        Preference = o,
        Train = new TrainOptions { Steps = steps, BatchSize = 8, LearningRate = 3e-3, LogEvery = 1, SaveEvery = 2, EvalGenerateExamples = 0, TensorBoard = false },
        OutDir = outDir,
        Resume = resume,
    };

    private static List<JsonElement> Metrics(string outDir) =>
        File.ReadAllLines(Path.Combine(outDir, TrainLoop.MetricsFile)).Select(l => JsonDocument.Parse(l).RootElement).ToList();

    [Fact]
    public void Dpo_RaisesHeldOutPreferenceAccuracy_AndLogsTrlMetrics()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Pairs(Path.Combine(_dir, "p.jsonl"), 80, 1);
        string outDir = Path.Combine(_dir, "dpo");
        var summary = FineTuning.Run(Request(model, data, outDir, new PreferenceOptions()));
        Assert.True(summary.FinalEvalAccuracy >= 0.9, $"held-out preference accuracy {summary.FinalEvalAccuracy}");
        var lines = Metrics(outDir);
        var first = lines.First(l => l.TryGetProperty("loss", out _));
        foreach (var k in new[] { "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected" })
            Assert.True(first.TryGetProperty(k, out _), $"metrics.jsonl lacks {k}");
        Assert.Equal(Math.Log(2), first.GetProperty("loss").GetDouble(), 3); // the adapter starts as the reference: x = 0
        var eval = lines.Last(l => l.TryGetProperty("eval_loss", out _));
        Assert.Equal(summary.FinalEvalAccuracy!.Value, eval.GetProperty("eval_rewards/accuracies").GetDouble(), 9);
        Assert.True(eval.GetProperty("eval_rewards/margins").GetDouble() > 0);
        Assert.Contains("\"objective\": \"dpo\"", File.ReadAllText(Path.Combine(outDir, TrainingDataRecord.FileName)));

        // eval --preference-data on pairs never trained on: the adapter against the base model, then the base alone.
        string heldOut = Pairs(Path.Combine(_dir, "heldout.jsonl"), 40, 77);
        var (rc, output, err) = Run("eval", "--model", model, "--adapter", outDir, "--preference-data", heldOut);
        Assert.True(rc == 0, err);
        var m = System.Text.RegularExpressions.Regex.Match(output, @"pairs 40: log-likelihood accuracy [0-9.]+ ?%, reward accuracy ([0-9.]+) ?%");
        Assert.True(m.Success, output);
        Assert.True(double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) >= 90, output);
        (rc, output, err) = Run("eval", "--model", model, "--preference-data", heldOut);
        Assert.True(rc == 0, err);
        Assert.Matches(@"^pairs 40: log-likelihood accuracy [0-9.]+ ?%; mean log-probability chosen", output);
    }

    [Fact]
    public void ResumedRun_EndsByteIdentical_AndPrecomputedReferenceGivesTheSameLosses()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Pairs(Path.Combine(_dir, "p.jsonl"), 40, 2);
        var o = new PreferenceOptions { Objective = PreferenceObjective.Ipo, Beta = 0.5 };
        string whole = Path.Combine(_dir, "whole"), split = Path.Combine(_dir, "split"), pre = Path.Combine(_dir, "pre");
        FineTuning.Run(Request(model, data, whole, o, steps: 6));
        using (var cts = new CancellationTokenSource())
        {
            var stop = new StopAt(3, cts);
            Assert.Throws<TrainingInterruptedException>(() => FineTuning.Run(Request(model, data, split, o, steps: 6) with { Cancellation = cts.Token }, stop));
        }
        FineTuning.Run(Request(model, data, split, o, steps: 6, resume: true));
        Assert.Equal(File.ReadAllBytes(Path.Combine(whole, AdapterFolder.WeightsFileName)), File.ReadAllBytes(Path.Combine(split, AdapterFolder.WeightsFileName)));

        FineTuning.Run(Request(model, data, pre, o with { PrecomputeReference = true }, steps: 6));
        Assert.True(File.Exists(Path.Combine(pre, PreferenceFineTune.ReferenceFile)));
        var a = Metrics(whole).Where(l => l.TryGetProperty("loss", out _)).Select(l => l.GetProperty("loss").GetDouble()).ToList();
        var b = Metrics(pre).Where(l => l.TryGetProperty("loss", out _)).Select(l => l.GetProperty("loss").GetDouble()).ToList();
        Assert.Equal(6, a.Count);
        for (int i = 0; i < a.Count; i++) Assert.True(Math.Abs(a[i] - b[i]) < 1e-4 * Math.Max(1, Math.Abs(a[i])), $"step {i + 1}: {a[i]} vs {b[i]}");
    }

    [Fact]
    public void PrecomputedReference_ResumeOnChangedData_IsRefusedWithTheReason()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Pairs(Path.Combine(_dir, "p.jsonl"), 30, 3);
        string outDir = Path.Combine(_dir, "run");
        var o = new PreferenceOptions { PrecomputeReference = true };
        using (var cts = new CancellationTokenSource())
            Assert.Throws<TrainingInterruptedException>(() => FineTuning.Run(Request(model, data, outDir, o, steps: 6) with { Cancellation = cts.Token }, new StopAt(2, cts)));
        Pairs(data, 30, 3, offset: 1); // the same prompts and count, other rejected answers
        var e = Assert.Throws<UserInputException>(() => FineTuning.Run(Request(model, data, outDir, o, steps: 6, resume: true)));
        Assert.Contains("changed since the run started", e.Message);
    }

    [Theory]
    [InlineData("dpo", "--method dora")]
    [InlineData("dpo", "--method reslora --structure is")]
    [InlineData("dpo", "--method reslora --structure bs --grad-checkpoint")]
    [InlineData("ipo", "--method reflora")]
    [InlineData("dpo", "--method lora --dtype bfloat16")]
    [InlineData("dpo", "--method lora --base-bits 4")]
    [InlineData("simpo", "--method loha")]
    [InlineData("orpo", "--method vera --rank 16")]
    [InlineData("dpo", "--method lora --init pissa")]
    [InlineData("dpo", "--method lora --loraplus-lr-ratio 16 --precondition riemannian")]
    public void EveryMethodAndBase_TrainsAPreferenceObjective_StartingAtTheReference(string objective, string flags)
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Pairs(Path.Combine(_dir, "p.jsonl"), 24, 6);
        string outDir = Path.Combine(_dir, "o");
        var (rc, output, err) = Run(new[] { "train", "--model", model, "--data", data, "--out", outDir, "--steps", "3", "--batch-size", "4",
            "--lr", "3e-3", "--log-every", "1", "--eval-fraction", "0.25", "--eval-generate", "0", "--threads", "1", "--targets", "all-linear", "--objective", objective }
            .Concat(flags.Split(' ')).ToArray());
        Assert.True(rc == 0, output + err);
        var losses = Metrics(outDir).Where(l => l.TryGetProperty("loss", out _)).Select(l => l.GetProperty("loss").GetDouble()).ToList();
        Assert.Equal(3, losses.Count);
        Assert.All(losses, l => Assert.True(double.IsFinite(l)));
        // DPO/IPO: the adapters start as the reference (x = 0): DPO's first loss is log 2, IPO's (1/(2β))² = 25.
        if (objective == "dpo") Assert.Equal(Math.Log(2), losses[0], 2);
        if (objective == "ipo") Assert.Equal(25, losses[0], 1);
        Assert.True(File.Exists(Path.Combine(outDir, AdapterFolder.WeightsFileName)));
        Assert.Contains("rewards/accuracies", File.ReadAllText(Path.Combine(outDir, TrainLoop.MetricsFile)));
    }

    [Theory]
    [InlineData(new[] { "--beta", "0.2" }, "--beta is a preference-tuning setting; add --objective")]
    [InlineData(new[] { "--objective", "orpo", "--precompute-reference" }, "orpo compares with no reference model")]
    [InlineData(new[] { "--objective", "dpo", "--orpo-lambda", "0.2" }, "--orpo-lambda is ORPO's weight")]
    [InlineData(new[] { "--objective", "orpo", "--beta", "0.2" }, "--beta is not an ORPO setting")]
    [InlineData(new[] { "--objective", "kto" }, "--objective 'kto' is not known")]
    [InlineData(new[] { "--objective", "ipo", "--label-smoothing", "0.1" }, "not to ipo")]
    [InlineData(new[] { "--objective", "dpo", "--pack" }, "Drop --pack")]
    [InlineData(new[] { "--method", "lora" }, "To train on pairs add --objective dpo")]
    public void BadFlags_AreOneLineErrorsNamingTheFix(string[] flags, string expected)
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Pairs(Path.Combine(_dir, "p.jsonl"), 10, 4);
        var (rc, _, err) = Run(new[] { "train", "--model", model, "--data", data, "--out", Path.Combine(_dir, "o"), "--steps", "1" }.Concat(flags).ToArray());
        Assert.NotEqual(0, rc);
        Assert.Contains(expected, err);
        Assert.DoesNotContain("   at ", err);
    }

    [Fact]
    public void InitAdapter_OfAnotherRank_IsRefusedNamingTheFlags_AndAMatchingOneIsTheDpoReference()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Pairs(Path.Combine(_dir, "p.jsonl"), 20, 5);
        string sft = Path.Combine(_dir, "sft");
        FineTuning.Run(Request(model, data, sft, new PreferenceOptions { Objective = PreferenceObjective.SimPo }, steps: 4));
        var wrong = Request(model, data, Path.Combine(_dir, "dpo8"), new PreferenceOptions(), steps: 2) with { InitAdapter = sft };
        wrong = wrong with { Method = wrong.Method with { Rank = 8 } };
        Assert.Contains("--rank", Assert.Throws<UserInputException>(() => FineTuning.Run(wrong)).Message);
        string dpo = Path.Combine(_dir, "dpo");
        var messages = new List<string>();
        FineTuning.Run(Request(model, data, dpo, new PreferenceOptions(), steps: 2) with { InitAdapter = sft }, new Messages(messages));
        Assert.Contains(messages, m => m.Contains("--init-adapter") && m.Contains("reference"));
        // The reference is the loaded adapter, so the first step's DPO loss is log 2 although the adapter is not zero.
        Assert.Equal(Math.Log(2), Metrics(dpo).First().GetProperty("loss").GetDouble(), 4);
    }

    private sealed class StopAt(int step, CancellationTokenSource cts) : ITrainObserver
    {
        public void OnStep(StepReport report)
        {
            if (report.Step == step) cts.Cancel();
        }
    }

    private sealed class Messages(List<string> list) : ITrainObserver
    {
        public void OnMessage(string message) => list.Add(message);
    }
}
