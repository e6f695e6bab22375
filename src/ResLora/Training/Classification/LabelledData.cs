using System.Globalization;
using System.Text.Json;

namespace ResLora.Training.Classification;

/// <summary>What the model learns to output: one of a set of classes, or a number (GLUE's STS-B).</summary>
public enum LabelTask
{
    /// <summary>Single-label classification: the label is a class, the head has one output per class.</summary>
    Classify,

    /// <summary>Regression: the label is a real number, the head has one output.</summary>
    Regress,
}

/// <summary>
/// One labelled sentence or sentence pair. For <see cref="LabelTask.Classify"/>, <see cref="Label"/> is the class id
/// and <see cref="Value"/> is NaN; for <see cref="LabelTask.Regress"/>, <see cref="Value"/> is the target and
/// <see cref="Label"/> is −1. <see cref="Line"/> is the 1-based line of the file the record starts on.
/// </summary>
/// <param name="Text">The sentence (the first of a pair).</param>
/// <param name="Pair">The second sentence of a pair, or null for single sentences.</param>
/// <param name="Label">The class id (classification), −1 for regression.</param>
/// <param name="Value">The target value (regression), NaN for classification.</param>
/// <param name="Line">The line of the data file the record starts on.</param>
public sealed record LabelledExample(string Text, string? Pair, int Label, float Value, int Line);

/// <summary>
/// Which fields of a record hold the text, the optional second text and the label, and how labels are read.
/// The flags a CLI maps here are <c>--text-field</c>, <c>--text-pair-field</c>, <c>--label-field</c> and <c>--task</c>.
/// </summary>
public sealed record LabelledDataOptions
{
    /// <summary>
    /// The text field; null detects it from the first record: <c>text</c>, else <c>sentence</c>, else
    /// <c>sentence1</c> (GLUE's pair tasks).
    /// </summary>
    public string? TextField { get; init; }

    /// <summary>
    /// The second text of a pair; null means single sentences, except that when <see cref="TextField"/> was detected
    /// as <c>sentence1</c> and the first record has <c>sentence2</c>, that is the pair. A text field given by name
    /// never implies a pair: name the pair too.
    /// </summary>
    public string? PairField { get; init; }

    /// <summary>The label field.</summary>
    public string LabelField { get; init; } = "label";

    /// <summary>Classification (labels are classes) or regression (labels are numbers).</summary>
    public LabelTask Task { get; init; } = LabelTask.Classify;

    /// <summary>
    /// The classes, when they are already fixed (evaluating a trained model, or reading the evaluation split with the
    /// training split's map); null builds the map from this file's labels (<see cref="LabelMap.FromLabels"/>).
    /// </summary>
    public LabelMap? LabelMap { get; init; }

    /// <summary>Rejects empty field names, one field used twice and a label map given for regression.</summary>
    public void Validate()
    {
        if (TextField is { Length: 0 }) throw new UserInputException("--text-field is empty; give the name of the field that holds the text.");
        if (PairField is { Length: 0 }) throw new UserInputException("--text-pair-field is empty; give the name of the second text's field, or leave it out for single sentences.");
        if (LabelField.Length == 0) throw new UserInputException("--label-field is empty; give the name of the field that holds the label.");
        if (TextField is not null && TextField == PairField) throw new UserInputException($"--text-field and --text-pair-field are both '{TextField}'; the pair's second text needs its own field.");
        if (LabelField == TextField || LabelField == PairField) throw new UserInputException($"--label-field '{LabelField}' is also a text field; the label needs its own field.");
        if (Task == LabelTask.Regress && LabelMap is not null) throw new UserInputException("a label map was given for --task regress; regression labels are numbers, not classes (use --task classify for classes).");
    }
}

/// <summary>A read data file: its examples, the classes (null for regression) and the fields the text came from.</summary>
/// <param name="Path">The file read.</param>
/// <param name="Task">Classification or regression.</param>
/// <param name="Examples">The records in file order.</param>
/// <param name="Labels">The classes: the one given, or built from this file; null for regression.</param>
/// <param name="TextField">The text field used (given or detected).</param>
/// <param name="PairField">The pair field used, or null for single sentences.</param>
public sealed record LabelledDataSet(string Path, LabelTask Task, IReadOnlyList<LabelledExample> Examples, LabelMap? Labels, string TextField, string? PairField);

/// <summary>
/// Reads labelled sentences for classification and regression from JSONL, a JSON array, TSV (GLUE's layout: a header
/// row, tab-separated, no quoting) or CSV (a header row, RFC 4180 quoting). Every error names the file and line, the
/// field, and the flag that fixes it.
/// </summary>
public static class LabelledData
{
    /// <summary>The text fields tried in order when none is given.</summary>
    public static readonly IReadOnlyList<string> DefaultTextFields = new[] { "text", "sentence", "sentence1" };

    /// <summary>Reads <paramref name="path"/>; the format follows the extension (.jsonl, .json, .tsv, .csv).</summary>
    /// <param name="path">The data file.</param>
    /// <param name="options">Fields, task and label map; null for the defaults.</param>
    public static LabelledDataSet Read(string path, LabelledDataOptions? options = null)
    {
        options ??= new LabelledDataOptions();
        options.Validate();
        IO.InputPaths.DataFile(path, expected: "a .jsonl, .json, .tsv or .csv file");
        var records = RecordReader.Read(path);
        if (records.Count == 0) throw new UserInputException($"{path}: has no records; it needs at least one (TSV and CSV: a header row, then one row per record).");

        var (textField, pairField) = ResolveFields(path, records[0], options);
        var texts = new List<(string Text, string? Pair, Cell Label, int Line)>(records.Count);
        foreach (var rec in records)
        {
            string text = Text(path, rec, textField, "--text-field");
            string? pair = pairField is null ? null : Text(path, rec, pairField, "--text-pair-field");
            if (!rec.TryGet(options.LabelField, out var label) || label.Kind == JsonValueKind.Null || (label.Kind == JsonValueKind.String && label.Text.Length == 0))
                throw new UserInputException($"{path}:{rec.Line}: no label in field '{options.LabelField}' (fields: {rec.FieldNames}); every record needs one, or name the label's field with --label-field NAME.");
            texts.Add((text, pair, label, rec.Line));
        }

        if (options.Task == LabelTask.Regress)
        {
            var regress = texts.Select(t => new LabelledExample(t.Text, t.Pair, -1, Number(path, t.Line, options.LabelField, t.Label), t.Line)).ToList();
            return new LabelledDataSet(path, LabelTask.Regress, regress, null, textField, pairField);
        }

        var names = texts.Select(t => LabelText(path, t.Line, options.LabelField, t.Label)).ToList();
        LabelMap map;
        if (options.LabelMap is null)
        {
            CheckNotScores(path, texts.Select(t => t.Line).ToList(), names);
            map = LabelMap.FromLabels(names);
        }
        else
        {
            map = options.LabelMap;
        }
        var examples = new List<LabelledExample>(texts.Count);
        for (int i = 0; i < texts.Count; i++)
            examples.Add(new LabelledExample(texts[i].Text, texts[i].Pair, Id(path, texts[i].Line, names[i], map), float.NaN, texts[i].Line));
        return new LabelledDataSet(path, LabelTask.Classify, examples, map, textField, pairField);
    }

    private static (string Text, string? Pair) ResolveFields(string path, RawRecord first, LabelledDataOptions o)
    {
        if (o.TextField is not null) return (o.TextField, o.PairField);
        string? text = DefaultTextFields.FirstOrDefault(f => first.TryGet(f, out _));
        if (text is null)
            throw new UserInputException($"{path}:{first.Line}: no text field ({string.Join(", ", DefaultTextFields)}) among the fields {first.FieldNames}; name it with --text-field NAME{(o.PairField is null ? " (and the second text of a pair with --text-pair-field NAME)" : "")}.");
        string? pair = o.PairField ?? (text == "sentence1" && first.TryGet("sentence2", out _) ? "sentence2" : null);
        return (text, pair);
    }

    /// <summary>A text field's value; <paramref name="flag"/> is the flag that names the field, for the message.</summary>
    private static string Text(string path, RawRecord rec, string field, string flag)
    {
        if (!rec.TryGet(field, out var cell))
            throw new UserInputException($"{path}:{rec.Line}: missing field '{field}' (fields: {rec.FieldNames}); every record needs it, or name the field that holds the text with {flag} NAME.");
        return cell.Kind switch
        {
            JsonValueKind.String or JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False => cell.Text,
            _ => throw new UserInputException($"{path}:{rec.Line}: field '{field}' is {cell.Kind.ToString().ToLowerInvariant()}; it must be a string (name the field that holds the text with {flag} NAME)."),
        };
    }

    /// <summary>A class label's text: strings as they are, whole numbers without a fraction ("1", not "1.0"), booleans as true/false.</summary>
    private static string LabelText(string path, int line, string field, Cell label)
    {
        switch (label.Kind)
        {
            case JsonValueKind.String:
            case JsonValueKind.True:
            case JsonValueKind.False:
                return label.Text;
            case JsonValueKind.Number:
                double d = double.Parse(label.Text, CultureInfo.InvariantCulture);
                if (d == Math.Floor(d) && Math.Abs(d) < 1e15) return ((long)d).ToString(CultureInfo.InvariantCulture);
                throw new UserInputException($"{path}:{line}: label {label.Text} in field '{field}' is not a whole number, so it is not a class; for a numeric target use --task regress.");
            default:
                throw new UserInputException($"{path}:{line}: label in field '{field}' is {label.Kind.ToString().ToLowerInvariant()}; a class label must be a string or an integer (name the label's field with --label-field NAME).");
        }
    }

    /// <summary>Numeric labels with fractions (STS-B's 3.8) read as classes would each become a class of their own.</summary>
    private static void CheckNotScores(string path, IReadOnlyList<int> lines, IReadOnlyList<string> names)
    {
        if (!names.All(n => double.TryParse(n, NumberStyles.Float, CultureInfo.InvariantCulture, out _))) return;
        for (int i = 0; i < names.Count; i++)
        {
            if (!LabelMap.IsCanonicalInteger(names[i]))
                throw new UserInputException($"{path}:{lines[i]}: label '{names[i]}' is not a whole number and every label is a number: these look like regression targets, not classes; use --task regress.");
        }
    }

    private static int Id(string path, int line, string name, LabelMap map)
    {
        if (map.TryGetId(name, out int id)) return id;
        // An integer label against named classes ("neg"/"pos" from a model's config) is the class id: GLUE files and
        // Hugging Face datasets store classes as ids. Only when no name reads as an integer, so it cannot be ambiguous.
        if (!map.NamesAreIntegers && LabelMap.IsCanonicalInteger(name) && int.TryParse(name, CultureInfo.InvariantCulture, out id) && (uint)id < (uint)map.Count) return id;
        throw new UserInputException($"{path}:{line}: unknown label '{name}'; the known labels are {LabelMap.Describe(map)}{(map.NamesAreIntegers ? "" : $" (or their ids 0..{map.Count - 1})")}; relabel the record, or train on data with this class.");
    }

    private static float Number(string path, int line, string field, Cell label)
    {
        if ((label.Kind == JsonValueKind.Number || label.Kind == JsonValueKind.String)
            && double.TryParse(label.Text, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && double.IsFinite(v) && float.IsFinite((float)v))
            return (float)v;
        throw new UserInputException($"{path}:{line}: label '{label.Text}' in field '{field}' is not a finite number; --task regress needs numeric labels (for classes use --task classify).");
    }
}
