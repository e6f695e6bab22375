using System.Text;
using System.Text.Json;
using ResLora.IO;
using ResLora.IO.Json;

namespace ResLora.Training.Classification;

/// <summary>One field's value as read: its JSON kind (every TSV/CSV cell is a string) and its text.</summary>
internal readonly record struct Cell(JsonValueKind Kind, string Text);

/// <summary>One record of a data file: the line it starts on (1-based) and its fields by name, in file order.</summary>
internal sealed record RawRecord(int Line, IReadOnlyList<KeyValuePair<string, Cell>> Fields)
{
    public bool TryGet(string name, out Cell cell)
    {
        foreach (var (k, v) in Fields)
        {
            if (k == name)
            {
                cell = v;
                return true;
            }
        }
        cell = default;
        return false;
    }

    public string FieldNames => string.Join(", ", Fields.Select(f => f.Key));
}

/// <summary>
/// Splits a data file into records: JSONL (one object per line), a JSON array of objects, TSV as GLUE ships it
/// (header row, tab-separated, no quoting: a quote is an ordinary character) and CSV (header row, RFC 4180 quoting:
/// quoted fields may hold commas, doubled quotes and line breaks). The format follows the extension; an unknown
/// extension is read as JSON when the file starts with '[' or '{'.
/// </summary>
internal static class RecordReader
{
    /// <summary>
    /// The file's records. It is read as language-model data is (<see cref="BoundedFile.ReadUtf8"/>: within
    /// <see cref="BoundedFile.DataLimit"/>, strictly UTF-8); JSON records are parsed from its bytes one at a time, each
    /// within <see cref="BoundedFile.RecordLimit"/>.
    /// </summary>
    public static List<RawRecord> Read(string path)
    {
        var bytes = BoundedFile.ReadUtf8(path, BoundedFile.DataLimit, "data file");
        string ext = Path.GetExtension(path).ToLowerInvariant();
        var head = bytes.Span.TrimStart(" \t\r\n"u8);
        return ext switch
        {
            ".tsv" => ReadDelimited(path, SplitTsv(Encoding.UTF8.GetString(bytes.Span)), "TSV"),
            ".csv" => ReadDelimited(path, SplitCsv(path, Encoding.UTF8.GetString(bytes.Span)), "CSV"),
            ".json" or ".jsonl" or ".ndjson" => head.StartsWith("["u8) ? ReadJsonArray(path, bytes) : ReadJsonLines(path, bytes),
            _ when head.StartsWith("["u8) => ReadJsonArray(path, bytes),
            _ when head.StartsWith("{"u8) => ReadJsonLines(path, bytes),
            _ => throw new UserInputException($"{path}: unknown data format '{ext}'; use a .jsonl, .json, .tsv or .csv file (TSV and CSV with a header row)."),
        };
    }

    private static readonly JsonReaderOptions LineOptions = default;
    private static readonly JsonReaderOptions ArrayOptions = new() { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip };

    private static List<RawRecord> ReadJsonLines(string path, ReadOnlyMemory<byte> bytes)
    {
        var lines = JsonRecords.Lines(path, bytes.Span);
        var result = new List<RawRecord>(lines.Count);
        var names = new FieldNames();
        foreach (var s in lines)
        {
            try
            {
                result.Add(FromJson(path, bytes.Span.Slice(s.Start, s.Length), LineOptions, s.Line, names));
            }
            catch (JsonException e)
            {
                throw new UserInputException($"{path}:{s.Line}{Column(e)}: not valid JSON ({Reason(e)}); JSONL needs one JSON object per line.", e);
            }
        }
        return result;
    }

    /// <summary>A JSON array read element by element, so each record knows the line it starts on; no element tree is built.</summary>
    private static List<RawRecord> ReadJsonArray(string path, ReadOnlyMemory<byte> bytes)
    {
        var elements = JsonRecords.ArrayElements(path, bytes.Span, (e, read) =>
            new UserInputException($"{path}:{(e.LineNumber is { } l ? l + 1 : 1)}{Column(e)}: not valid JSON ({Reason(e)}).", e));
        var result = new List<RawRecord>(elements.Count);
        var names = new FieldNames();
        foreach (var s in elements) result.Add(FromJson(path, bytes.Span.Slice(s.Start, s.Length), ArrayOptions, s.Line, names));
        return result;
    }

    /// <summary>
    /// Field names seen so far, reused: a million records with the same three fields hold three name strings, not
    /// three million.
    /// </summary>
    private sealed class FieldNames
    {
        private readonly List<string> _seen = new();
        private readonly List<string> _short = new();

        /// <summary>Scratch for one record's fields, copied out at its exact size.</summary>
        public readonly List<KeyValuePair<string, Cell>> Scratch = new();

        /// <summary>A number's text; short ones (class labels such as 0 and 1) are reused like field names.</summary>
        public string Number(ReadOnlySpan<byte> utf8)
        {
            if (utf8.Length > 8) return Encoding.UTF8.GetString(utf8);
            foreach (var n in _short)
                if (n.Length == utf8.Length && SameAscii(n, utf8)) return n; // a JSON number is ASCII
            string text = Encoding.UTF8.GetString(utf8);
            if (_short.Count < 64) _short.Add(text);
            return text;
        }

        private static bool SameAscii(string s, ReadOnlySpan<byte> utf8)
        {
            for (int i = 0; i < s.Length; i++)
                if (s[i] != utf8[i]) return false;
            return true;
        }

        public string Get(ref Utf8JsonReader reader)
        {
            foreach (var n in _seen)
                if (reader.ValueTextEquals(n)) return n;
            string name = reader.GetString()!;
            if (_seen.Count < 64) _seen.Add(name);
            return name;
        }
    }

    /// <summary>
    /// One record (a JSON object) read with <see cref="Utf8JsonReader"/> straight into its fields: strings as text,
    /// numbers, objects and arrays as their JSON text. A lone surrogate escape (<c>"\ud800"</c>), valid JSON that is not
    /// text, is an error naming file:line.
    /// </summary>
    private static RawRecord FromJson(string path, ReadOnlySpan<byte> json, JsonReaderOptions options, int line, FieldNames names)
    {
        var reader = new Utf8JsonReader(json, options);
        reader.Read();
        if (reader.TokenType != JsonTokenType.StartObject)
        {
            string kind = reader.TokenType switch
            {
                JsonTokenType.StartArray => "array",
                JsonTokenType.String => "string",
                JsonTokenType.Number => "number",
                JsonTokenType.True => "true",
                JsonTokenType.False => "false",
                _ => "null",
            };
            throw new UserInputException($"{path}:{line}: expected a JSON object (one record with named fields), got {kind}.");
        }
        var fields = names.Scratch;
        fields.Clear();
        try
        {
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                string name = names.Get(ref reader);
                reader.Read();
                var (kind, text) = reader.TokenType switch
                {
                    JsonTokenType.String => (JsonValueKind.String, reader.GetString()!),
                    JsonTokenType.True => (JsonValueKind.True, "true"),
                    JsonTokenType.False => (JsonValueKind.False, "false"),
                    JsonTokenType.Null => (JsonValueKind.Null, ""),
                    JsonTokenType.Number => (JsonValueKind.Number, names.Number(reader.ValueSpan)),
                    _ => Nested(ref reader, json),
                };
                fields.Add(new(name, new Cell(kind, text)));
            }
            while (reader.Read()) { } // anything after the object on its line throws
        }
        catch (InvalidOperationException e)
        {
            throw new UserInputException($"{path}:{line}: a string holds a lone UTF-16 surrogate escape (\\uD800-\\uDFFF without its pair), which is not text; fix or remove it.", e);
        }
        return new RawRecord(line, fields.ToArray());
    }

    /// <summary>An object or array value as its JSON text (what <see cref="JsonElement.GetRawText"/> gives).</summary>
    private static (JsonValueKind, string) Nested(ref Utf8JsonReader reader, ReadOnlySpan<byte> json)
    {
        var kind = reader.TokenType == JsonTokenType.StartObject ? JsonValueKind.Object : JsonValueKind.Array;
        int start = (int)reader.TokenStartIndex;
        reader.Skip();
        return (kind, Encoding.UTF8.GetString(json[start..(int)reader.BytesConsumed]));
    }

    /// <summary>The parser's reason without its trailing " Path: … | LineNumber: … | BytePositionInLine: …", which the location replaces.</summary>
    private static string Reason(JsonException e)
    {
        string m = e.Message;
        int cut = m.IndexOf(" Path: ", StringComparison.Ordinal);
        if (cut < 0) cut = m.IndexOf(" LineNumber: ", StringComparison.Ordinal);
        return (cut < 0 ? m : m[..cut]).TrimEnd('.', ' ');
    }

    private static string Column(JsonException e) => e.BytePositionInLine is { } b ? $":{b + 1}" : "";

    /// <summary>Header row first, then one record per row; every row must have the header's number of columns.</summary>
    private static List<RawRecord> ReadDelimited(string path, IEnumerable<(int Line, List<string> Cells)> rows, string format)
    {
        var result = new List<RawRecord>();
        List<string>? header = null;
        foreach (var (line, cells) in rows)
        {
            if (header is null)
            {
                header = cells;
                var dup = header.GroupBy(h => h, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1);
                if (dup is not null) throw new UserInputException($"{path}:{line}: the header row names column '{dup.Key}' twice; {format} files need a header row of distinct column names.");
                continue;
            }
            if (cells.Count != header.Count)
                throw new UserInputException($"{path}:{line}: {cells.Count} columns, but the header row (line 1) has {header.Count} ({string.Join(", ", header)}); {(format == "TSV" ? "TSV fields are split at every tab (no quoting)" : "quote a field that holds a comma")}.");
            var fields = new List<KeyValuePair<string, Cell>>(cells.Count);
            for (int i = 0; i < cells.Count; i++) fields.Add(new(header[i], new Cell(JsonValueKind.String, cells[i])));
            result.Add(new RawRecord(line, fields));
        }
        return result;
    }

    /// <summary>GLUE's TSV: every tab separates, quotes are ordinary characters, blank lines are skipped.</summary>
    private static IEnumerable<(int Line, List<string> Cells)> SplitTsv(string text)
    {
        var lines = text.Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i].EndsWith('\r') ? lines[i][..^1] : lines[i];
            if (line.Length == 0) continue;
            yield return (i + 1, line.Split('\t').ToList());
        }
    }

    /// <summary>
    /// RFC 4180: commas separate fields, CRLF or LF ends a record, a field in double quotes may hold commas, line
    /// breaks and doubled quotes (<c>""</c> is one quote). Blank lines are skipped. Each record carries the line it
    /// starts on.
    /// </summary>
    private static IEnumerable<(int Line, List<string> Cells)> SplitCsv(string path, string text)
    {
        var cells = new List<string>();
        var cell = new StringBuilder();
        int line = 1, recordLine = 1;
        int i = 0;
        bool quoted = false; // the current cell was quoted (and is now closed)
        while (i <= text.Length)
        {
            if (i == text.Length || text[i] == '\n' || (text[i] == '\r' && i + 1 < text.Length && text[i + 1] == '\n'))
            {
                // End of record (or of the file).
                bool blank = cells.Count == 0 && cell.Length == 0 && !quoted;
                if (!blank)
                {
                    cells.Add(cell.ToString());
                    yield return (recordLine, cells);
                }
                cells = new List<string>();
                cell.Clear();
                quoted = false;
                if (i == text.Length) break;
                i += text[i] == '\r' ? 2 : 1;
                line++;
                recordLine = line;
                continue;
            }
            char c = text[i];
            if (c == ',')
            {
                cells.Add(cell.ToString());
                cell.Clear();
                quoted = false;
                i++;
                continue;
            }
            if (c == '"' && cell.Length == 0 && !quoted)
            {
                // A quoted field: read to the closing quote, keeping commas and line breaks.
                int openLine = line;
                i++;
                while (true)
                {
                    if (i == text.Length) throw new UserInputException($"{path}:{openLine}: a quoted field is never closed; end it with '\"' (write a quote inside a field as \"\").");
                    if (text[i] == '"')
                    {
                        if (i + 1 < text.Length && text[i + 1] == '"')
                        {
                            cell.Append('"');
                            i += 2;
                            continue;
                        }
                        i++;
                        break;
                    }
                    if (text[i] == '\n') line++;
                    cell.Append(text[i]);
                    i++;
                }
                quoted = true;
                if (i < text.Length && text[i] != ',' && text[i] != '\n' && text[i] != '\r')
                    throw new UserInputException($"{path}:{line}: unexpected '{text[i]}' after a closing quote; a quoted field must end at a comma or the end of the line (write a quote inside a field as \"\").");
                continue;
            }
            if (quoted)
                throw new UserInputException($"{path}:{line}: unexpected '{c}' after a closing quote; a quoted field must end at a comma or the end of the line.");
            cell.Append(c);
            i++;
        }
    }
}
