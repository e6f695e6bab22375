using ResLora.Adapters;
using ResLora.Quantization;
using ResLora.Text;
using ResLora.Training;

namespace ResLora.Pipelines;

/// <summary>One evaluation as <c>reslora eval</c> describes it.</summary>
public sealed record EvalRequest
{
    public required string ModelDir { get; init; }
    public string? AdapterDir { get; init; }
    public required string DataPath { get; init; }
    public DataTemplates Templates { get; init; } = new();
    public int SeqLen { get; init; } = 256;
    public int BatchSize { get; init; } = 8;
    public int MaxNewTokens { get; init; } = 16;
    /// <summary>Prompt/completion examples whose answers are generated for exact-match accuracy (0 = skip).</summary>
    public int AccuracyExamples { get; init; } = 200;
    /// <summary>Fake quantization applied first (16/16 = off); an adapter is merged before quantizing.</summary>
    public QuantizeOptions Quantize { get; init; } = new() { WBits = 16, ABits = 16 };
    /// <summary>Calibration data for GPTQ.</summary>
    public string? CalibrationPath { get; init; }
    public RuntimeOptions Runtime { get; init; } = new();
}

/// <summary>The library function behind <c>reslora eval</c>.</summary>
public static class EvalPipeline
{
    public static EvalResult Run(EvalRequest req, Action<string>? warn = null)
    {
        if (req.BatchSize < 1) throw new UserInputException($"--batch-size must be at least 1, got {req.BatchSize}.");
        if (req.SeqLen < 2) throw new UserInputException($"--seq-len must be at least 2, got {req.SeqLen}.");
        req.Quantize.Validate();
        if (req.Quantize.WBits < 16 && req.Runtime.BaseStorage != BaseWeightStorage.Full)
            throw new UserInputException($"--wbits fake-quantizes full-precision weights, but --base-bits {req.Runtime.BaseBits} already packs the base; drop one of them.");
        // Conversations render with the model's chat template, else the one the adapter was trained with.
        var templates = req.Templates.ForModel(req.ModelDir);
        if (templates.Chat is null && req.AdapterDir is not null) templates = templates with { Chat = TrainingDataRecord.Read(req.AdapterDir)?.Templates.Chat };
        var examples = DataSet.Load(req.DataPath, templates);
        var tokenizer = TokenizerLoader.Load(req.ModelDir);
        using var model = ModelSessions.Load(req.ModelDir, req.AdapterDir, req.Runtime, warn);
        IDisposable? quant = null;
        if (req.Quantize.WBits < 16 || req.Quantize.ABits < 16)
        {
            if (req.AdapterDir is not null) AdapterModel.MergeAll(model);
            List<Tensor>? cal = null;
            if (req.CalibrationPath is { } cf) cal = QuantizeFolder.CalibrationBatches(tokenizer, DataSet.Load(cf).Select(e => e.Prompt + e.Completion), 256, 64);
            else if (req.Quantize.Method == "gptq" && req.Quantize.WBits < 16) throw new UserInputException("--wquant gptq needs --calib FILE (text to collect input statistics from).");
            quant = ModelQuantizer.Apply(model, req.Quantize, cal);
        }
        using var quantScope = quant;
        return Evaluation.Run(model, tokenizer, examples, req.SeqLen, req.BatchSize, req.MaxNewTokens, req.AccuracyExamples);
    }
}

/// <summary>An evaluation with named adapters: one result per adapter (null = the base model) and, when records were routed, the totals.</summary>
/// <param name="Total">All examples together: token-weighted loss, accuracy weighted by its examples (meaningful when <see cref="Routed"/>).</param>
/// <param name="PerAdapter">
/// Routed: each adapter's examples alone, in order of first appearance in the data (answer indices are positions in the
/// data). Otherwise: each adapter on every example, in the order given.
/// </param>
public sealed record RoutedEvalResult(EvalResult Total, IReadOnlyList<(string? Adapter, EvalResult Result)> PerAdapter)
{
    /// <summary>Whether the records named their adapters (true), or no record did and each adapter was evaluated on all (false).</summary>
    public bool Routed { get; init; } = true;
}

/// <summary><c>reslora eval</c> with named adapters on one base.</summary>
public static class RoutedEvalPipeline
{
    /// <summary>
    /// Loads the base once and every adapter under its name (LoRA-family folders, as <see cref="AdapterSet"/> takes).
    /// When some record has an <c>"adapter"</c> field, each record is evaluated with the adapter it names (none: the base
    /// model); when no record has one, each adapter is evaluated on every record (<c>--adapter NAME=DIR</c> then equals
    /// <c>--adapter DIR</c>, labelled NAME). <see cref="EvalRequest.AdapterDir"/> must be null.
    /// </summary>
    /// <param name="req">The evaluation; fake quantization is not available here.</param>
    /// <param name="adapters">Name and folder of each adapter.</param>
    /// <param name="warn">Receives warnings.</param>
    public static RoutedEvalResult Run(EvalRequest req, IReadOnlyList<(string Name, string Dir)> adapters, Action<string>? warn = null)
    {
        if (req.BatchSize < 1) throw new UserInputException($"--batch-size must be at least 1, got {req.BatchSize}.");
        if (req.SeqLen < 2) throw new UserInputException($"--seq-len must be at least 2, got {req.SeqLen}.");
        if (req.AdapterDir is not null) throw new ArgumentException("a routed evaluation names its adapters in the list, not in AdapterDir.", nameof(req));
        if (req.Quantize.WBits < 16 || req.Quantize.ABits < 16)
            throw new UserInputException("--wbits/--abits evaluate one merged model; with several --adapter NAME=DIR, evaluate each adapter on its own.");
        var templates = req.Templates.ForModel(req.ModelDir);
        // As with one --adapter DIR: without the model's own template, conversations render with the template the
        // adapters were trained with, when they agree on one.
        if (templates.Chat is null)
        {
            var recorded = adapters.Select(a => (a.Name, Chat: TrainingDataRecord.Read(a.Dir)?.Templates.Chat)).Where(x => x.Chat is not null).ToList();
            if (recorded.Select(x => x.Chat!.Template.Source).Distinct(StringComparer.Ordinal).Count() > 1)
                throw new UserInputException($"the adapters were trained with different chat templates ({string.Join(", ", recorded.Select(x => $"{x.Name}: {x.Chat!.Origin}"))}) and the model has none of its own; choose one with --chat-template.");
            if (recorded.Count > 0) templates = templates with { Chat = recorded[0].Chat };
        }
        var examples = DataSet.Load(req.DataPath, templates);
        var names = adapters.Select(a => a.Name).ToHashSet(StringComparer.Ordinal);
        for (int i = 0; i < examples.Count; i++)
            if (examples[i].Adapter is { } n && n != MultiLoraPlan.BaseName && !names.Contains(n))
                throw new UserInputException($"{req.DataPath}: record {i + 1} names adapter '{n}', which is not loaded (loaded: {string.Join(", ", names)}); add --adapter {n}=DIR.");
        var tokenizer = TokenizerLoader.Load(req.ModelDir);
        using var set = AdapterSet.Load(req.ModelDir, req.Runtime);
        foreach (var (name, dir) in adapters) set.Add(name, dir, warn);
        var per = new List<(string?, EvalResult)>();
        bool routed = examples.Any(e => e.Adapter is not null);
        var groups = routed
            ? examples.Select((e, i) => (Example: e, Index: i)).GroupBy(x => x.Example.Adapter == MultiLoraPlan.BaseName ? null : x.Example.Adapter)
                .Select(g => (Adapter: g.Key, Items: g.ToList()))
            : adapters.Select(a => (Adapter: (string?)a.Name, Items: examples.Select((e, i) => (Example: e, Index: i)).ToList()));
        foreach (var (adapter, items) in groups)
        {
            set.Active = adapter;
            var r = Evaluation.Run(set.Model, tokenizer, items.Select(x => x.Example).ToList(), req.SeqLen, req.BatchSize, req.MaxNewTokens, req.AccuracyExamples);
            // Answer indices: positions in the data, not in the group.
            per.Add((adapter, r with { Answers = r.Answers.Select(a => a with { Index = items[a.Index].Index }).ToList() }));
        }
        set.Active = null;
        int ex = per.Sum(p => p.Item2.Examples), tokens = per.Sum(p => p.Item2.LossTokens);
        double loss = per.Sum(p => p.Item2.Loss * p.Item2.LossTokens) / Math.Max(1, tokens);
        int accEx = per.Sum(p => p.Item2.AccuracyExamples);
        double? acc = accEx > 0 ? per.Sum(p => (p.Item2.Accuracy ?? 0) * p.Item2.AccuracyExamples) / accEx : null;
        return new RoutedEvalResult(new EvalResult(ex, tokens, loss, Math.Exp(Math.Min(loss, 700)), acc, accEx), per) { Routed = routed };
    }
}
