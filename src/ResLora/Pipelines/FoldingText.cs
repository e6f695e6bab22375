using ResLora.Text;
using ResLora.Training;

namespace ResLora.Pipelines;

/// <summary>Where merge and export take their texts: <c>--calib</c> / <c>--heldout</c> files, or the adapter's own training data.</summary>
public sealed record FoldingTextOptions
{
    /// <summary>Calibration text (JSONL/JSON data file); null = the adapter's training split (<see cref="TrainingDataRecord"/>).</summary>
    public string? CalibrationPath { get; init; }

    /// <summary>Held-out text for the report; null = the adapter's evaluation split.</summary>
    public string? HeldOutPath { get; init; }

    /// <summary>Calibration sequences (the first of the training split, or of the file).</summary>
    public int CalibrationSequences { get; init; } = 64;

    /// <summary>
    /// Sequences distillation trains on (more than the fit needs: with the fit's 64, distillation overfits them and
    /// held-out KL rises; docs/benchmarks.md). Taken from the same source as the calibration text.
    /// </summary>
    public int DistillSequences { get; init; } = 1024;

    /// <summary>Held-out sequences the report runs over.</summary>
    public int HeldOutSequences { get; init; } = 64;

    public int SeqLen { get; init; } = 256;
}

/// <summary>The calibration and held-out texts of a merge or export, never the same examples.</summary>
public sealed record FoldingTexts(IReadOnlyList<TextExample> Calibration, IReadOnlyList<TextExample> HeldOut, string CalibrationSource, string HeldOutSource)
{
    /// <summary>The text distillation trains on: the calibration source, up to <see cref="FoldingTextOptions.DistillSequences"/>.</summary>
    public IReadOnlyList<TextExample> Distillation { get; init; } = Array.Empty<TextExample>();

    /// <summary>
    /// Resolves the texts. Calibration: <c>--calib</c>, else the first sequences of the adapter's training split.
    /// Held-out: <c>--heldout</c>, else the evaluation split, else training examples after the calibration ones.
    /// <paramref name="needCalibration"/> false: no calibration text is required (held-out only).
    /// </summary>
    public static FoldingTexts Resolve(string adapterDir, FoldingTextOptions o, bool needCalibration)
    {
        var record = TrainingDataRecord.Read(adapterDir);
        (IReadOnlyList<TextExample> Train, IReadOnlyList<TextExample> Eval)? splits = o.CalibrationPath is null || o.HeldOutPath is null ? record?.Load() : null;
        IReadOnlyList<TextExample> calib = Array.Empty<TextExample>(), distill = Array.Empty<TextExample>();
        string calibSource = "none";
        if (o.CalibrationPath is { } cf)
        {
            var all = DataSet.Load(cf);
            calib = all.Take(o.CalibrationSequences).ToList();
            distill = all.Take(Math.Max(o.CalibrationSequences, o.DistillSequences)).ToList();
            calibSource = cf;
        }
        else if (splits is { } s1)
        {
            calib = s1.Train.Take(o.CalibrationSequences).ToList();
            distill = s1.Train.Take(Math.Max(o.CalibrationSequences, o.DistillSequences)).ToList();
            calibSource = $"the training split of {record!.DataPath} ({calib.Count} sequences for the fit, {distill.Count} for distillation)";
        }
        else if (needCalibration)
            throw new UserInputException($"{adapterDir}: this merge fits on calibration text, and the adapter folder records no training data ({TrainingDataRecord.FileName}); give --calib FILE (JSONL/JSON text of the kind the adapter was trained on).");

        IReadOnlyList<TextExample> heldOut = Array.Empty<TextExample>();
        string heldSource = "none";
        if (o.HeldOutPath is { } hf)
        {
            heldOut = DataSet.Load(hf).Take(o.HeldOutSequences).ToList();
            heldSource = hf;
        }
        else if (splits is { } s2 && s2.Eval.Count > 0)
        {
            heldOut = s2.Eval.Take(o.HeldOutSequences).ToList();
            heldSource = record!.EvalDataPath is { } ed ? $"the evaluation data {ed}" : $"the evaluation split of {record.DataPath}";
        }
        else if (splits is { } s3 && s3.Train.Count > Math.Max(o.CalibrationSequences, o.DistillSequences))
        {
            heldOut = s3.Train.Skip(Math.Max(o.CalibrationSequences, o.DistillSequences)).Take(o.HeldOutSequences).ToList();
            heldSource = $"training examples after the calibration ones ({record!.DataPath}; no evaluation split was recorded)";
        }
        return new FoldingTexts(calib, heldOut, calibSource, heldSource) { Distillation = distill };
    }

    /// <summary>Tokenized calibration sequences (every token a target: the texts are only read, never trained to).</summary>
    public static IReadOnlyList<TokenizedExample> Tokenize(IReadOnlyList<TextExample> texts, ITextTokenizer tokenizer, int seqLen, string what)
    {
        if (texts.Count == 0)
            throw new UserInputException($"no {what} text: the adapter's recorded training data is empty or gone; give --calib FILE.");
        var asText = texts.Select(t => new TextExample("", t.Prompt + t.Completion)).Where(t => t.Completion.Length > 0).ToList();
        var tok = Tokenization.Tokenize(asText, tokenizer, seqLen).Examples;
        if (tok.Count == 0) throw new UserInputException($"the {what} text ({texts.Count} records) has no usable sequence after tokenization; give longer text with --calib FILE.");
        return tok;
    }

    /// <summary>The tokenizer's pad id (or EOS, or 0), as training pads.</summary>
    public static int PadId(ITextTokenizer tok) => tok.PadTokenId ?? (tok.EosTokenIds.Count > 0 ? tok.EosTokenIds[0] : 0);
}
