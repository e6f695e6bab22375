using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.IO;
using ResLora.Models;
using TorchSharp;

namespace ResLora.Training;

/// <summary>Receives progress from a run; the CLI draws a progress bar or prints lines, tests record.</summary>
public interface ITrainObserver
{
    void OnStart(int totalSteps, int startStep) { }
    void OnStep(StepReport report) { }
    void OnEval(EvalReport report) { }
    void OnMessage(string message) { }
}

/// <summary>The outcome of a run, written as <c>train_summary.json</c>.</summary>
public sealed record TrainSummary
{
    [JsonPropertyName("method")] public string Method { get; init; } = "";
    [JsonPropertyName("steps")] public int Steps { get; init; }
    [JsonPropertyName("final_train_loss")] public double FinalTrainLoss { get; init; }
    [JsonPropertyName("final_eval_loss")] public double? FinalEvalLoss { get; init; }
    [JsonPropertyName("final_eval_perplexity")] public double? FinalEvalPerplexity { get; init; }
    [JsonPropertyName("final_eval_accuracy")] public double? FinalEvalAccuracy { get; init; }
    [JsonPropertyName("trainable_parameters")] public long TrainableParameters { get; init; }
    [JsonPropertyName("wall_seconds")] public double WallSeconds { get; init; }
    [JsonPropertyName("mean_step_seconds")] public double MeanStepSeconds { get; init; }
    [JsonPropertyName("peak_rss_bytes")] public long PeakRssBytes { get; init; }
    [JsonPropertyName("resumed_from_step")] public int? ResumedFromStep { get; init; }
    [JsonIgnore] public IReadOnlyList<StepReport> Curve { get; init; } = Array.Empty<StepReport>();
    [JsonIgnore] public IReadOnlyList<EvalReport> Evals { get; init; } = Array.Empty<EvalReport>();
}

/// <summary>Everything one run needs; the method is hidden behind the save/load delegates and capabilities.</summary>
public sealed record TrainRunSpec
{
    public required LlamaForCausalLM Model { get; init; }
    public required ITextTokenizer Tokenizer { get; init; }
    public required IReadOnlyList<TokenizedExample> Train { get; init; }
    public IReadOnlyList<TokenizedExample> Eval { get; init; } = Array.Empty<TokenizedExample>();
    /// <summary>Prompt/completion examples for exact-match accuracy (greedy generation); empty = no accuracy.</summary>
    public IReadOnlyList<TextExample> AccuracyExamples { get; init; } = Array.Empty<TextExample>();
    public required TrainOptions Options { get; init; }
    public required string OutDir { get; init; }
    public string Method { get; init; } = "lora";
    /// <summary>Writes the trained weights (the adapter folder) into the given directory.</summary>
    public required Action<string> SaveWeights { get; init; }
    /// <summary>Reads weights saved by <see cref="SaveWeights"/> back into the live model (resume).</summary>
    public required Action<string> LoadWeights { get; init; }
    public IEnumerable<object> Capabilities { get; init; } = Array.Empty<object>();
    /// <summary>Continue from <c>OutDir/checkpoint</c> when it exists.</summary>
    public bool Resume { get; init; }
    /// <summary>Called before each evaluation and before the final save (ResLoRA recomputes its merge statistics).</summary>
    public Action? BeforeEvaluate { get; init; }
}

/// <summary>
/// The run around <see cref="Trainer"/>: step loop, periodic evaluation, metrics.jsonl, checkpoints with exact
/// resume, the final weights, train_summary.json and loss.png. Nothing it writes is ever half-written.
/// </summary>
public static class TrainLoop
{
    public const string MetricsFile = "metrics.jsonl";
    public const string SummaryFile = "train_summary.json";
    public const string PlotFile = "loss.png";

    public static TrainSummary Run(TrainRunSpec spec, ITrainObserver? observer = null)
    {
        observer ??= new NullObserver();
        var o = spec.Options;
        o.Validate();
        Directory.CreateDirectory(spec.OutDir);
        var trainer = new Trainer(spec.Model, o, spec.Capabilities);
        int total = o.Steps > 0 ? o.Steps : (int)Math.Ceiling(o.Epochs * spec.Train.Count / (double)(o.BatchSize * o.GradAccum));
        total = Math.Max(1, total);
        int pad = spec.Tokenizer.PadTokenId ?? (spec.Tokenizer.EosTokenIds.Count > 0 ? spec.Tokenizer.EosTokenIds[0] : 0);
        var data = new ShuffledBatchSource(spec.Train, o.BatchSize, pad, o.Seed, spec.Model.Device);
        using var optimizer = trainer.CreateOptimizer();
        torch.manual_seed(o.Seed);

        int startStep = 0;
        double elapsedBefore = 0;
        string metricsPath = Path.Combine(spec.OutDir, MetricsFile);
        var curve = new List<StepReport>();
        var evals = new List<EvalReport>();
        if (spec.Resume && TrainCheckpoint.Find(spec.OutDir) is { } ckpt)
        {
            var state = TrainCheckpoint.ReadState(ckpt);
            if (state.Method != spec.Method)
                throw new InvalidOperationException($"{ckpt}: the checkpoint was written by method '{state.Method}', not '{spec.Method}'; use the same --method or a new --out folder.");
            if (state.TotalSteps != total)
                throw new InvalidOperationException($"{ckpt}: the checkpoint belongs to a run of {state.TotalSteps} steps, this one has {total}; resume with the same --steps/--epochs.");
            spec.LoadWeights(Path.Combine(ckpt, "adapter"));
            TrainCheckpoint.RestoreOptimizerAndRng(ckpt, optimizer);
            data.RestorePosition(state.DataPosition);
            startStep = state.Step;
            elapsedBefore = state.ElapsedSeconds;
            (curve, evals) = TrimMetrics(metricsPath, startStep);
            observer.OnMessage($"resuming from step {startStep} ({ckpt})");
        }
        else if (File.Exists(metricsPath)) File.Delete(metricsPath);

        observer.OnStart(total, startStep);
        var clock = Stopwatch.StartNew();
        double lossAcc = 0; long tokAcc = 0; int accSteps = 0; double windowStart = 0;
        double lastLoss = curve.Count > 0 ? curve[^1].Loss : double.NaN;
        for (int step = startStep + 1; step <= total; step++)
        {
            var (loss, _, inputTokens) = trainer.Step(optimizer, data, step, total);
            lossAcc += loss; tokAcc += inputTokens; accSteps++;
            lastLoss = loss;
            if (step % o.LogEvery == 0 || step == total)
            {
                double now = clock.Elapsed.TotalSeconds;
                var report = new StepReport(step, total, lossAcc / accSteps, optimizer.ParamGroups.First().LearningRate,
                    tokAcc / Math.Max(1e-9, now - windowStart), elapsedBefore + now);
                curve.Add(report);
                AppendMetric(metricsPath, report);
                observer.OnStep(report);
                lossAcc = 0; tokAcc = 0; accSteps = 0; windowStart = now;
            }
            bool evalNow = o.EvalEvery > 0 && step % o.EvalEvery == 0 && step != total;
            if (evalNow && spec.Eval.Count > 0)
            {
                var ev = Evaluate(spec, trainer, step, pad);
                evals.Add(ev);
                AppendMetric(metricsPath, ev);
                observer.OnEval(ev);
            }
            if (o.SaveEvery > 0 && step % o.SaveEvery == 0 && step != total)
                SaveCheckpoint(spec, optimizer, data, step, total, elapsedBefore + clock.Elapsed.TotalSeconds);
        }
        double wall = elapsedBefore + clock.Elapsed.TotalSeconds;
        int ran = total - startStep;

        EvalReport? final = null;
        if (spec.Eval.Count > 0)
        {
            final = Evaluate(spec, trainer, total, pad);
            evals.Add(final);
            AppendMetric(metricsPath, final);
            observer.OnEval(final);
        }
        else spec.BeforeEvaluate?.Invoke();
        SaveCheckpoint(spec, optimizer, data, total, total, wall);
        spec.SaveWeights(spec.OutDir);

        var summary = new TrainSummary
        {
            Method = spec.Method,
            Steps = total,
            FinalTrainLoss = lastLoss,
            FinalEvalLoss = final?.Loss,
            FinalEvalPerplexity = final?.Perplexity,
            FinalEvalAccuracy = final?.Accuracy,
            TrainableParameters = trainer.TrainableParameters.Sum(p => p.numel()),
            WallSeconds = wall,
            MeanStepSeconds = ran > 0 ? clock.Elapsed.TotalSeconds / ran : 0,
            PeakRssBytes = Process.GetCurrentProcess().PeakWorkingSet64,
            ResumedFromStep = startStep > 0 ? startStep : null,
            Curve = curve,
            Evals = evals,
        };
        AtomicFile.WriteAllText(Path.Combine(spec.OutDir, SummaryFile), JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull }));
        LossPlot.Save(Path.Combine(spec.OutDir, PlotFile), new[] { new LossPlot.Series(spec.Method, curve.Select(c => (c.Step, c.Loss)).ToList(), evals.Select(e => (e.Step, e.Loss)).ToList()) }, $"{spec.Method}: loss");
        return summary;
    }

    /// <summary>Loss/perplexity over the eval set, plus exact-match accuracy of greedy answers when there are prompt/completion examples.</summary>
    public static EvalReport Evaluate(TrainRunSpec spec, Trainer trainer, int step, int pad)
    {
        spec.BeforeEvaluate?.Invoke();
        var o = spec.Options;
        var (loss, ppl, tokens) = trainer.EvaluateLoss(Tokenization.Sequential(spec.Eval, o.BatchSize, pad, spec.Model.Device));
        double? acc = null;
        if (o.EvalGenerateExamples > 0 && spec.AccuracyExamples.Count > 0)
            acc = Accuracy.ExactMatch(spec.Model, spec.Tokenizer, spec.AccuracyExamples.Take(o.EvalGenerateExamples).ToList(), o.MaxNewTokens);
        return new EvalReport(step, loss, ppl, acc, tokens);
    }

    private static void SaveCheckpoint(TrainRunSpec spec, torch.optim.Optimizer optimizer, ITrainBatchSource data, int step, int total, double elapsed)
    {
        var state = new TrainCheckpointState { Step = step, TotalSteps = total, DataPosition = data.SavePosition(), Seed = spec.Options.Seed, Method = spec.Method, ElapsedSeconds = elapsed };
        TrainCheckpoint.Save(spec.OutDir, state, spec.SaveWeights, optimizer);
    }

    private static void AppendMetric(string path, StepReport r) => File.AppendAllText(path, JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["step"] = r.Step,
        ["loss"] = r.Loss,
        ["lr"] = r.LearningRate,
        ["tokens_per_second"] = Math.Round(r.TokensPerSecond, 1),
        ["elapsed_seconds"] = Math.Round(r.ElapsedSeconds, 3),
    }) + "\n");

    private static void AppendMetric(string path, EvalReport r)
    {
        var d = new Dictionary<string, object> { ["step"] = r.Step, ["eval_loss"] = r.Loss, ["eval_perplexity"] = r.Perplexity, ["eval_tokens"] = r.Tokens };
        if (r.Accuracy is { } a) d["eval_accuracy"] = a;
        File.AppendAllText(path, JsonSerializer.Serialize(d) + "\n");
    }

    /// <summary>Keeps the metric lines up to the checkpoint's step (a killed run may have logged past it).</summary>
    private static (List<StepReport>, List<EvalReport>) TrimMetrics(string path, int step)
    {
        var curve = new List<StepReport>();
        var evals = new List<EvalReport>();
        if (!File.Exists(path)) return (curve, evals);
        var kept = new List<string>();
        foreach (var line in File.ReadAllLines(path))
        {
            if (line.Trim().Length == 0) continue;
            using var doc = JsonDocument.Parse(line);
            var r = doc.RootElement;
            int s = r.GetProperty("step").GetInt32();
            if (s > step) continue;
            kept.Add(line);
            if (r.TryGetProperty("loss", out var l))
                curve.Add(new StepReport(s, 0, l.GetDouble(), r.GetProperty("lr").GetDouble(), r.GetProperty("tokens_per_second").GetDouble(), r.GetProperty("elapsed_seconds").GetDouble()));
            else if (r.TryGetProperty("eval_loss", out var el))
                evals.Add(new EvalReport(s, el.GetDouble(), r.GetProperty("eval_perplexity").GetDouble(), r.TryGetProperty("eval_accuracy", out var a) ? a.GetDouble() : null, r.GetProperty("eval_tokens").GetInt32()));
        }
        AtomicFile.WriteAllText(path, kept.Count > 0 ? string.Join("\n", kept) + "\n" : "");
        return (curve, evals);
    }

    private sealed class NullObserver : ITrainObserver
    {
    }
}

/// <summary>Exact-match accuracy of greedy answers.</summary>
public static class Accuracy
{
    /// <summary>
    /// Fraction of examples whose greedy continuation of the prompt, cut at EOS and (when the reference is one line)
    /// at the first newline, equals the completion after trimming white space.
    /// </summary>
    public static double ExactMatch(LlamaForCausalLM model, ITextTokenizer tok, IReadOnlyList<TextExample> examples, int maxNewTokens)
    {
        if (examples.Count == 0) return double.NaN;
        int correct = 0;
        foreach (var ex in examples)
        {
            if (Answer(model, tok, ex.Prompt, ex.Completion, maxNewTokens)) correct++;
        }
        return (double)correct / examples.Count;
    }

    public static bool Answer(LlamaForCausalLM model, ITextTokenizer tok, string prompt, string reference, int maxNewTokens)
    {
        var ids = new List<int>();
        if (tok.AddBosToken && tok.BosTokenId is { } bos) ids.Add(bos);
        ids.AddRange(tok.Encode(prompt));
        int budget = Math.Min(maxNewTokens, model.Config.MaxPositionEmbeddings - ids.Count);
        if (budget <= 0 || ids.Count == 0) return false;
        var output = TextGenerator.Generate(model, ids, new GenerationOptions { MaxNewTokens = budget, EosTokenIds = tok.EosTokenIds });
        string text = tok.Decode(output.Where(i => !tok.EosTokenIds.Contains(i)));
        string want = reference.Trim();
        if (!want.Contains('\n'))
        {
            int nl = text.IndexOf('\n');
            if (nl >= 0) text = text[..nl];
        }
        return string.Equals(text.Trim(), want, StringComparison.Ordinal);
    }
}

/// <summary>Files written whole or not at all: a temp file in the same folder, flushed, then renamed over the target.</summary>
public static class AtomicFile
{
    public static void WriteAllText(string path, string text) => WriteAllBytes(path, System.Text.Encoding.UTF8.GetBytes(text));

    public static void WriteAllBytes(string path, byte[] bytes)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir, $".{Path.GetFileName(path)}.tmp-{Guid.NewGuid():N}");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew))
            {
                fs.Write(bytes);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }

    public static string Invariant(double d) => d.ToString("R", CultureInfo.InvariantCulture);
}
