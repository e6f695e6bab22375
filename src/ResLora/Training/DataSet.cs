using System.Globalization;
using System.Text;
using System.Text.Json;
using ResLora.IO;
using ResLora.IO.Json;
using ResLora.Text.Templates;

namespace ResLora.Training;

/// <summary>
/// One training example. The loss covers only <see cref="Completion"/>'s tokens; plain-text records have an empty
/// prompt and the whole text as completion. A conversation is its rendered text as completion with
/// <see cref="LossSpans"/> set: then only tokens inside those ranges carry loss, and no BOS/EOS is added (the chat
/// template writes its own).
/// </summary>
public sealed record TextExample(string Prompt, string Completion)
{
    public bool IsPlainText => Prompt.Length == 0;

    /// <summary>For a rendered conversation: the [start, end) ranges of <see cref="Completion"/> whose tokens carry loss (its assistant turns); null otherwise.</summary>
    public IReadOnlyList<(int Start, int End)>? LossSpans { get; init; }

    /// <summary>Whether this is a rendered conversation (<see cref="LossSpans"/> set).</summary>
    public bool IsConversation => LossSpans is not null;

    /// <summary>
    /// For a conversation whose template rewrites earlier turns, trained as one example per assistant turn (or group of
    /// turns): this example's index among its conversation's, 0 for the first; null for every other example.
    /// </summary>
    public int? TurnExample { get; init; }

    /// <summary>The adapter the record names in its <c>"adapter"</c> field (several adapters on one base), or null for none.</summary>
    public string? Adapter { get; init; }
}

/// <summary>
/// How records become examples. With no templates the shape is detected per file: <c>{"prompt","completion"}</c>,
/// Alpaca <c>{"instruction","input","output"}</c>, or <c>{"text"}</c>. Templates name record fields in braces
/// (<c>"{Body} {Question}\nAnswer:"</c>); <c>{{</c> and <c>}}</c> are literal braces; dotted paths reach nested
/// objects (<c>{meta.id}</c>). Conversation records (<c>{"messages"}</c>, ShareGPT <c>{"conversations"}</c>) are
/// rendered with <see cref="Chat"/>.
/// </summary>
public sealed record DataTemplates(string? PromptTemplate = null, string? CompletionTemplate = null)
{
    /// <summary>The <c>--chat-template</c> value (a file, a built-in name); null for the model's own template.</summary>
    public string? ChatTemplate { get; init; }

    /// <summary>The chat format conversation records are rendered with; set by <see cref="ForModel"/>.</summary>
    public ChatFormat? Chat { get; init; }

    /// <summary>These templates with <see cref="Chat"/> taken from the model folder (or <see cref="ChatTemplate"/>) when not set.</summary>
    public DataTemplates ForModel(string modelDir) => Chat is not null ? this : this with { Chat = ChatFormat.ForModel(modelDir, ChatTemplate) };

    public void Validate()
    {
        if ((PromptTemplate is null) != (CompletionTemplate is null))
            throw new UserInputException("--prompt-template and --completion-template go together: give both (the loss covers the completion only), or neither to detect the record shape.");
    }
}

/// <summary>Reads JSON-array or JSONL data files into examples; every error names the file, the record number and the field.</summary>
public static class DataSet
{
    /// <summary>The prompt Stanford Alpaca trained with (alpaca's train.py PROMPT_DICT), used for instruction/input/output records.</summary>
    public const string AlpacaWithInput =
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";

    public const string AlpacaNoInput =
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n";

    public static IReadOnlyList<TextExample> Load(string path, DataTemplates? templates = null)
    {
        templates ??= new DataTemplates();
        templates.Validate();
        InputPaths.DataFile(path, expected: "a JSONL or JSON-array file with --data");
        return ObjectRecords(path, "data set").SelectMany(r => ToExamples(r.Record, templates, r.Where).Select(e => e with { Adapter = AdapterName(r.Record, r.Where) })).ToList();
    }

    /// <summary>The file's records, each a JSON object, with "file: record N (line L)" to name it in errors; an empty file is an error naming <paramref name="what"/>.</summary>
    internal static List<(JsonElement Record, string Where)> ObjectRecords(string path, string what)
    {
        var records = ReadRecords(path);
        if (records.Count == 0) throw new UserInputException($"{path}: the {what} is empty; it needs at least one record.");
        var result = new List<(JsonElement, string)>(records.Count);
        for (int i = 0; i < records.Count; i++)
        {
            var (rec, line, element) = records[i];
            string where = element is { } el ? $"{path}: record {i + 1} (array element [{el}], line {line})" : $"{path}: record {i + 1} (line {line})";
            if (rec.ValueKind != JsonValueKind.Object) throw new UserInputException($"{where}: expected a JSON object, got {rec.ValueKind}.");
            result.Add((rec, where));
        }
        return result;
    }

    /// <summary>The record's <c>"adapter"</c> field: a name, or null when absent or null.</summary>
    internal static string? AdapterName(JsonElement rec, string where)
    {
        if (!rec.TryGetProperty("adapter", out var a) || a.ValueKind == JsonValueKind.Null) return null;
        if (a.ValueKind != JsonValueKind.String || a.GetString()!.Length == 0)
            throw new UserInputException($"{where}: 'adapter' must be the name of a loaded adapter (a non-empty string), or null for the base model; got {a.ValueKind.ToString().ToLowerInvariant()}.");
        return a.GetString();
    }

    /// <summary>The record's examples: one, or one per assistant turn of a conversation whose template rewrites earlier turns.</summary>
    private static IEnumerable<TextExample> ToExamples(JsonElement rec, DataTemplates t, string where) =>
        t.PromptTemplate is null && ChatRecords.IsConversation(rec) ? ChatRecords.ToExamples(rec, t.Chat, where) : new[] { ToExample(rec, t, where) };

    private static TextExample ToExample(JsonElement rec, DataTemplates t, string where)
    {
        if (t.PromptTemplate is not null)
            return new TextExample(Render(t.PromptTemplate, rec, where), Render(t.CompletionTemplate!, rec, where));
        if (rec.TryGetProperty("chosen", out _) && rec.TryGetProperty("rejected", out _))
            throw new UserInputException($"{where}: a preference pair (\"chosen\", \"rejected\"); supervised fine-tuning needs {{\"prompt\",\"completion\"}} or {{\"text\"}} records. To train on pairs add --objective dpo (or ipo, orpo, simpo).");
        if (rec.TryGetProperty("prompt", out _) || rec.TryGetProperty("completion", out _))
            return new TextExample(Field(rec, "prompt", where), Field(rec, "completion", where));
        if (rec.TryGetProperty("instruction", out _))
        {
            string input = rec.TryGetProperty("input", out var inp) ? ValueText(inp, where, "input") : "";
            string prompt = Render(input.Length > 0 ? AlpacaWithInput : AlpacaNoInput, rec, where);
            return new TextExample(prompt, Field(rec, "output", where));
        }
        if (rec.TryGetProperty("text", out _))
        {
            string text = Field(rec, "text", where);
            if (text.Length == 0) throw new UserInputException($"{where}: field 'text' is empty.");
            return new TextExample("", text);
        }
        var names = string.Join(", ", rec.EnumerateObject().Select(p => p.Name));
        throw new UserInputException($"{where}: unknown record shape (fields: {names}). Use {{\"text\"}}, {{\"prompt\",\"completion\"}}, {{\"instruction\",\"input\",\"output\"}}, {{\"messages\"}}, ShareGPT {{\"conversations\"}}, or give --prompt-template and --completion-template over these fields.");
    }

    private static string Field(JsonElement rec, string name, string where)
    {
        if (!rec.TryGetProperty(name, out var v)) throw new UserInputException($"{where}: missing field '{name}'.");
        return ValueText(v, where, name);
    }

    /// <summary>A field's text: strings as they are, whole numbers without ".0", other numbers round-trippable.</summary>
    public static string ValueText(JsonElement v, string where, string field) => v.ValueKind switch
    {
        JsonValueKind.String => v.GetString()!,
        JsonValueKind.Number => v.TryGetInt64(out long l) ? l.ToString(CultureInfo.InvariantCulture) : FormatDouble(v.GetDouble()),
        JsonValueKind.True => "true",
        JsonValueKind.False => "false",
        _ => throw new UserInputException($"{where}: field '{field}' is {v.ValueKind.ToString().ToLowerInvariant()}; a template field must be a string, number or boolean."),
    };

    private static string FormatDouble(double d) =>
        d == Math.Floor(d) && Math.Abs(d) < 1e15 ? ((long)d).ToString(CultureInfo.InvariantCulture) : d.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>Fills <c>{field}</c> placeholders from the record.</summary>
    public static string Render(string template, JsonElement rec, string where)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < template.Length; i++)
        {
            char ch = template[i];
            if (ch == '{' && i + 1 < template.Length && template[i + 1] == '{') { sb.Append('{'); i++; continue; }
            if (ch == '}' && i + 1 < template.Length && template[i + 1] == '}') { sb.Append('}'); i++; continue; }
            if (ch == '}') throw new UserInputException($"template '{template}': unmatched '}}' at position {i}; write '}}}}' for a literal brace.");
            if (ch != '{') { sb.Append(ch); continue; }
            int end = template.IndexOf('}', i + 1);
            if (end < 0) throw new UserInputException($"template '{template}': unclosed '{{' at position {i}; write '{{{{' for a literal brace.");
            string path = template.Substring(i + 1, end - i - 1).Trim();
            if (path.Length == 0) throw new UserInputException($"template '{template}': empty field name at position {i}.");
            JsonElement cur = rec;
            foreach (var part in path.Split('.'))
            {
                if (cur.ValueKind != JsonValueKind.Object || !cur.TryGetProperty(part, out cur))
                    throw new UserInputException($"{where}: missing field '{path}' used by the template; fields are: {string.Join(", ", rec.EnumerateObject().Select(p => p.Name))}.");
            }
            sb.Append(ValueText(cur, where, path));
            i = end;
        }
        return sb.ToString();
    }

    /// <summary>
    /// The file's records with their line (and, in a JSON array, their element index). The file is read within
    /// <see cref="BoundedFile.DataLimit"/> and must be UTF-8 (an undecodable byte is an error naming file:line, never
    /// silently replaced); each record within <see cref="BoundedFile.RecordLimit"/>, and a lone surrogate escape is an
    /// error naming its line. The file is never held as text: records are parsed from its bytes one at a time.
    /// </summary>
    internal static List<(JsonElement Record, int Line, int? Element)> ReadRecords(string path)
    {
        var bytes = BoundedFile.ReadUtf8(path, BoundedFile.DataLimit, "data file");
        var span = bytes.Span;
        bool array = span.TrimStart(" \t\r\n"u8).StartsWith("["u8);
        var slices = array
            ? JsonRecords.ArrayElements(path, span, (e, read) => new UserInputException($"{path}: not valid JSON {(read == 0 ? "before the first array element" : $"after array element [{read - 1}]")} ({e.Message}).", e))
            : JsonRecords.Lines(path, span);
        var result = new List<(JsonElement, int, int?)>(slices.Count);
        var opts = new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip };
        foreach (var s in slices)
        {
            var json = bytes.Slice(s.Start, s.Length);
            try
            {
                using var doc = JsonDocument.Parse(json, opts);
                JsonRecords.CheckText(path, s.Line, json.Span, doc.RootElement);
                result.Add((doc.RootElement.Clone(), s.Line, s.Element));
            }
            catch (JsonException e)
            {
                throw new UserInputException($"{path}: line {s.Line} is not valid JSON ({e.Message}); JSONL needs one JSON object per line.", e);
            }
        }
        return result;
    }

    /// <summary>Splits off a held-out fraction deterministically (seeded shuffle), keeping at least one example on each side.</summary>
    public static (IReadOnlyList<T> Train, IReadOnlyList<T> Eval) Split<T>(IReadOnlyList<T> all, double evalFraction, long seed)
    {
        if (!(evalFraction > 0 && evalFraction < 1)) throw new UserInputException($"--eval-fraction must be in (0, 1), got {evalFraction}.");
        if (all.Count < 2) throw new UserInputException($"--eval-fraction needs at least 2 records; the data set has {all.Count}.");
        var idx = Enumerable.Range(0, all.Count).ToArray();
        new Random((int)(seed & 0x7fffffff)).Shuffle(idx);
        int nEval = Math.Clamp((int)Math.Round(all.Count * evalFraction), 1, all.Count - 1);
        return (idx.Skip(nEval).Select(i => all[i]).ToList(), idx.Take(nEval).Select(i => all[i]).ToList());
    }
}
