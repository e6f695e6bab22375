using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.IO;
using ResLora.IO.Json;
using ResLora.Models;

namespace ResLora.Training;

/// <summary>
/// The run around <see cref="Trainer"/>: step loop, periodic evaluation, metrics.jsonl, checkpoints with exact
/// resume, the final weights and train_summary.json. Nothing it writes is ever half-written.
/// </summary>
public static class TrainLoop
{
    public const string MetricsFile = "metrics.jsonl";
    public const string SummaryFile = "train_summary.json";

    public static TrainSummary Run(TrainRunSpec spec, ITrainObserver? observer = null)
    {
        observer ??= SilentTrainObserver.Instance;
        var o = spec.Options;
        var comm = spec.Communicator;
        // One process, or rank 0 of a data-parallel job: the only writer of files, logs and evaluations.
        bool writes = comm is null || comm.Rank == 0;
        if (!writes) observer = SilentTrainObserver.Instance;
        o.Validate();
        if (comm is not null && o.BatchSize < comm.Size)
            throw new Distributed.AgreedStopException($"--batch-size {o.BatchSize} is the global batch of a data-parallel job and must be at least its {comm.Size} ranks (each rank takes a share of every batch); raise --batch-size or start fewer ranks.");
        if (comm is not null)
            observer.OnMessage($"data-parallel over {comm.Size} ranks: each takes about {o.BatchSize / comm.Size} of the {o.BatchSize} sequences of every batch; rank 0 writes");
        if (o.TensorBoard && writes) observer = new TensorBoardLog(observer, spec.OutDir);
        if (writes) Directory.CreateDirectory(spec.OutDir);
        var task = spec.Task;
        if (o.EarlyStoppingPatience > 0 && !task.HasEval)
            throw new UserInputException($"--early-stopping-patience {o.EarlyStoppingPatience} compares evaluation losses, and this run has no evaluation data; give --eval-data FILE or --eval-fraction F (above 0), or drop --early-stopping-patience.");
        var trainer = new Trainer(task.Model, task.Forward, o, spec.Capabilities, task.Loss) { Communicator = comm };
        int total = o.TotalSteps(task.TrainCount);
        var data = task.CreateBatchSource(o);
        using var optimizer = trainer.CreateOptimizer();
        torch.manual_seed(o.Seed);

        int startStep = 0;
        double elapsedBefore = 0;
        string metricsPath = Path.Combine(spec.OutDir, MetricsFile);
        var curve = new List<StepReport>();
        var evals = new List<EvalReport>();
        var settings = Settings(spec);
        double? savedLastLoss = null;
        double lossAcc = 0; int accSteps = 0;
        int end = total; // the last step: the planned one, or where early stopping ended the run
        bool stoppedEarly = false;
        if (spec.Resume && TrainCheckpoint.Find(spec.OutDir) is { } ckpt)
        {
            if (writes) TrainCheckpoint.RemoveStalePrevious(spec.OutDir);
            var state = TrainCheckpoint.ReadState(ckpt);
            if (state.Method != spec.Method)
                throw new UserInputException($"{ckpt}: the checkpoint was written by method '{state.Method}', not '{spec.Method}'; use the same --method or a new --out folder.");
            if (state.TotalSteps != total)
                throw new UserInputException($"{ckpt}: the checkpoint belongs to a run of {state.TotalSteps} steps, this one has {total}; resume with the same --steps/--epochs.");
            var changed = (state.Settings ?? new()).Where(kv => settings.TryGetValue(kv.Key, out var now) && now != kv.Value)
                .Select(kv => $"{kv.Key} {settings[kv.Key]} (the checkpoint was trained with {kv.Value})").ToList();
            if (changed.Count > 0)
                throw new UserInputException($"{ckpt}: this resume changes {string.Join(", ", changed)}; a resumed run must keep the settings of the run it continues. Resume with the checkpoint's values, or start a new run (another --out folder, or --overwrite).");
            savedLastLoss = state.LastTrainLoss;
            spec.LoadWeights(Path.Combine(ckpt, "adapter"));
            TrainCheckpoint.RestoreOptimizerAndRng(ckpt, optimizer);
            data.RestorePosition(state.DataPosition);
            startStep = state.Step;
            elapsedBefore = state.ElapsedSeconds;
            (lossAcc, accSteps) = (state.WindowLossSum ?? 0, state.WindowSteps ?? 0);
            if (state.StoppedEarly == true) (end, stoppedEarly) = (startStep, true);
            if (writes) (curve, evals) = TrimMetrics(metricsPath, startStep);
            if (writes) TrainCheckpoint.RemoveSnapshotsAfter(spec.OutDir, startStep);
            observer.OnMessage(startStep == end
                ? $"the run is complete ({end} steps{(stoppedEarly ? ", stopped early" : "")}): nothing to train; its adapter is written again from {ckpt}"
                : $"resuming from step {startStep} ({ckpt})");
        }
        else if (writes)
        {
            // A new run starts from nothing: a previous run's checkpoint, metrics and summary would mix with this one's.
            TrainCheckpoint.Delete(spec.OutDir);
            foreach (var f in new[] { metricsPath, Path.Combine(spec.OutDir, SummaryFile) })
                if (File.Exists(f)) File.Delete(f);
        }

        if (comm is not null) Distributed.DataParallel.CheckSameStart(comm, startStep, trainer.TrainableParameters);
        observer.OnStart(total, startStep);
        var clock = Stopwatch.StartNew();
        long tokAcc = 0; double windowStart = 0, mpiSeconds = 0;
        double lastLoss = savedLastLoss ?? (curve.Count > 0 ? curve[^1].Loss : double.NaN);
        // Ctrl+C is honoured in one process; the ranks of a data-parallel job would have to agree on the step.
        var cancel = comm is null ? spec.Cancellation : CancellationToken.None;
        for (int step = startStep + 1; step <= end; step++)
        {
            var (loss, _, inputTokens) = trainer.Step(optimizer, data, step, total);
            mpiSeconds += trainer.LastAllReduceSeconds;
            lossAcc += loss; tokAcc += inputTokens; accSteps++;
            lastLoss = loss;
            void Log()
            {
                double now = clock.Elapsed.TotalSeconds;
                var report = new StepReport(step, total, lossAcc / accSteps, optimizer.ParamGroups.First().LearningRate,
                    tokAcc / Math.Max(1e-9, now - windowStart), elapsedBefore + now)
                { Metrics = task is IStepMetricsSource m && m.TakeStepMetrics() is { Count: > 0 } taken ? taken : null };
                curve.Add(report);
                if (writes) AppendMetric(metricsPath, report);
                observer.OnStep(report);
                lossAcc = 0; tokAcc = 0; accSteps = 0; windowStart = now;
            }
            if (step % o.LogEvery == 0 || step == total) Log();
            bool evalNow = o.EvalEvery > 0 && step % o.EvalEvery == 0 && step != total;
            bool stop = false;
            if (evalNow && task.HasEval && writes)
            {
                var ev = task.Evaluate(trainer, step, o);
                evals.Add(ev);
                AppendMetric(metricsPath, ev);
                observer.OnEval(ev);
                stop = EarlyStopping.ShouldStop(evals, o.EarlyStoppingPatience, o.EarlyStoppingThreshold);
            }
            if (evalNow && o.EarlyStoppingPatience > 0 && comm is not null)
            {
                var flag = new[] { stop ? 1.0 : 0.0 }; // rank 0 evaluated; every rank stops with it
                comm.AllReduceSum(flag);
                stop = flag[0] > 0;
            }
            if (stop)
            {
                if (accSteps > 0) Log(); // the stopping step's metrics line, as the planned last step gets
                var (without, best, bestStep) = EarlyStopping.Count(evals, o.EarlyStoppingThreshold);
                observer.OnMessage($"early stopping at step {step}: the eval loss has not improved by more than {o.EarlyStoppingThreshold:G} for {without} evaluations (best {best:0.0000} at step {bestStep})");
                (end, stoppedEarly) = (step, true);
                break;
            }
            bool saved = false;
            if (o.SaveEvery > 0 && step % o.SaveEvery == 0 && step != total && writes)
            {
                SaveCheckpoint(spec, optimizer, data, step, total, elapsedBefore + clock.Elapsed.TotalSeconds, lastLoss, settings, (lossAcc, accSteps));
                saved = true;
            }
            if (o.SnapshotEvery > 0 && step % o.SnapshotEvery == 0 && step != total && writes)
                TrainCheckpoint.SaveSnapshot(spec.OutDir, step, spec.SaveWeights, o.SaveTotalLimit);
            if (cancel.IsCancellationRequested && step < end)
            {
                string at = Path.Combine(spec.OutDir, TrainCheckpoint.FolderName);
                if (writes && !saved) SaveCheckpoint(spec, optimizer, data, step, total, elapsedBefore + clock.Elapsed.TotalSeconds, lastLoss, settings, (lossAcc, accSteps));
                throw new TrainingInterruptedException(step, total, at);
            }
        }
        double wall = elapsedBefore + clock.Elapsed.TotalSeconds;
        int ran = end - startStep;

        // A finished run resumed (its final checkpoint written, perhaps not its adapter or summary: a kill during the
        // final save) keeps its final evaluation, which metrics.jsonl holds up to the checkpoint's step: not run twice.
        // An early stop's final evaluation is the one that stopped it.
        bool wasFinished = ran == 0;
        EvalReport? final = wasFinished || stoppedEarly ? evals.LastOrDefault(e => e.Step == end) : null;
        if (task.HasEval && final is null && writes)
        {
            final = task.Evaluate(trainer, end, o);
            evals.Add(final);
            AppendMetric(metricsPath, final);
            observer.OnEval(final);
        }
        if (writes)
        {
            if (!wasFinished) SaveCheckpoint(spec, optimizer, data, end, total, wall, lastLoss, settings, (0, 0), stoppedEarly);
            spec.SaveWeights(spec.OutDir);
        }
        comm?.Barrier(); // every rank ends with the adapter written (or with rank 0's failure, which aborts the job)
        string summaryPath = Path.Combine(spec.OutDir, SummaryFile);
        if (writes && wasFinished && ReadSummary(summaryPath) is { } done)
        {
            done = done with { Curve = curve, Evals = evals };
            observer.OnFinish(done, spec.OutDir);
            return done;
        }

        var summary = new TrainSummary
        {
            Method = spec.Method,
            Steps = end,
            StoppedEarly = stoppedEarly ? true : null,
            PlannedSteps = stoppedEarly ? total : null,
            BestEvalLoss = o.EarlyStoppingPatience > 0 && evals.Count(e => e.Step < total) > 0 ? EarlyStopping.Count(evals.Where(e => e.Step < total), o.EarlyStoppingThreshold).Best : null,
            BestEvalStep = o.EarlyStoppingPatience > 0 && evals.Count(e => e.Step < total) > 0 ? EarlyStopping.Count(evals.Where(e => e.Step < total), o.EarlyStoppingThreshold).BestStep : null,
            FinalTrainLoss = lastLoss,
            FinalEvalLoss = final?.Loss,
            FinalEvalPerplexity = final is null || (double.IsNaN(final.Perplexity) && !double.IsNaN(final.Loss)) ? null : final.Perplexity, // a task without perplexity writes none
            FinalEvalAccuracy = final?.Accuracy,
            FinalEvalMetrics = final?.Metrics,
            TrainableParameters = trainer.TrainableParameters.Sum(p => p.numel()),
            WallSeconds = wall,
            MeanStepSeconds = ran > 0 ? clock.Elapsed.TotalSeconds / ran : 0,
            PeakRssBytes = Process.GetCurrentProcess().PeakWorkingSet64,
            ResumedFromStep = startStep > 0 ? startStep : null,
            Ranks = comm?.Size,
            AllReduceBytesPerStep = comm is null ? null : trainer.LastAllReducedBytes,
            AllReduceSecondsPerStep = comm is null ? null : ran > 0 ? mpiSeconds / ran : 0,
            Curve = curve,
            Evals = evals,
        };
        if (writes) AtomicFile.WriteAllText(summaryPath, JsonSerializer.Serialize(summary, ReportJson.IndentedSkipNulls));
        observer.OnFinish(summary, spec.OutDir);
        return summary;
    }

    private static void SaveCheckpoint(TrainRunSpec spec, torch.optim.Optimizer optimizer, ITrainBatchSource data, int step, int total, double elapsed, double lastLoss,
        Dictionary<string, string> settings, (double LossSum, int Steps) window, bool stoppedEarly = false)
    {
        var state = new TrainCheckpointState
        {
            Step = step,
            TotalSteps = total,
            DataPosition = data.SavePosition(),
            Seed = spec.Options.Seed,
            Method = spec.Method,
            ElapsedSeconds = elapsed,
            LastTrainLoss = lastLoss,
            Settings = settings,
            WindowLossSum = window.Steps > 0 ? window.LossSum : null,
            WindowSteps = window.Steps > 0 ? window.Steps : null,
            StoppedEarly = stoppedEarly ? true : null,
        };
        TrainCheckpoint.Save(spec.OutDir, state, spec.SaveResumeWeights ?? spec.SaveWeights, optimizer);
    }

    /// <summary>The settings a resume must keep: the options' and the caller's (<see cref="TrainRunSpec.ResumeSettings"/>).</summary>
    private static Dictionary<string, string> Settings(TrainRunSpec spec)
    {
        var d = new Dictionary<string, string>(spec.Options.ResumeSettings(), StringComparer.Ordinal);
        foreach (var (k, v) in spec.ResumeSettings) d[k] = v;
        return d;
    }

    /// <summary>A finished run's summary as written, or null when it is missing or unreadable (then it is written anew).</summary>
    private static TrainSummary? ReadSummary(string path)
    {
        if (!File.Exists(path)) return null;
        try { return JsonSerializer.Deserialize<TrainSummary>(File.ReadAllText(path), MetricJson); }
        catch (JsonException) { return null; }
    }

    /// <summary>
    /// Metrics and the summary may hold NaN or ±∞ (a diverging evaluation): written as "NaN"/"Infinity" strings, as the
    /// serializer allows, so the end of the run (adapter, checkpoint, summary) is still written.
    /// </summary>
    /// <summary>metrics.jsonl lines (and reading train_summary.json back): the shared report style, NaN as a literal.</summary>
    private static JsonSerializerOptions MetricJson => ReportJson.Line;

    private static void AppendMetric(string path, StepReport r)
    {
        var d = new Dictionary<string, object>
        {
            ["step"] = r.Step,
            ["loss"] = r.Loss,
            ["lr"] = r.LearningRate,
            ["tokens_per_second"] = Math.Round(r.TokensPerSecond, 1),
            ["elapsed_seconds"] = Math.Round(r.ElapsedSeconds, 3),
        };
        foreach (var (k, v) in r.Metrics ?? new Dictionary<string, double>()) d[k] = v;
        File.AppendAllText(path, JsonSerializer.Serialize(d, MetricJson) + "\n");
    }

    private static void AppendMetric(string path, EvalReport r)
    {
        var d = new Dictionary<string, object> { ["step"] = r.Step, ["eval_loss"] = r.Loss, ["eval_tokens"] = r.Tokens };
        if (!double.IsNaN(r.Perplexity)) d["eval_perplexity"] = r.Perplexity; // classification has none
        if (r.Accuracy is { } a) d["eval_accuracy"] = a;
        foreach (var (k, v) in r.Metrics ?? new Dictionary<string, double>()) d["eval_" + k] = v;
        File.AppendAllText(path, JsonSerializer.Serialize(d, MetricJson) + "\n");
    }

    /// <summary>
    /// Keeps the metric lines up to the checkpoint's step (a killed run may have logged past it). A torn last line (what a
    /// crash or a full disk mid-append leaves) is dropped; a broken line before it is an error naming it.
    /// </summary>
    private static (List<StepReport>, List<EvalReport>) TrimMetrics(string path, int step)
    {
        var curve = new List<StepReport>();
        var evals = new List<EvalReport>();
        if (!File.Exists(path)) return (curve, evals);
        var kept = new List<string>();
        var lines = File.ReadAllLines(path).Where(l => l.Trim().Length > 0).ToList();
        for (int i = 0; i < lines.Count; i++)
        {
            string line = lines[i];
            JsonDocument doc;
            try { doc = JsonDocument.Parse(line); }
            catch (JsonException e)
            {
                if (i == lines.Count - 1) break; // torn by a crash mid-append
                throw new UserInputException($"{path}: line {i + 1} is not valid JSON ({e.Message}); repair or delete the line to resume.", e);
            }
            using var _ = doc;
            var r = doc.RootElement;
            int s = r.GetProperty("step").GetInt32();
            if (s > step) continue;
            kept.Add(line);
            if (r.TryGetProperty("loss", out var l))
                curve.Add(new StepReport(s, 0, Number(l), Number(r.GetProperty("lr")), Number(r.GetProperty("tokens_per_second")), Number(r.GetProperty("elapsed_seconds"))));
            else if (r.TryGetProperty("eval_loss", out var el))
            {
                var metrics = r.EnumerateObject().Where(p => p.Name.StartsWith("eval_", StringComparison.Ordinal) && p.Name is not ("eval_loss" or "eval_perplexity" or "eval_accuracy" or "eval_tokens"))
                    .ToDictionary(p => p.Name["eval_".Length..], p => Number(p.Value), StringComparer.Ordinal);
                evals.Add(new EvalReport(s, Number(el), (r.TryGetProperty("eval_perplexity", out var pp) ? Number(pp) : double.NaN), r.TryGetProperty("eval_accuracy", out var a) ? Number(a) : null, r.GetProperty("eval_tokens").GetInt32())
                {
                    Metrics = metrics.Count > 0 ? metrics : null,
                });
            }
        }
        AtomicFile.WriteAllText(path, kept.Count > 0 ? string.Join("\n", kept) + "\n" : "");
        return (curve, evals);
    }

    /// <summary>A number as <see cref="MetricJson"/> writes it: a JSON number, or "NaN"/"Infinity"/"-Infinity".</summary>
    private static double Number(JsonElement e) => e.ValueKind == JsonValueKind.String
        ? double.Parse(e.GetString()!, System.Globalization.CultureInfo.InvariantCulture)
        : e.GetDouble();
}
