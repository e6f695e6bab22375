using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using ResLora.Adapters;
using ResLora.IO;
using ResLora.IO.Json;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Plots;
using ResLora.Text;
using ResLora.Training;

namespace ResLora.Demo;

/// <summary>Settings of <c>reslora demo</c>. <see cref="Quick"/> shrinks everything so CI can run it in well under a minute.</summary>
public sealed record DemoOptions
{
    public bool Quick { get; init; }
    public string OutDir { get; init; } = "reslora-demo";
    public string? CacheRoot { get; init; }
    /// <summary>Methods by label; null = every method this build has (see <see cref="DemoRunner.DefaultMethods"/>).</summary>
    public IReadOnlyList<string>? Methods { get; init; }
    public int Steps { get; init; } = 200;
    public int TrainExamples { get; init; } = 600;
    public int EvalExamples { get; init; } = 100;
    public int Rank { get; init; } = 8;
    /// <summary>The shared default setting every method runs at, and the sweep every method (LoRA included) gets.</summary>
    public double DefaultLr { get; init; } = 3e-3;
    public double DefaultAlpha { get; init; } = 16;
    /// <summary>(lr, alpha) settings besides the default that every method also runs (none by default; <c>--sweep</c>
    /// adds <see cref="StandardSweep"/>).</summary>
    public IReadOnlyList<(double Lr, double Alpha)> Sweep { get; init; } = Array.Empty<(double, double)>();

    /// <summary>The sweep <c>reslora demo --sweep</c> adds: a larger step size two ways (lr ×2, alpha ×2).</summary>
    public static readonly IReadOnlyList<(double Lr, double Alpha)> StandardSweep = new[] { (6e-3, 16.0), (3e-3, 32.0) };
    public long Seed { get; init; } = 7;
    public RuntimeOptions Runtime { get; init; } = new();
    /// <summary>The base model's size and pre-training; null = the full default, or <see cref="DemoBaseSettings.Quick"/> with <see cref="Quick"/>.</summary>
    public DemoBaseSettings? Base { get; init; }

    public static DemoOptions QuickDefaults(string outDir) => new()
    {
        Quick = true,
        OutDir = outDir,
        Steps = 30,
        TrainExamples = 96,
        EvalExamples = 16,
        Sweep = Array.Empty<(double, double)>(),
    };
}

/// <summary>
/// Where the demo is: the stage (pre-training, fine-tuning, merging), run <see cref="Run"/> of <see cref="Runs"/> and its
/// step, the whole job's fraction done (training steps weighted by their batch size) and the estimated time left
/// (elapsed × remaining ÷ done; null until something is done).
/// </summary>
public sealed record DemoProgress(string Stage, int Run, int Runs, string RunLabel, int Step, int Steps, double Fraction, double ElapsedSeconds, double? RemainingSeconds)
{
    /// <summary>A duration as the demo prints it: "4 min 05 s", or "42 s" under a minute.</summary>
    public static string Clock(double seconds) =>
        seconds >= 60 ? string.Create(CultureInfo.InvariantCulture, $"{(int)(seconds / 60)} min {(int)(seconds % 60):00} s") : string.Create(CultureInfo.InvariantCulture, $"{seconds:0} s");
}

/// <summary>One method at one setting: its run summary and the derived comparison numbers.</summary>
public sealed record DemoRun(string Label, double Lr, double Alpha, TrainSummary Summary, string AdapterDir)
{
    public double EvalLoss => Summary.FinalEvalLoss ?? double.NaN;
    public double Accuracy => Summary.FinalEvalAccuracy ?? double.NaN;
}

/// <summary>A row of the demo table: a method at the shared default and at its own best setting.</summary>
public sealed record DemoRow(string Label, DemoRun Default, DemoRun Best, double LossAtEarlyStep, int EarlyStep, int? StepsToLoraFinal, double MergeMaxDiff, double MergeMeanDiff)
{
    /// <summary>How the best adapter merges (ResLoRA is/ms: the merge --merge auto picks, the least-squares fold among them).</summary>
    public string MergeKind { get; init; } = "";
    /// <summary>Mean KL(unmerged ‖ merged) on held-out text (the demo's eval split).</summary>
    public double MergeHeldOutKl { get; init; } = double.NaN;
    public double MergeGreedyAgreement { get; init; } = double.NaN;
}

/// <summary>One held-out question answered by the merged model.</summary>
public sealed record DemoAnswer(string Prompt, string Answer, string Reference)
{
    public bool Correct => string.Equals(Answer.Trim().Split('\n')[0].Trim(), Reference.Trim(), StringComparison.Ordinal);
}

/// <summary>Everything the demo produced.</summary>
public sealed record DemoResult(string BaseModelDir, double BaseAccuracy, double BaseEvalLoss, IReadOnlyList<DemoRow> Rows, string MergedDir, MergeReport Merge, IReadOnlyList<DemoAnswer> Answers, double WallSeconds, string ReportPath, string PlotPath)
{
    /// <summary>The demo label of the merged adapter's method (lora, reslora-bs, ...).</summary>
    public string MergedLabel { get; init; } = "";

    /// <summary>Whether every method also ran the extra (lr, alpha) settings, so the best-setting columns mean something.</summary>
    public bool Swept { get; init; }
    /// <summary>The base model and each method's default-setting adapter on the held-out questions as 4-way multiple choice.</summary>
    public IReadOnlyList<DemoChoiceScore> MultipleChoice { get; init; } = Array.Empty<DemoChoiceScore>();

    public double AnswerAccuracy => Answers.Count == 0 ? double.NaN : Answers.Count(a => a.Correct) / (double)Answers.Count;
}

/// <summary>
/// The main job: pre-train (once, cached) a small base model on the generated corpus, fine-tune it on the held-out
/// multiplication problems with every method at the same budget and seed (each with the same small lr × alpha sweep),
/// then compare, plot, merge the best adapter and answer a question with the merged model.
/// </summary>
public static class DemoRunner
{
    /// <summary>The contenders every registered method offers for the demo (<see cref="MethodContender.InDemo"/>), in registry order, on all linears.</summary>
    public static IReadOnlyList<(string Label, MethodSpec Spec)> DefaultMethods(int rank) =>
        AdapterMethods.Contenders(rank).Where(c => c.InDemo)
            .Select(c => (c.Label, c.Spec with { Rank = rank, Targets = ModuleTargets.AllLinear }))
            .ToList();

    public static DemoResult Run(DemoOptions o, ITrainObserver? observer = null, Action<DemoProgress>? progress = null)
    {
        var clock = Stopwatch.StartNew();
        observer ??= SilentTrainObserver.Instance;
        var methods = DefaultMethods(o.Rank);
        if (o.Methods is { Count: > 0 } wanted)
        {
            var unknown = wanted.Where(w => methods.All(m => m.Label != w)).ToList();
            if (unknown.Count > 0) throw new UserInputException($"--methods: unknown {string.Join(", ", unknown)}; available: {string.Join(", ", methods.Select(m => m.Label))}.");
            methods = methods.Where(m => wanted.Contains(m.Label)).ToList();
            if (methods.All(m => m.Label != "lora")) methods = DefaultMethods(o.Rank).Where(m => m.Label == "lora").Concat(methods).ToList();
        }
        string outDir = Path.GetFullPath(o.OutDir);
        Directory.CreateDirectory(outDir);
        string runsDir = Path.Combine(outDir, "runs");
        if (Directory.Exists(runsDir)) Directory.Delete(runsDir, recursive: true);
        string mergedDir = Path.Combine(outDir, "merged");
        if (Directory.Exists(mergedDir)) Directory.Delete(mergedDir, recursive: true);
        var settings = new List<(double Lr, double Alpha)> { (o.DefaultLr, o.DefaultAlpha) };
        settings.AddRange(o.Sweep.Where(x => x != (o.DefaultLr, o.DefaultAlpha)));

        // 1. The base model (pre-trained once, then cached).
        var baseSettings = o.Base ?? (o.Quick ? DemoBaseSettings.Quick : new DemoBaseSettings());
        string cacheRoot = o.CacheRoot ?? DemoBaseModel.DefaultCacheRoot();
        int runCount = methods.Count * settings.Count;
        var track = new Tracker(progress, clock, DemoBaseModel.IsCached(baseSettings, cacheRoot) ? 0 : baseSettings.PretrainSteps * baseSettings.BatchSize / (double)FineTuneBatch,
            runCount * (o.Steps + EvalUnits(o)) + methods.Count * MergeUnits);
        string baseDir = DemoBaseModel.Ensure(baseSettings, cacheRoot, o.Runtime, new StageObserver(observer, r => track.Pretrain(r.Step, r.TotalSteps, baseSettings.BatchSize / (double)FineTuneBatch)));
        observer.OnMessage($"base model: {baseDir}");

        // 2. The task, written as ordinary JSONL files a user could pass to `reslora train`.
        var (train, eval) = DemoCorpus.FinetuneTask(o.TrainExamples, o.EvalExamples, (int)o.Seed);
        string dataDir = Path.Combine(outDir, "data");
        string trainPath = Path.Combine(dataDir, "train.jsonl"), evalPath = Path.Combine(dataDir, "eval.jsonl");
        WriteJsonl(trainPath, train);
        WriteJsonl(evalPath, eval);
        var tokenizer = TokenizerLoader.Load(baseDir);
        var evalExamples = eval.Select(e => new TextExample(e.Prompt, e.Completion)).ToList();
        EvalResult baseEval;
        using (var baseModel = ModelSessions.LoadBase(baseDir, o.Runtime))
            baseEval = Evaluation.Run(baseModel, tokenizer, evalExamples, 128, 16, 4, evalExamples.Count);
        observer.OnMessage(string.Create(CultureInfo.InvariantCulture, $"base model before fine-tuning: eval loss {baseEval.Loss:0.000}, accuracy {baseEval.Accuracy:P0}"));

        // 3. Every method at every setting of the sweep (the shared default is part of it).
        var runs = new List<DemoRun>();
        foreach (var (label, spec) in methods)
        {
            foreach (var (lr, alpha) in settings)
            {
                string name = string.Create(CultureInfo.InvariantCulture, $"lr{lr:0.####e0}_alpha{alpha:0.##}");
                string dir = Path.Combine(runsDir, label, name);
                var req = new FineTuneRequest
                {
                    ModelDir = baseDir,
                    DataPath = trainPath,
                    EvalDataPath = evalPath,
                    Method = spec with { Alpha = alpha },
                    Runtime = o.Runtime,
                    OutDir = dir,
                    SeqLen = 128,
                    Train = new TrainOptions
                    {
                        Steps = o.Steps,
                        BatchSize = FineTuneBatch,
                        LearningRate = lr,
                        WarmupSteps = Math.Max(1, o.Steps / 10),
                        LogEvery = Math.Max(1, o.Steps / 40),
                        Seed = o.Seed,
                        EvalGenerateExamples = o.EvalExamples,
                        MaxNewTokens = 4,
                        SaveEvery = 0,
                    },
                };
                int index = runs.Count + 1;
                string runLabel = settings.Count > 1 ? $"{label} {name}" : label;
                track.StartRun(index, runCount, runLabel, o.Steps + EvalUnits(o));
                var summary = FineTuning.Run(req, new StageObserver(null, r => track.Step(r.Step, r.TotalSteps)));
                track.EndRun();
                runs.Add(new DemoRun(label, lr, alpha, summary, dir));
                observer.OnMessage(string.Create(CultureInfo.InvariantCulture, $"run {index}/{runCount} {runLabel}: eval loss {summary.FinalEvalLoss:0.0000}, accuracy {summary.FinalEvalAccuracy:P0}, {summary.MeanStepSeconds * 1000:0} ms/step wall{track.EtaText()}"));
            }
        }

        // 4. Compare: each method at the shared default and at its own best (lowest eval loss) setting.
        var loraDefault = runs.First(r => r.Label == "lora" && r.Lr == o.DefaultLr && r.Alpha == o.DefaultAlpha);
        // The last logged (window-averaged) training loss, not the single last batch: a fair, less noisy target.
        double loraFinal = loraDefault.Summary.Curve.Count > 0 ? loraDefault.Summary.Curve[^1].Loss : loraDefault.Summary.FinalTrainLoss;
        int early = Math.Max(1, o.Steps / 4);
        using var probe = ProbeBatch(tokenizer, evalExamples);
        var rows = new List<DemoRow>();
        foreach (var (label, _) in methods)
        {
            var mine = runs.Where(r => r.Label == label).ToList();
            var def = mine.First(r => r.Lr == o.DefaultLr && r.Alpha == o.DefaultAlpha);
            var best = mine.OrderBy(r => double.IsNaN(r.EvalLoss) ? double.MaxValue : r.EvalLoss).First();
            double earlyLoss = def.Summary.Curve.Where(c => c.Step <= early).Select(c => c.Loss).DefaultIfEmpty(double.NaN).Last();
            int? reach = def.Summary.Curve.FirstOrDefault(c => c.Loss <= loraFinal)?.Step;
            // Every adapter merged the way it would ship, through --merge auto: for ResLoRA is/ms that tries bi, bw/a and the
            // least-squares fold, the closest on held-out text wins; the others merge their one way.
            track.Stage($"merging {label}");
            var m = MergePipeline.Measure(baseDir, best.AdapterDir, o.Runtime, probe, new MergeOptions { MergeKind = "auto" });
            track.Done(MergeUnits);
            rows.Add(new DemoRow(label, def, best, earlyLoss, early, reach, m.MaxAbsDiff, m.MeanAbsDiff)
            {
                MergeKind = m.Method,
                MergeHeldOutKl = m.HeldOut?.MeanKl ?? double.NaN,
                MergeGreedyAgreement = m.HeldOut?.GreedyAgreement ?? double.NaN,
            });
        }

        // 4b. The held-out questions as multiple choice, scored by log-likelihood as `eval --tasks` scores ARC.
        track.Stage("multiple-choice scoring");
        string mcTask = DemoMultipleChoice.Write(dataDir, eval, (int)o.Seed);
        var choiceScores = DemoMultipleChoice.Score(baseDir, mcTask, new[] { ("base", (string?)null) }.Concat(rows.Select(r => (r.Label, (string?)r.Default.AdapterDir))), o.Runtime);

        // 5. Plot every method's default-setting curve; merge the best adapter; answer a question with the merged model.
        string plot = Path.Combine(outDir, "loss.png");
        LossPlot.SaveComparison(plot, rows.Select(r => new LossPlot.Series(r.Label, r.Default.Summary.Curve.Select(c => (c.Step, c.Loss)).ToList(), r.Default.Summary.Evals.Select(e => (e.Step, e.Loss)).ToList())).ToList(),
            string.Create(CultureInfo.InvariantCulture, $"demo fine-tuning, lr {o.DefaultLr:0.####}, alpha {o.DefaultAlpha}, rank {o.Rank}"));
        // The adapter to merge and ship: the best accuracy among methods whose merge keeps the model (mean KL to the
        // unmerged model on held-out text below 0.01).
        var shippable = rows.Where(r => r.MergeHeldOutKl < MergeKlBudget).ToList();
        var winner = (shippable.Count > 0 ? shippable : rows).Select(r => r.Best)
            .OrderByDescending(r => double.IsNaN(r.Accuracy) ? -1 : r.Accuracy).ThenBy(r => r.EvalLoss).First();
        track.Stage($"merging {winner.Label} and answering held-out questions");
        var merge = MergePipeline.MergeToFolder(baseDir, winner.AdapterDir, mergedDir, o.Runtime, probe, new MergeOptions { MergeKind = "auto" });
        var answers = new List<DemoAnswer>();
        using (var merged = ModelSessions.LoadBase(mergedDir, o.Runtime))
        {
            var mtok = TokenizerLoader.Load(mergedDir);
            foreach (var q in eval.Take(AnsweredQuestions))
            {
                var outIds = TextGenerator.Generate(merged, Prompts.Ids(mtok, q.Prompt), new GenerationOptions { MaxNewTokens = 6, EosTokenIds = mtok.EosTokenIds });
                answers.Add(new DemoAnswer(q.Prompt, mtok.Decode(outIds.Where(i => !mtok.EosTokenIds.Contains(i))), q.Completion));
            }
        }
        string report = Path.Combine(outDir, "report.md");
        var result = new DemoResult(baseDir, baseEval.Accuracy ?? double.NaN, baseEval.Loss, rows, mergedDir, merge, answers, clock.Elapsed.TotalSeconds, report, plot) { Swept = settings.Count > 1, MergedLabel = winner.Label, MultipleChoice = choiceScores };
        AtomicFile.WriteAllText(report, DemoReport.Markdown(result, o, baseSettings));
        AtomicFile.WriteAllText(Path.Combine(outDir, "results.json"), JsonSerializer.Serialize(rows.Select(r => new
        {
            method = r.Label,
            default_setting = new { lr = r.Default.Lr, alpha = r.Default.Alpha, eval_loss = r.Default.EvalLoss, accuracy = r.Default.Accuracy, final_train_loss = r.Default.Summary.FinalTrainLoss, step_seconds = r.Default.Summary.MeanStepSeconds },
            best_setting = new { lr = r.Best.Lr, alpha = r.Best.Alpha, eval_loss = r.Best.EvalLoss, accuracy = r.Best.Accuracy, final_train_loss = r.Best.Summary.FinalTrainLoss },
            loss_at_early_step = r.LossAtEarlyStep,
            early_step = r.EarlyStep,
            steps_to_lora_final = r.StepsToLoraFinal,
            merge = r.MergeKind,
            merge_max_abs_diff = r.MergeMaxDiff,
            merge_mean_abs_diff = r.MergeMeanDiff,
            merge_heldout_mean_kl = r.MergeHeldOutKl,
            merge_heldout_greedy_agreement = r.MergeGreedyAgreement,
        }), ReportJson.Indented));
        return result;
    }

    /// <summary>The held-out KL below which a merge counts as keeping the model (the adapter may ship merged).</summary>
    public const double MergeKlBudget = 0.01;

    /// <summary>Held-out questions the merged model answers at the end.</summary>
    public const int AnsweredQuestions = 5;

    private static torch.Tensor ProbeBatch(ITextTokenizer tok, IReadOnlyList<TextExample> eval)
    {
        var ids = new List<long>();
        if (tok.AddBosToken && tok.BosTokenId is { } bos) ids.Add(bos);
        ids.AddRange(tok.Encode(eval[0].Prompt + eval[0].Completion).Select(i => (long)i));
        return torch.tensor(ids.ToArray()).unsqueeze(0);
    }

    private static void WriteJsonl(string path, IEnumerable<DemoExample> items) =>
        AtomicFile.WriteAllText(path, string.Concat(items.Select(e => JsonSerializer.Serialize(new { prompt = e.Prompt, completion = e.Completion }, ReportJson.Line) + "\n")));

    /// <summary>The batch size of every fine-tuning run (a step's unit of work in the progress estimate).</summary>
    public const int FineTuneBatch = 16;

    /// <summary>Progress units of one merge measurement (about a few fine-tuning steps' time).</summary>
    private const double MergeUnits = 8;

    /// <summary>Progress units of a run's closing evaluation: generating answers to the held-out problems.</summary>
    private static double EvalUnits(DemoOptions o) => Math.Max(2, o.EvalExamples / 4.0);

    /// <summary>Forwards messages to an outer observer (when given) and step reports to a callback.</summary>
    private sealed class StageObserver(ITrainObserver? outer, Action<StepReport> onStep) : ITrainObserver
    {
        public void OnStep(StepReport report) => onStep(report);
        public void OnMessage(string message) => outer?.OnMessage(message);
    }

    /// <summary>Turns stage, run and step into <see cref="DemoProgress"/>: fraction of weighted units done and time left.</summary>
    private sealed class Tracker(Action<DemoProgress>? sink, Stopwatch clock, double pretrainUnits, double restUnits)
    {
        private readonly double _total = Math.Max(1, pretrainUnits + restUnits);
        private double _done, _runBase, _runUnits;
        private int _run, _runs, _steps, _step;
        private string _label = "", _stage = "pre-training";

        public void Pretrain(int step, int steps, double unitsPerStep)
        {
            _stage = "pre-training the base model";
            _done = step * unitsPerStep;
            _step = step;
            _steps = steps;
            Emit();
        }

        public void StartRun(int index, int count, string label, double units)
        {
            _runBase = Math.Max(_done, pretrainUnits);
            _done = _runBase;
            _runUnits = units;
            (_run, _runs, _label, _stage, _step, _steps) = (index, count, label, "fine-tuning", 0, 0);
            Emit();
        }

        public void Step(int step, int steps)
        {
            (_step, _steps) = (step, steps);
            _done = _runBase + step;
            Emit();
        }

        public void EndRun()
        {
            _done = _runBase + _runUnits;
            Emit();
        }

        public void Stage(string stage)
        {
            _stage = stage;
            (_step, _steps, _label) = (0, 0, "");
            Emit();
        }

        public void Done(double units)
        {
            _done += units;
            Emit();
        }

        public double? Remaining()
        {
            double f = Math.Clamp(_done / _total, 0, 1), elapsed = clock.Elapsed.TotalSeconds;
            return f > 0.005 && elapsed > 1 ? elapsed * (1 - f) / f : null;
        }

        public string EtaText() => Remaining() is { } r ? $"; about {DemoProgress.Clock(r)} left" : "";

        private void Emit() => sink?.Invoke(new DemoProgress(_stage, _run, _runs, _label, _step, _steps, Math.Clamp(_done / _total, 0, 1), clock.Elapsed.TotalSeconds, Remaining()));
    }
}
