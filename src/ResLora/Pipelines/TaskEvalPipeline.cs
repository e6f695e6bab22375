using System.Diagnostics;
using ResLora.Adapters;
using ResLora.Models;
using ResLora.Quantization;
using ResLora.Scoring;
using ResLora.Scoring.Tasks;
using ResLora.Text;

namespace ResLora.Pipelines;

/// <summary>One benchmark evaluation as <c>reslora eval --tasks</c> describes it.</summary>
public sealed record TaskEvalRequest
{
    public required string ModelDir { get; init; }
    /// <summary>Built-in task names or task file paths (<see cref="TaskLibrary.Load"/>).</summary>
    public required IReadOnlyList<string> Tasks { get; init; }
    /// <summary>The folder holding the tasks' data (ARC-Easy/, boolq/, ...: the LLM-Adapters test sets).</summary>
    public string? DataRoot { get; init; }
    /// <summary>One data file for the one task given (instead of <see cref="DataRoot"/>).</summary>
    public string? DataFile { get; init; }
    /// <summary>One adapter of any method, evaluated unmerged (null: the base model). Excludes <see cref="ScoredAdapters"/>.</summary>
    public string? AdapterDir { get; init; }
    /// <summary>LoRA-family adapters scored together in one pass over the data, base forward shared (mixed-adapter batches).</summary>
    public IReadOnlyList<(string Name, string Dir)> ScoredAdapters { get; init; } = Array.Empty<(string, string)>();
    /// <summary>Few-shot examples before each question, drawn from the task's pool with <see cref="FewshotSeed"/>.</summary>
    public int NumFewshot { get; init; }
    public int FewshotSeed { get; init; } = 1234;
    /// <summary>The first N questions of each task (null: all).</summary>
    public int? Limit { get; init; }
    /// <summary>Rows per forward (continuations per log-likelihood batch; prompts per generation batch).</summary>
    public int BatchSize { get; init; } = 16;
    /// <summary>Longest input a log-likelihood forward sees (null: the model's max positions).</summary>
    public int? MaxLength { get; init; }
    /// <summary>Overrides every generate task's own <c>max_new_tokens</c>.</summary>
    public int? MaxNewTokens { get; init; }
    /// <summary>Forward each question's context once and reuse its KV cache for every choice (false: lm-eval's per-choice rows).</summary>
    public bool SharedContext { get; init; } = true;
    public QuantizeOptions Quantize { get; init; } = new() { WBits = 16, ABits = 16 };
    public string? CalibrationPath { get; init; }
    public RuntimeOptions Runtime { get; init; } = new();
}

/// <summary>One metric of one task under one adapter.</summary>
/// <param name="Task">The task's name.</param>
/// <param name="Adapter">The adapter's label (<see cref="TaskEvalPipeline.BaseLabel"/> for none).</param>
/// <param name="Metric">acc or acc_norm.</param>
/// <param name="Value">The mean over the questions (a fraction).</param>
/// <param name="Stderr">lm-eval's standard error of the mean (sample standard deviation / √n).</param>
/// <param name="Count">Questions scored.</param>
public sealed record TaskMetric(string Task, string Adapter, string Metric, double Value, double Stderr, int Count);

/// <summary>One question's outcome under one adapter: each choice's log-likelihood, or the generated answer and what was extracted from it.</summary>
public sealed record TaskPrediction(string Task, string Adapter, int Index, bool Correct)
{
    public int? Gold { get; init; }
    public IReadOnlyList<double>? Logprobs { get; init; }
    public IReadOnlyList<bool>? Greedy { get; init; }
    public int? Predicted { get; init; }
    public int? PredictedNorm { get; init; }
    public bool? CorrectNorm { get; init; }
    public string? Prompt { get; init; }
    public string? Generated { get; init; }
    public string? Extracted { get; init; }
    public string? Reference { get; init; }
}

/// <summary>Everything one <see cref="TaskEvalPipeline.Run"/> measured.</summary>
/// <param name="Metrics">Each task's metrics per adapter.</param>
/// <param name="Predictions">Each question's outcome per adapter.</param>
/// <param name="Adapters">The adapters' labels, in the order given.</param>
/// <param name="Seconds">Wall time of the scoring (model loading excluded).</param>
public sealed record TaskEvalResult(IReadOnlyList<TaskMetric> Metrics, IReadOnlyList<TaskPrediction> Predictions, IReadOnlyList<string> Adapters, double Seconds)
{
    /// <summary>Wall time of loading the tokenizer, model and adapters (and quantizing).</summary>
    public double LoadSeconds { get; init; }
}

/// <summary>
/// The library function behind <c>reslora eval --tasks</c>: multiple-choice tasks scored by log-likelihood as
/// lm-evaluation-harness scores them (acc, acc_norm), generate tasks by greedy generation and the task's extraction
/// rule as LLM-Adapters scores them; every adapter over the same questions in one pass.
/// </summary>
public static class TaskEvalPipeline
{
    /// <summary>The label of the model without an adapter.</summary>
    public const string BaseLabel = "base";

    public static TaskEvalResult Run(TaskEvalRequest req, Action<string>? log = null, Action<string>? warn = null)
    {
        if (req.Tasks.Count == 0) throw new UserInputException("--tasks names no task; give one or more of: " + string.Join(", ", TaskLibrary.Names) + ".");
        if (req.BatchSize < 1) throw new UserInputException($"--batch-size must be at least 1, got {req.BatchSize}.");
        if (req.NumFewshot < 0) throw new UserInputException($"--num-fewshot must be 0 or more, got {req.NumFewshot}.");
        if (req.Limit is < 1) throw new UserInputException($"--limit must be at least 1, got {req.Limit}.");
        if (req.MaxNewTokens is < 1) throw new UserInputException($"--max-new-tokens must be at least 1, got {req.MaxNewTokens}.");
        if (req.DataFile is not null && req.Tasks.Count != 1)
            throw new UserInputException($"--data names one file, but --tasks names {req.Tasks.Count} tasks; give one task with --data, or --task-data DIR for several.");
        if (req.AdapterDir is not null && req.ScoredAdapters.Count > 0) throw new ArgumentException("give one unnamed adapter or named adapters, not both.", nameof(req));
        req.Quantize.Validate();
        bool quantized = req.Quantize.WBits < 16 || req.Quantize.ABits < 16;
        if (quantized && req.ScoredAdapters.Count > 0)
            throw new UserInputException("--wbits/--abits evaluate one merged model; with several --adapter NAME=DIR, evaluate each adapter on its own.");
        if (req.Quantize.WBits < 16 && req.Runtime.BaseStorage != BaseWeightStorage.Full)
            throw new UserInputException($"--wbits fake-quantizes full-precision weights, but --base-bits {req.Runtime.BaseBits} already packs the base; drop one of them.");

        // Everything the user can get wrong in the tasks and data is checked before the model loads.
        var tasks = req.Tasks.Select(t => TaskInstances.Build(TaskLibrary.Load(t), req.DataRoot, req.DataFile, req.NumFewshot, req.FewshotSeed, req.Limit)).ToList();
        var clock = Stopwatch.StartNew();
        var tokenizer = TokenizerLoader.Load(req.ModelDir);
        using var session = Session.Open(req, warn);
        double loadSeconds = clock.Elapsed.TotalSeconds;
        clock.Restart();
        var metrics = new List<TaskMetric>();
        var predictions = new List<TaskPrediction>();
        foreach (var inst in tasks)
        {
            log?.Invoke($"{inst.Task.Name}: {(inst.Task.OutputType == TaskOutputType.MultipleChoice ? inst.Choice.Count : inst.Generate.Count)} questions × {session.Labels.Count} adapter(s)");
            var (m, p) = inst.Task.OutputType == TaskOutputType.MultipleChoice
                ? ScoreChoices(inst, session, tokenizer, req)
                : ScoreGenerated(inst, session, tokenizer, req);
            metrics.AddRange(m);
            predictions.AddRange(p);
        }
        return new TaskEvalResult(metrics, predictions, session.Labels, clock.Elapsed.TotalSeconds) { LoadSeconds = loadSeconds };
    }

    private static (List<TaskMetric>, List<TaskPrediction>) ScoreChoices(TaskInstances inst, Session s, ITextTokenizer tok, TaskEvalRequest req)
    {
        var scorer = s.Scorer(new LoglikelihoodOptions { BatchSize = req.BatchSize, MaxLength = req.MaxLength, SharedContext = req.SharedContext });
        // All adapters' requests in one call: the scorer forwards each context once per adapter in one mixed batch.
        var requests = new List<LoglikelihoodRequest>();
        foreach (var q in inst.Choice)
            foreach (var route in s.Routes)
                foreach (var (ctx, cont) in q.Requests) requests.Add(new LoglikelihoodRequest(ctx, cont, route));
        IReadOnlyList<LoglikelihoodResult> results;
        try { results = scorer.Score(tok, requests); }
        catch (UserInputException e) { throw new UserInputException($"task {inst.Task.Name}: {e.Message}"); }
        var metrics = new List<TaskMetric>();
        var predictions = new List<TaskPrediction>();
        bool wantNorm = inst.Task.Metrics.Contains("acc_norm");
        for (int a = 0; a < s.Labels.Count; a++)
        {
            var acc = new List<double>();
            var accNorm = new List<double>();
            int at = 0;
            foreach (var q in inst.Choice)
            {
                int n = q.Requests.Count;
                int start = at + a * n;
                var lls = Enumerable.Range(start, n).Select(i => results[i].Logprob).ToArray();
                var greedy = Enumerable.Range(start, n).Select(i => results[i].IsGreedy).ToArray();
                at += n * s.Labels.Count;
                int pred = ChoiceMetrics.Argmax(lls);
                double ok = ChoiceMetrics.Acc(lls, q.Gold);
                acc.Add(ok);
                double? okNorm = null;
                int? predNorm = null;
                if (wantNorm)
                {
                    okNorm = ChoiceMetrics.AccNorm(lls, q.ChoiceTexts, q.Gold);
                    accNorm.Add(okNorm.Value);
                    predNorm = ChoiceMetrics.Argmax(lls.Select((l, i) => l / Math.Max(1, q.ChoiceTexts[i].Length)).ToArray());
                }
                predictions.Add(new TaskPrediction(inst.Task.Name, s.Labels[a], q.Index, ok > 0.5)
                {
                    Gold = q.Gold, Logprobs = lls, Greedy = greedy, Predicted = pred, PredictedNorm = predNorm, CorrectNorm = okNorm is { } x ? x > 0.5 : null,
                });
            }
            var (mean, se) = ChoiceMetrics.MeanStderr(acc);
            metrics.Add(new TaskMetric(inst.Task.Name, s.Labels[a], "acc", mean, se, acc.Count));
            if (wantNorm)
            {
                var (mn, sn) = ChoiceMetrics.MeanStderr(accNorm);
                metrics.Add(new TaskMetric(inst.Task.Name, s.Labels[a], "acc_norm", mn, sn, accNorm.Count));
            }
        }
        return (metrics, predictions);
    }

    private static (List<TaskMetric>, List<TaskPrediction>) ScoreGenerated(TaskInstances inst, Session s, ITextTokenizer tok, TaskEvalRequest req)
    {
        int maxNew = req.MaxNewTokens ?? inst.Task.MaxNewTokens;
        int positions = s.Model.Config.MaxPositionEmbeddings;
        if (maxNew >= positions)
            throw new UserInputException($"task {inst.Task.Name}: {maxNew} new tokens do not fit the model's {positions} positions; lower --max-new-tokens.");
        var options = new GenerationOptions { MaxNewTokens = maxNew, Temperature = 0, EosTokenIds = tok.EosTokenIds };
        var prompts = inst.Generate.Select(q => PromptIds(tok, q.Prompt, positions - maxNew)).ToList();
        var rows = new List<(int Question, int Adapter)>();
        for (int q = 0; q < inst.Generate.Count; q++)
            for (int a = 0; a < s.Labels.Count; a++) rows.Add((q, a));
        var generated = new string[rows.Count];
        for (int start = 0; start < rows.Count; start += req.BatchSize)
        {
            var batch = rows.Skip(start).Take(req.BatchSize).ToList();
            var outs = s.Generate(batch.Select(r => new GenerationRow(prompts[r.Question], s.Routes[r.Adapter], options)).ToList());
            for (int i = 0; i < batch.Count; i++) generated[start + i] = tok.Decode(outs[i], skipSpecialTokens: true);
        }
        var metrics = new List<TaskMetric>();
        var predictions = new List<TaskPrediction>();
        for (int a = 0; a < s.Labels.Count; a++)
        {
            var acc = new List<double>();
            for (int q = 0; q < inst.Generate.Count; q++)
            {
                var question = inst.Generate[q];
                string text = generated[q * s.Labels.Count + a];
                string? extracted = AnswerExtraction.Extract(inst.Task, text);
                bool ok = AnswerExtraction.IsCorrect(inst.Task, extracted, question.Reference);
                acc.Add(ok ? 1 : 0);
                predictions.Add(new TaskPrediction(inst.Task.Name, s.Labels[a], question.Index, ok)
                {
                    Prompt = question.Prompt, Generated = text, Extracted = extracted, Reference = question.Reference,
                });
            }
            var (mean, se) = ChoiceMetrics.MeanStderr(acc);
            metrics.Add(new TaskMetric(inst.Task.Name, s.Labels[a], "acc", mean, se, acc.Count));
        }
        return (metrics, predictions);
    }

    /// <summary>The prompt's ids as generation encodes them (<see cref="Prompts.Ids"/>), cut from the left to <paramref name="room"/> tokens.</summary>
    private static IReadOnlyList<int> PromptIds(ITextTokenizer tok, string prompt, int room)
    {
        var ids = Prompts.Ids(tok, prompt);
        return ids.Count > room ? ids.Skip(ids.Count - room).ToList() : ids;
    }

    /// <summary>The loaded model: a plain model (with one adapter of any method, or none) or an adapter set with named adapters.</summary>
    private sealed class Session : IDisposable
    {
        private readonly AdapterSet? _set;
        private readonly IDisposable? _quant;

        public required CausalLM Model { get; init; }
        public required IReadOnlyList<string> Labels { get; init; }
        /// <summary>The adapter name each label routes to (null: the model as loaded).</summary>
        public required IReadOnlyList<string?> Routes { get; init; }

        private Session(AdapterSet? set, IDisposable? quant)
        {
            _set = set;
            _quant = quant;
        }

        public static Session Open(TaskEvalRequest req, Action<string>? warn)
        {
            if (req.ScoredAdapters.Count > 0)
            {
                var set = AdapterSet.Load(req.ModelDir, req.Runtime);
                try
                {
                    foreach (var (name, dir) in req.ScoredAdapters) set.Add(name, dir, warn);
                }
                catch
                {
                    set.Dispose();
                    throw;
                }
                return new Session(set, null)
                {
                    Model = set.Model,
                    Labels = req.ScoredAdapters.Select(a => a.Name).ToList(),
                    Routes = req.ScoredAdapters.Select(a => (string?)a.Name).ToList(),
                };
            }
            var model = ModelSessions.Load(req.ModelDir, req.AdapterDir, req.Runtime, warn);
            IDisposable? quant = null;
            try
            {
                model.eval();
                if (req.Quantize.WBits < 16 || req.Quantize.ABits < 16)
                {
                    if (req.AdapterDir is not null) AdapterModel.MergeAll(model);
                    List<Tensor>? cal = null;
                    if (req.CalibrationPath is { } cf) cal = QuantizeFolder.CalibrationBatches(TokenizerLoader.Load(req.ModelDir), Training.DataSet.Load(cf).Select(e => e.Prompt + e.Completion), 256, 64);
                    else if (req.Quantize.Method == "gptq" && req.Quantize.WBits < 16) throw new UserInputException("--wquant gptq needs --calib FILE (text to collect input statistics from).");
                    quant = ModelQuantizer.Apply(model, req.Quantize, cal);
                }
            }
            catch
            {
                model.Dispose();
                throw;
            }
            string label = req.AdapterDir is null ? BaseLabel : Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(req.AdapterDir)));
            return new Session(null, quant) { Model = model, Labels = new[] { label }, Routes = new string?[] { null } };
        }

        /// <summary>
        /// The scorer: the LM head runs only at scored positions, unless an adapter of the set changes <c>lm_head</c>
        /// (its rows must then be routed with the rest of the forward).
        /// </summary>
        public LoglikelihoodScorer Scorer(LoglikelihoodOptions options)
        {
            if (_set is not { } set) return new LoglikelihoodScorer(Model, options);
            bool headAdapted = set.Adapters.Any(a => set.Plan.Pairs(a.Name).Any(p => p.Module == "lm_head"));
            if (headAdapted) return new LoglikelihoodScorer((ids, mask, adapters, cache) => set.Forward(ids, mask, adapters, cache), Model.Config, Model.Device, options);
            return new LoglikelihoodScorer((ids, mask, adapters, cache) =>
            {
                using var route = set.Plan.Route(adapters, Model.Device);
                using var noGrad = torch.no_grad();
                return Model.HiddenStates(ids, mask, cache);
            }, Model.Logits, Model.Config, Model.Device, options);
        }

        public IReadOnlyList<IReadOnlyList<int>> Generate(IReadOnlyList<GenerationRow> rows)
        {
            using var noGrad = torch.no_grad();
            return _set is { } set ? set.Generate(rows) : TextGenerator.Generate(Model, rows);
        }

        public void Dispose()
        {
            _quant?.Dispose();
            if (_set is not null) _set.Dispose();
            else Model.Dispose();
        }
    }
}
