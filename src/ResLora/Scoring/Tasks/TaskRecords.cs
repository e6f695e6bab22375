using System.Globalization;
using System.Text.Json;

namespace ResLora.Scoring.Tasks;

/// <summary>
/// The records of a task's data file: a JSON array of objects, or JSON Lines (one object per line), told apart by the
/// first character. Field reads name the file, the record (counting from 0) and the field.
/// </summary>
internal sealed class TaskRecords
{
    private readonly List<JsonElement> _records;

    private TaskRecords(string path, List<JsonElement> records) { Path = path; _records = records; }

    /// <summary>The data file.</summary>
    public string Path { get; }

    /// <summary>How many records the file holds.</summary>
    public int Count => _records.Count;

    /// <summary>Reads every record of <paramref name="path"/>; anything but objects is an error naming the record.</summary>
    public static TaskRecords Read(string path)
    {
        string text = File.ReadAllText(path);
        var records = new List<JsonElement>();
        var options = new JsonDocumentOptions { AllowTrailingCommas = true };
        if (text.TrimStart().StartsWith('['))
        {
            using var doc = Parse(text, options, $"{path}: not valid JSON");
            foreach (var e in doc.RootElement.EnumerateArray()) records.Add(e.Clone());
        }
        else
        {
            int line = 0;
            foreach (string raw in text.Split('\n'))
            {
                line++;
                if (string.IsNullOrWhiteSpace(raw)) continue;
                using var doc = Parse(raw, options, $"{path} line {line}: not valid JSON (a JSON Lines file holds one object per line)");
                records.Add(doc.RootElement.Clone());
            }
        }
        for (int i = 0; i < records.Count; i++)
            if (records[i].ValueKind != JsonValueKind.Object)
                throw new UserInputException($"{path} record {i}: a {records[i].ValueKind.ToString().ToLowerInvariant()}, not an object; each record is a JSON object of fields (e.g. \"instruction\", \"answer\").");
        return new TaskRecords(path, records);
    }

    private static JsonDocument Parse(string text, JsonDocumentOptions options, string what)
    {
        try { return JsonDocument.Parse(text, options); }
        catch (JsonException e) { throw new UserInputException($"{what} ({e.Message})."); }
    }

    /// <summary>Whether record <paramref name="index"/> has a non-null <paramref name="field"/>.</summary>
    public bool Has(int index, string field) =>
        _records[index].TryGetProperty(field, out var v) && v.ValueKind != JsonValueKind.Null;

    /// <summary>
    /// Field <paramref name="field"/> of record <paramref name="index"/> as text (a number or boolean as written);
    /// missing, or a list or object, is an error naming the record, the field and <paramref name="usedFor"/>.
    /// </summary>
    public string Text(int index, string field, string usedFor)
    {
        if (!_records[index].TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null)
            throw new UserInputException($"{Path} record {index}: no field '{field}', which {usedFor}; fields there: {string.Join(", ", _records[index].EnumerateObject().Select(p => p.Name))}.");
        return v.ValueKind switch
        {
            JsonValueKind.String => v.GetString()!,
            JsonValueKind.Number => v.GetRawText(),
            JsonValueKind.True => "true",
            JsonValueKind.False => "false",
            _ => throw new UserInputException($"{Path} record {index}: field '{field}' is a {v.ValueKind.ToString().ToLowerInvariant()}, and {usedFor} needs text or a number."),
        };
    }

    /// <summary>Field <paramref name="field"/> of record <paramref name="index"/> as a list of strings.</summary>
    public IReadOnlyList<string> TextList(int index, string field, string usedFor)
    {
        if (!_records[index].TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null)
            throw new UserInputException($"{Path} record {index}: no field '{field}', which {usedFor}.");
        if (v.ValueKind != JsonValueKind.Array || v.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.String))
            throw new UserInputException($"{Path} record {index}: field '{field}' must be a list of strings for {usedFor}.");
        return v.EnumerateArray().Select(e => e.GetString()!).ToList();
    }

    /// <summary>Parses a number the way Python's <c>float()</c> reads LLM-Adapters' answers ("576.0", "-3", "1e3").</summary>
    public static bool TryNumber(string text, out double value) =>
        double.TryParse(text.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out value);
}
