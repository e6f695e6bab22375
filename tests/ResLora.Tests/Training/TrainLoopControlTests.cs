using System.Text.Json.Nodes;
using ResLora.IO;
using ResLora.Models;
using ResLora.Tests.Infrastructure;
using ResLora.Training;
using TorchSharp;

namespace ResLora.Tests.Training;

/// <summary>
/// What controls a run besides its steps (issue 27): adapter snapshots (checkpoint-N, --save-total-limit), early
/// stopping on the eval loss, and a stop request (Ctrl+C) that leaves a checkpoint resume continues from exactly.
/// </summary>
public sealed class TrainLoopControlTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-control-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static List<TextExample> CopyTask(int n, int seed) => TrainLoopTests.CopyTask(n, seed);

    /// <summary>A run of the copy task over all of the tiny model's weights (saved as weights.safetensors).</summary>
    private static TrainRunSpec Spec(CausalLM model, string outDir, TrainOptions o, bool resume = false, bool withEval = true, CancellationToken cancel = default, int cancelAtStep = 0, CancellationTokenSource? cts = null)
    {
        var tok = new CharTokenizer();
        var train = Tokenization.Tokenize(CopyTask(64, 1), tok, 16).Examples;
        var evalEx = withEval ? CopyTask(20, 2) : new List<TextExample>();
        ITrainTask task = new CausalLmTask(model, tok, train, Tokenization.Tokenize(evalEx, tok, 16).Examples, evalEx);
        if (cts is not null) task = new CancelDuringStep(task, cancelAtStep, cts);
        return new TrainRunSpec
        {
            Task = task,
            Options = o,
            OutDir = outDir,
            Method = "full",
            Resume = resume,
            Cancellation = cancel,
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

    /// <summary>The task, with a stop requested while step <c>step</c> runs (its forward pass; evaluation does not call it): Ctrl+C mid-step.</summary>
    private sealed class CancelDuringStep(ITrainTask inner, int step, CancellationTokenSource cts) : ITrainTask
    {
        private int _forwards;
        public torch.nn.Module Model => inner.Model;
        public int TrainCount => inner.TrainCount;
        public bool HasEval => inner.HasEval;
        public ITrainBatchSource CreateBatchSource(TrainOptions options) => inner.CreateBatchSource(options);
        public (torch.Tensor Loss, long Tokens) Loss(torch.Tensor output, TrainBatch batch) => inner.Loss(output, batch);
        public EvalReport Evaluate(Trainer trainer, int s, TrainOptions options) => inner.Evaluate(trainer, s, options);

        public torch.Tensor Forward(TrainBatch batch)
        {
            if (++_forwards == step) cts.Cancel();
            return inner.Forward(batch);
        }
    }

    private static TinyModel Model(long seed = 6) => new(TinyModels.Build(TinyModels.Config(vocab: 99), seed));

    private sealed record TinyModel(CausalLM M) : IDisposable
    {
        public void Dispose() => M.Dispose();
    }

    [Fact]
    public void StopRequest_MidRun_SavesACheckpointThatResumeContinuesExactly()
    {
        // Logging every 3 steps and a stop during step 5: the open window (steps 4-5) must survive the resume too.
        var o = new TrainOptions { Steps = 12, BatchSize = 8, LearningRate = 2e-3, LogEvery = 3, SaveEvery = 0, EvalGenerateExamples = 0 };
        string a = Path.Combine(_dir, "whole"), b = Path.Combine(_dir, "stopped");
        TrainSummary whole;
        using (var m = Model()) whole = TrainLoop.Run(Spec(m.M, a, o));

        using (var cts = new CancellationTokenSource())
        using (var m = Model())
        {
            var e = Assert.Throws<TrainingInterruptedException>(() => TrainLoop.Run(Spec(m.M, b, o, cancel: cts.Token, cancelAtStep: 5, cts: cts)));
            Assert.Equal(5, e.Step);
            Assert.Equal(12, e.TotalSteps);
            Assert.Equal(Path.Combine(b, TrainCheckpoint.FolderName), e.CheckpointDir);
        }
        string ckpt = TrainCheckpoint.Find(b)!;
        Assert.NotNull(ckpt);
        Assert.Equal(5, TrainCheckpoint.ReadState(ckpt).Step);
        Assert.False(File.Exists(Path.Combine(b, TrainLoop.SummaryFile))); // not a finished run
        Assert.False(File.Exists(Path.Combine(b, "weights.safetensors")));

        TrainSummary resumed;
        using (var m = Model(seed: 77)) resumed = TrainLoop.Run(Spec(m.M, b, o, resume: true));
        Assert.Equal(5, resumed.ResumedFromStep);
        Assert.Equal(whole.Curve.Select(c => c.Step), resumed.Curve.Select(c => c.Step));
        Assert.Equal(whole.Curve.Select(c => c.Loss), resumed.Curve.Select(c => c.Loss));
        Assert.Equal(whole.FinalTrainLoss, resumed.FinalTrainLoss);
        Assert.Equal(whole.FinalEvalLoss, resumed.FinalEvalLoss);
    }

    [Fact]
    public void StopRequest_OnTheLastStep_FinishesTheRun()
    {
        var o = new TrainOptions { Steps = 3, BatchSize = 8, LearningRate = 2e-3, LogEvery = 1, SaveEvery = 0, EvalGenerateExamples = 0 };
        using var cts = new CancellationTokenSource();
        using var m = Model();
        var summary = TrainLoop.Run(Spec(m.M, _dir, o, cancel: cts.Token, cancelAtStep: 3, cts: cts));
        Assert.Equal(3, summary.Steps);
        Assert.True(File.Exists(Path.Combine(_dir, TrainLoop.SummaryFile)));
    }

    [Fact]
    public void SaveEvery_WritesLoadableSnapshots_AndKeepsTheNewestSaveTotalLimit()
    {
        var o = new TrainOptions { Steps = 12, BatchSize = 8, LearningRate = 2e-3, LogEvery = 4, SaveEvery = 3, SnapshotEvery = 3, SaveTotalLimit = 2, EvalGenerateExamples = 0 };
        using (var m = Model()) TrainLoop.Run(Spec(m.M, _dir, o));
        // Steps 3, 6, 9 were snapshotted (12 is the final adapter in the folder itself); the newest 2 are kept.
        Assert.Equal(new[] { "checkpoint-6", "checkpoint-9" }, TrainCheckpoint.Snapshots(_dir).Select(s => Path.GetFileName(s.Dir)));

        // checkpoint-9 is the weights after step 9: the resume checkpoint of a run stopped there holds the same.
        string other = Path.Combine(_dir, "other");
        using (var cts = new CancellationTokenSource())
        using (var m = Model())
            Assert.Throws<TrainingInterruptedException>(() => TrainLoop.Run(Spec(m.M, other, o with { SaveEvery = 0, SnapshotEvery = 0, SaveTotalLimit = 0 }, cancel: cts.Token, cancelAtStep: 9, cts: cts)));
        using var snap = SafetensorsFile.Open(Path.Combine(_dir, "checkpoint-9", "weights.safetensors"));
        using var atStop = SafetensorsFile.Open(Path.Combine(other, TrainCheckpoint.FolderName, "adapter", "weights.safetensors"));
        foreach (var e in snap.Entries)
        {
            using var x = snap.Load(e.Name);
            using var y = atStop.Load(e.Name);
            Assert.True(x.allclose(y, rtol: 0, atol: 0), e.Name);
        }

        // A new run in the folder (overwrite) starts without the old run's snapshots.
        using (var m = Model()) TrainLoop.Run(Spec(m.M, _dir, o with { Steps = 4, SaveEvery = 0, SnapshotEvery = 0, SaveTotalLimit = 0 }));
        Assert.Empty(TrainCheckpoint.Snapshots(_dir));
    }

    [Fact]
    public void EarlyStopping_CountsLikeHuggingFace()
    {
        static EvalReport E(int step, double loss) => new(step, loss, Math.Exp(loss), null, 10);
        var evals = new[] { E(1, 1.0), E(2, 0.9), E(3, 0.95), E(4, 0.89), E(5, 0.8895) };
        // 0.9 and 0.89 improve by more than 0.005 (count reset); 0.95 does not; 0.8895 is lower but by too little.
        var (without, best, bestStep) = EarlyStopping.Count(evals, threshold: 0.005);
        Assert.Equal((1, 0.8895, 5), (without, best, bestStep));
        Assert.False(EarlyStopping.ShouldStop(evals, patience: 2, threshold: 0.005));
        Assert.True(EarlyStopping.ShouldStop(evals.Append(E(6, 0.889)), patience: 2, threshold: 0.005));
        Assert.True(EarlyStopping.ShouldStop(evals, patience: 1, threshold: 0.005));
        Assert.False(EarlyStopping.ShouldStop(evals, patience: 0, threshold: 0.005)); // off
        Assert.False(EarlyStopping.ShouldStop(evals, patience: 1, threshold: 0)); // 0.8895 < 0.89 improves with no threshold
    }

    [Fact]
    public void EarlyStopping_OnAPlateau_StopsAndRecordsIt_AndResumeFindsTheRunComplete()
    {
        // A learning rate this small leaves the eval loss flat to far below the threshold: every evaluation after the
        // first is "no improvement", so with patience 2 the run stops at the third evaluation (step 6 of 40).
        var o = new TrainOptions { Steps = 40, BatchSize = 8, LearningRate = 1e-9, LogEvery = 5, EvalEvery = 2, SaveEvery = 0, EvalGenerateExamples = 0, EarlyStoppingPatience = 2, EarlyStoppingThreshold = 1e-3 };
        TrainSummary s;
        using (var m = Model()) s = TrainLoop.Run(Spec(m.M, _dir, o));
        Assert.Equal(6, s.Steps);
        Assert.True(s.StoppedEarly);
        Assert.Equal(40, s.PlannedSteps);
        Assert.Equal(s.Evals.Min(e => e.Loss), s.BestEvalLoss); // the lowest, though no drop beat the threshold
        Assert.Equal(s.Evals.MinBy(e => e.Loss)!.Step, s.BestEvalStep);
        Assert.True(s.Evals.Max(e => e.Loss) - s.Evals.Min(e => e.Loss) < 1e-3, "the eval loss was meant to be flat");
        Assert.Equal(new[] { 2, 4, 6 }, s.Evals.Select(e => e.Step));
        Assert.Equal(s.Evals[^1].Loss, s.FinalEvalLoss);
        Assert.Equal(6, s.Curve[^1].Step); // the stopping step is logged though 6 is not a multiple of --log-every
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, TrainLoop.SummaryFile)))!;
        Assert.True(json["stopped_early"]!.GetValue<bool>());
        Assert.Equal(6, json["steps"]!.GetValue<int>());
        Assert.Equal(6, TrainCheckpoint.ReadState(TrainCheckpoint.Find(_dir)!).Step);
        Assert.True(File.Exists(Path.Combine(_dir, "weights.safetensors")));

        byte[] metrics = File.ReadAllBytes(Path.Combine(_dir, TrainLoop.MetricsFile));
        TrainSummary again;
        using (var m = Model(seed: 77)) again = TrainLoop.Run(Spec(m.M, _dir, o, resume: true));
        Assert.Equal(6, again.Steps);
        Assert.Equal(metrics, File.ReadAllBytes(Path.Combine(_dir, TrainLoop.MetricsFile))); // nothing trained or evaluated again
    }

    [Fact]
    public void EarlyStopping_WhileImproving_RunsToTheEnd()
    {
        var o = new TrainOptions { Steps = 12, BatchSize = 8, LearningRate = 3e-3, LogEvery = 4, EvalEvery = 3, SaveEvery = 0, EvalGenerateExamples = 0, EarlyStoppingPatience = 3 };
        using var m = Model();
        var s = TrainLoop.Run(Spec(m.M, _dir, o));
        Assert.Equal(12, s.Steps);
        Assert.Null(s.StoppedEarly);
    }

    [Fact]
    public void EarlyStopping_WithoutEvalDataOrEvalEvery_IsAClearError()
    {
        using var m = Model();
        var noEval = Assert.Throws<UserInputException>(() => TrainLoop.Run(Spec(m.M, _dir, new TrainOptions { Steps = 4, EvalEvery = 2, EarlyStoppingPatience = 2 }, withEval: false)));
        Assert.Contains("--early-stopping-patience", noEval.Message);
        Assert.Contains("--eval-data", noEval.Message);
        var noEvery = Assert.Throws<UserInputException>(() => TrainLoop.Run(Spec(m.M, _dir, new TrainOptions { Steps = 4, EarlyStoppingPatience = 2 })));
        Assert.Contains("--eval-every", noEvery.Message);
        var limit = Assert.Throws<UserInputException>(() => TrainLoop.Run(Spec(m.M, _dir, new TrainOptions { Steps = 4, SaveEvery = 0, SaveTotalLimit = 2 })));
        Assert.Contains("--snapshot-every", limit.Message);
    }
}
