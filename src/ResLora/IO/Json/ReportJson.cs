using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace ResLora.IO.Json;

/// <summary>
/// The one JSON style for what people read: reports, summaries, records beside an adapter, predictions, metrics and
/// JSON lines printed by the CLI. System.Text.Json's default encoder writes <c>&lt;</c>, <c>&gt;</c>, <c>&amp;</c>, <c>'</c>
/// and every non-ASCII character as <c>\uXXXX</c> (HTML-safe), which makes tokens such as <c>&lt;s&gt;</c> or
/// <c>&lt;/s&gt;</c> and most non-English text unreadable; these files are never embedded in HTML, so the relaxed encoder
/// writes them as they are (still valid JSON: quotes, backslashes and control characters stay escaped).
/// NaN and ±∞ are written as the named literals (a loss with no labelled token is NaN) instead of failing the write.
/// </summary>
public static class ReportJson
{
    /// <summary>The encoder: UTF-8 text as it is, only what JSON requires escaped.</summary>
    public static JavaScriptEncoder Encoder => JavaScriptEncoder.UnsafeRelaxedJsonEscaping;

    /// <summary>Indented, nulls written (a file whose every field is always present).</summary>
    public static JsonSerializerOptions Indented { get; } = Make(indented: true, skipNulls: false);

    /// <summary>Indented, null fields left out (reports whose optional sections are absent when they do not apply).</summary>
    public static JsonSerializerOptions IndentedSkipNulls { get; } = Make(indented: true, skipNulls: true);

    /// <summary>One line (JSONL records, JSON printed to stdout).</summary>
    public static JsonSerializerOptions Line { get; } = Make(indented: false, skipNulls: false);

    /// <summary>For <see cref="Utf8JsonWriter"/> writers of the same files.</summary>
    public static JsonWriterOptions Writer => new() { Encoder = Encoder };

    private static JsonSerializerOptions Make(bool indented, bool skipNulls)
    {
        var o = new JsonSerializerOptions
        {
            Encoder = Encoder,
            WriteIndented = indented,
            NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
            DefaultIgnoreCondition = skipNulls ? JsonIgnoreCondition.WhenWritingNull : JsonIgnoreCondition.Never,
        };
        o.MakeReadOnly(populateMissingResolver: true);
        return o;
    }
}
