using ResLora.IO;
using ResLora.Models;
using ResLora.Tests.Infrastructure;
using ResLora.Training;
using TorchSharp;

namespace ResLora.Tests.Training;

public sealed class TrainLoopTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-train-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>Copy task: "k=7;" → "7". Random guessing over 10 digits gets 10%.</summary>
    internal static List<TextExample> CopyTask(int n, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => { int d = r.Next(10); return new TextExample($"k={d};", $"{d}"); }).ToList();
    }

    private static TrainRunSpec Spec(CausalLM model, string outDir, TrainOptions o, bool resume = false)
    {
        var tok = new CharTokenizer();
        var train = Tokenization.Tokenize(CopyTask(64, 1), tok, 16).Examples;
        var evalEx = CopyTask(20, 2);
        return new TrainRunSpec
        {
            Task = new CausalLmTask(model, tok, train, Tokenization.Tokenize(evalEx, tok, 16).Examples, evalEx),
            Options = o,
            OutDir = outDir,
            Method = "full",
            Resume = resume,
            SaveWeights = dir =>
            {
                Directory.CreateDirectory(dir);
                SafetensorsWriter.Write(Path.Combine(dir, "weights.safetensors"), model.named_parameters().Select(p => new KeyValuePair<string, torch.Tensor>(p.name, p.parameter)));
            },
            LoadWeights = dir =>
            {
                using var f = SafetensorsFile.Open(Path.Combine(dir, "weights.safetensors"));
                using var noGrad = torch.no_grad();
                foreach (var (name, p) in model.named_parameters())
                {
                    using var t = f.Load(name);
                    p.copy_(t);
                }
            },
        };
    }

    [Fact]
    public void TinyModel_LearnsTheCopyTask_AndWritesItsOutputs()
    {
        using var model = TinyModels.Build(TinyModels.Config(vocab: 99), seed: 5);
        var o = new TrainOptions { Steps = 120, BatchSize = 16, LearningRate = 3e-3, WarmupSteps = 10, LogEvery = 10, EvalGenerateExamples = 20, MaxNewTokens = 3 };
        var finished = new FinishRecorder();
        var summary = TrainLoop.Run(Spec(model, _dir, o), finished);
        double first = summary.Curve[0].Loss;
        Assert.True(summary.FinalTrainLoss < 0.3 * first, $"loss {first} → {summary.FinalTrainLoss}");
        Assert.True(summary.FinalEvalAccuracy > 0.5, $"accuracy {summary.FinalEvalAccuracy}");
        Assert.Same(summary, finished.Summary); // the observer gets the finished run (the CLI plots it)
        Assert.Equal(_dir, finished.OutDir);
        Assert.Equal(12, finished.Summary!.Curve.Count);
        Assert.Contains("\"final_eval_accuracy\"", File.ReadAllText(Path.Combine(_dir, TrainLoop.SummaryFile)));
        var lines = File.ReadAllLines(Path.Combine(_dir, TrainLoop.MetricsFile));
        Assert.Equal(12, lines.Count(l => l.Contains("\"loss\"")));
        Assert.Equal(1, lines.Count(l => l.Contains("eval_loss")));
        Assert.NotNull(TrainCheckpoint.Find(_dir));
        Assert.Empty(Directory.GetFiles(_dir, ".*tmp*", SearchOption.AllDirectories));
    }

    private sealed class KillAt(int step) : ITrainObserver
    {
        public void OnStep(StepReport report)
        {
            if (report.Step == step) throw new OperationCanceledException("simulated kill");
        }
    }

    [Fact]
    public void KilledAndResumedRun_MatchesTheUninterruptedRun()
    {
        var (o, a, b, whole) = WholeRunAndOneKilledAtStep10();
        TrainSummary resumed;
        using (var m = TinyModels.Build(TinyModels.Config(vocab: 99), seed: 77)) // different init: everything must come from the checkpoint
            resumed = TrainLoop.Run(Spec(m, b, o, resume: true));
        Assert.Equal(8, resumed.ResumedFromStep);
        Assert.Equal(whole.Curve.Select(c => c.Loss), resumed.Curve.Select(c => c.Loss));
        Assert.Equal(whole.FinalEvalLoss, resumed.FinalEvalLoss);
        Assert.Equal(12, File.ReadAllLines(Path.Combine(b, TrainLoop.MetricsFile)).Count(l => l.Contains("\"loss\"")));
    }

    [Fact]
    public void Resume_WithATornLastMetricsLine_DropsItAndMatchesTheUninterruptedRun()
    {
        var (o, a, b, whole) = WholeRunAndOneKilledAtStep10();
        File.AppendAllText(Path.Combine(b, TrainLoop.MetricsFile), "{\"step\": 11, \"lo"); // a crash mid-append
        TrainSummary resumed;
        using (var m = TinyModels.Build(TinyModels.Config(vocab: 99), seed: 77))
            resumed = TrainLoop.Run(Spec(m, b, o, resume: true));
        Assert.Equal(whole.Curve.Select(c => c.Loss), resumed.Curve.Select(c => c.Loss));
        Assert.All(File.ReadAllLines(Path.Combine(b, TrainLoop.MetricsFile)), l => System.Text.Json.JsonDocument.Parse(l).Dispose());
    }

    [Fact]
    public void Run_WithANonFiniteFinalEvalLoss_StillWritesTheAdapterCheckpointAndSummary()
    {
        var o = new TrainOptions { Steps = 4, BatchSize = 8, LearningRate = 2e-3, LogEvery = 1, SaveEvery = 0, EvalGenerateExamples = 0 };
        string dir = Path.Combine(_dir, "nan");
        using var m = TinyModels.Build(TinyModels.Config(vocab: 99), seed: 6);
        var summary = TrainLoop.Run(Spec(m, dir, o), new PoisonAfter(4, m)); // the model diverges after the last step
        Assert.True(double.IsNaN(summary.FinalEvalLoss!.Value));
        Assert.Contains("\"NaN\"", File.ReadAllText(Path.Combine(dir, TrainLoop.SummaryFile)));
        Assert.True(File.Exists(Path.Combine(dir, "weights.safetensors")));
        Assert.NotNull(TrainCheckpoint.Find(dir));
        Assert.Contains("\"eval_loss\":\"NaN\"", File.ReadAllText(Path.Combine(dir, TrainLoop.MetricsFile)));
    }

    [Fact]
    public void Resume_OfAFinishedRun_AddsNoEvalLine_AndKeepsTheSummaryAndFinalTrainLoss()
    {
        var o = new TrainOptions { Steps = 6, BatchSize = 8, LearningRate = 2e-3, LogEvery = 3, SaveEvery = 0, EvalGenerateExamples = 0 };
        string dir = Path.Combine(_dir, "done");
        TrainSummary first;
        using (var m = TinyModels.Build(TinyModels.Config(vocab: 99), seed: 6)) first = TrainLoop.Run(Spec(m, dir, o));
        byte[] metrics = File.ReadAllBytes(Path.Combine(dir, TrainLoop.MetricsFile));
        byte[] summary = File.ReadAllBytes(Path.Combine(dir, TrainLoop.SummaryFile));
        byte[] weights = File.ReadAllBytes(Path.Combine(dir, "weights.safetensors"));
        // The summary's final train loss is the last step's, not the mean of the last logging window.
        Assert.NotEqual(first.Curve[^1].Loss, first.FinalTrainLoss);

        TrainSummary again;
        using (var m = TinyModels.Build(TinyModels.Config(vocab: 99), seed: 77)) again = TrainLoop.Run(Spec(m, dir, o, resume: true));
        Assert.Equal(metrics, File.ReadAllBytes(Path.Combine(dir, TrainLoop.MetricsFile))); // no second final eval line
        Assert.Equal(summary, File.ReadAllBytes(Path.Combine(dir, TrainLoop.SummaryFile)));
        Assert.Equal(weights, File.ReadAllBytes(Path.Combine(dir, "weights.safetensors"))); // rewritten from the checkpoint
        Assert.Equal(first.FinalTrainLoss, again.FinalTrainLoss);
        Assert.Equal(first.FinalEvalLoss, again.FinalEvalLoss);

        // A kill after the final checkpoint but before the summary: the resume writes it with the last step's loss.
        File.Delete(Path.Combine(dir, TrainLoop.SummaryFile));
        using (var m = TinyModels.Build(TinyModels.Config(vocab: 99), seed: 77)) again = TrainLoop.Run(Spec(m, dir, o, resume: true));
        Assert.Equal(first.FinalTrainLoss, again.FinalTrainLoss);
        Assert.Equal(metrics, File.ReadAllBytes(Path.Combine(dir, TrainLoop.MetricsFile)));
    }

    [Theory]
    [InlineData("--lr", 4e-3, 8, "--lr 0.004 (the checkpoint was trained with 0.002)")]
    [InlineData("--batch-size", 2e-3, 4, "--batch-size 4 (the checkpoint was trained with 8)")]
    public void Resume_WithAChangedHyperparameter_IsRefusedNamingTheFlagAndBothValues(string flag, double lr, int batch, string expected)
    {
        var (o, _, b, _) = WholeRunAndOneKilledAtStep10();
        using var m = TinyModels.Build(TinyModels.Config(vocab: 99), seed: 77);
        var e = Assert.Throws<UserInputException>(() => TrainLoop.Run(Spec(m, b, o with { LearningRate = lr, BatchSize = batch }, resume: true)));
        Assert.Contains(expected, e.Message);
        Assert.Contains("start a new run", e.Message);
        Assert.Contains(flag, e.Message);
        // Cadence is free to change.
        TrainLoop.Run(Spec(m, b, o with { LogEvery = 2, EvalEvery = 3 }, resume: true));
    }

    /// <summary>Sets the output head to NaN once step <c>step</c> is logged (before the final evaluation).</summary>
    private sealed class PoisonAfter(int step, CausalLM model) : ITrainObserver
    {
        public void OnStep(StepReport report)
        {
            if (report.Step != step) return;
            using var _ = torch.no_grad();
            model.named_parameters().First(p => p.name == "lm_head.weight").parameter.fill_(double.NaN);
        }
    }

    /// <summary>A 12-step run in a/, and the same run killed at step 10 in b/ (its last checkpoint at step 8).</summary>
    private (TrainOptions O, string A, string B, TrainSummary Whole) WholeRunAndOneKilledAtStep10()
    {
        var o = new TrainOptions { Steps = 12, BatchSize = 8, LearningRate = 2e-3, LogEvery = 1, SaveEvery = 4, EvalGenerateExamples = 0 };
        string a = Path.Combine(_dir, "a"), b = Path.Combine(_dir, "b");
        TrainSummary whole;
        using (var m = TinyModels.Build(TinyModels.Config(vocab: 99), seed: 6)) whole = TrainLoop.Run(Spec(m, a, o));
        using (var m = TinyModels.Build(TinyModels.Config(vocab: 99), seed: 6))
            Assert.Throws<OperationCanceledException>(() => TrainLoop.Run(Spec(m, b, o), new KillAt(10)));
        return (o, a, b, whole);
    }

    [Fact]
    public void Run_WritesTensorBoardEvents_ForEveryLoggedStepAndEvaluation()
    {
        var o = new TrainOptions { Steps = 6, BatchSize = 8, LearningRate = 2e-3, LogEvery = 2, EvalEvery = 3, EvalGenerateExamples = 4, MaxNewTokens = 2 };
        using var m = TinyModels.Build(TinyModels.Config(vocab: 99), seed: 6);
        var summary = TrainLoop.Run(Spec(m, _dir, o));
        var scalars = TensorBoardEvents.Read(_dir);
        Assert.Equal(new long[] { 2, 4, 6 }, scalars.Where(s => s.Tag == "train/loss").Select(s => s.Step));
        Assert.Equal(summary.Curve.Select(c => (float)c.Loss), scalars.Where(s => s.Tag == "train/loss").Select(s => s.Value));
        Assert.Equal(summary.Curve.Select(c => (float)c.LearningRate), scalars.Where(s => s.Tag == "train/learning_rate").Select(s => s.Value));
        Assert.Equal(3, scalars.Count(s => s.Tag == "train/tokens_per_second"));
        Assert.Equal(new long[] { 3, 6 }, scalars.Where(s => s.Tag == "eval/loss").Select(s => s.Step));
        Assert.Equal((float)summary.FinalEvalLoss!.Value, scalars.Last(s => s.Tag == "eval/loss").Value);
        Assert.Equal(2, scalars.Count(s => s.Tag == "eval/perplexity"));
        Assert.Equal(2, scalars.Count(s => s.Tag == "eval/accuracy"));
    }

    [Fact]
    public void Resume_RewritesTheEventFile_WithoutTheStepsLoggedAfterTheCheckpoint()
    {
        var (o, a, b, whole) = WholeRunAndOneKilledAtStep10();
        Assert.Equal(10, TensorBoardEvents.Read(b).Count(s => s.Tag == "train/loss")); // the killed run logged steps 1-10
        using (var m = TinyModels.Build(TinyModels.Config(vocab: 99), seed: 77))
            TrainLoop.Run(Spec(m, b, o, resume: true));
        var losses = TensorBoardEvents.Read(b).Where(s => s.Tag == "train/loss").ToList();
        Assert.Equal(Enumerable.Range(1, 12).Select(i => (long)i), losses.Select(s => s.Step));
        Assert.Equal(whole.Curve.Select(c => (float)c.Loss), losses.Select(s => s.Value));
        Assert.Single(Directory.GetFiles(b, "events.out.tfevents.*"));
    }

    private sealed class FinishRecorder : ITrainObserver
    {
        public TrainSummary? Summary;
        public string? OutDir;
        public void OnFinish(TrainSummary summary, string outDir) => (Summary, OutDir) = (summary, outDir);
    }
}
