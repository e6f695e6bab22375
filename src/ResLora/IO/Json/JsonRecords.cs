using System.Text.Json;

namespace ResLora.IO.Json;

/// <summary>
/// Splits a data file's UTF-8 bytes into its JSON records without materialising the file as text or as one tree: the
/// lines of JSONL, the elements of a JSON array. Every record is bounded by <see cref="BoundedFile.RecordLimit"/> before
/// it is parsed, so one enormous record is an error naming its line, not gigabytes of parser state.
/// </summary>
public static class JsonRecords
{
    /// <summary>A record's bytes (within the file's), the 1-based line it starts on, and its array index (JSON arrays).</summary>
    public readonly record struct Slice(int Start, int Length, int Line, int? Element);

    /// <summary>The non-blank lines of JSONL, trimmed of JSON white space; a line over the record limit is an error.</summary>
    public static List<Slice> Lines(string path, ReadOnlySpan<byte> text)
    {
        var result = new List<Slice>();
        int line = 0, start = 0;
        while (start <= text.Length)
        {
            line++;
            int nl = text[start..].IndexOf((byte)'\n');
            int end = nl < 0 ? text.Length : start + nl;
            CheckSize(path, line, end - start, null);
            int a = start, b = end;
            while (a < b && IsSpace(text[a])) a++;
            while (b > a && IsSpace(text[b - 1])) b--;
            if (b > a) result.Add(new Slice(a, b - a, line, null));
            if (nl < 0) break;
            start = end + 1;
        }
        return result;
    }

    /// <summary>
    /// The elements of a JSON array, each with its index and the line it starts on. A syntax error is a
    /// <see cref="JsonException"/> from the reader (its line and position are the file's), wrapped by
    /// <paramref name="onError"/> given how many elements were read before it.
    /// </summary>
    public static List<Slice> ArrayElements(string path, ReadOnlySpan<byte> json, Func<JsonException, int, Exception> onError)
    {
        var result = new List<Slice>();
        var reader = new Utf8JsonReader(json, new JsonReaderOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        try
        {
            reader.Read(); // the '['
            int line = 1, counted = 0;
            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
            {
                int at = (int)reader.TokenStartIndex;
                line += json[counted..at].Count((byte)'\n');
                counted = at;
                reader.Skip(); // to the element's last token: its size is known before anything is parsed
                int length = (int)reader.BytesConsumed - at;
                CheckSize(path, line, length, result.Count);
                result.Add(new Slice(at, length, line, result.Count));
            }
            if (reader.TokenType != JsonTokenType.EndArray) throw new UserInputException($"{path}: the JSON array is not closed; add the final ']'.");
            while (reader.Read()) { } // anything after the ']' that is not white space or a comment throws
        }
        catch (JsonException e)
        {
            throw onError(e, result.Count);
        }
        return result;
    }

    private static void CheckSize(string path, int line, long length, int? element)
    {
        if (length > BoundedFile.RecordLimit)
            throw new UserInputException($"{path}:{line}: one record of {AvailableMemory.Format(length)}{(element is { } e ? $" (array element [{e}])" : "")}, more than the {AvailableMemory.Format(BoundedFile.RecordLimit)} limit for one record; split it, or shorten its text (no sequence length uses that much).");
    }

    private static bool IsSpace(byte b) => b is (byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n';

    /// <summary>
    /// Throws naming file:line when a string (or property name) of <paramref name="root"/> holds a lone UTF-16 surrogate
    /// escape such as <c>"\ud800"</c>: valid JSON, but not text, and .NET cannot make a string of it. The tree is walked
    /// only when <paramref name="raw"/> has a surrogate escape at all.
    /// </summary>
    public static void CheckText(string path, int line, ReadOnlySpan<byte> raw, JsonElement root)
    {
        if (!HasSurrogateEscape(raw)) return;
        try
        {
            Walk(root);
        }
        catch (InvalidOperationException e)
        {
            throw new UserInputException($"{path}:{line}: a string holds a lone UTF-16 surrogate escape (\\uD800-\\uDFFF without its pair), which is not text; fix or remove it.", e);
        }
    }

    private static bool HasSurrogateEscape(ReadOnlySpan<byte> raw)
    {
        for (int at = 0; ;)
        {
            int k = raw[at..].IndexOf("\\u"u8);
            if (k < 0) return false;
            int i = at + k;
            if (i + 3 < raw.Length && (raw[i + 2] | 0x20) == 'd' && (raw[i + 3] | 0x20) is (byte)'8' or (byte)'9' or (>= (byte)'a' and <= (byte)'f'))
                return true;
            at = i + 2;
        }
    }

    private static void Walk(JsonElement e)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.String:
                _ = e.GetString();
                break;
            case JsonValueKind.Object:
                foreach (var p in e.EnumerateObject())
                {
                    _ = p.Name;
                    Walk(p.Value);
                }
                break;
            case JsonValueKind.Array:
                foreach (var x in e.EnumerateArray()) Walk(x);
                break;
        }
    }
}
