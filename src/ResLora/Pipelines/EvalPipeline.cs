using ResLora.Adapters;
using ResLora.IO;
using ResLora.Quantization;
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
