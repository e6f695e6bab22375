using System.Globalization;
using System.Text;

namespace ResLora.Templates;

/// <summary>Python's text forms that templates print: float repr, string repr, json.dumps and strftime.</summary>
internal static class PyFormat
{
    /// <summary>
    /// Python's repr(float): the shortest round-trip digits, fixed notation for decimal exponents -4..15 (always
    /// with a ".0" when whole), else "1e-05" / "1.5e+16".
    /// </summary>
    public static string Float(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        string r = d.ToString("R", CultureInfo.InvariantCulture);
        bool negative = r.StartsWith('-');
        if (negative) r = r[1..];
        int exp = 0;
        int e = r.IndexOfAny(new[] { 'E', 'e' });
        if (e >= 0)
        {
            exp = int.Parse(r[(e + 1)..], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
            r = r[..e];
        }
        int dot = r.IndexOf('.');
        string digits = dot < 0 ? r : r[..dot] + r[(dot + 1)..];
        int pointPos = (dot < 0 ? r.Length : dot) + exp; // the decimal point sits after this many digits
        int lead = 0;
        while (lead < digits.Length - 1 && digits[lead] == '0') lead++;
        digits = digits[lead..].TrimEnd('0');
        pointPos -= lead;
        if (digits.Length == 0) digits = "0";
        int sci = pointPos - 1; // value = d.ddd × 10^sci
        string body;
        if (sci >= -4 && sci < 16)
        {
            if (pointPos <= 0) body = "0." + new string('0', -pointPos) + digits;
            else if (pointPos >= digits.Length) body = digits + new string('0', pointPos - digits.Length) + ".0";
            else body = digits[..pointPos] + "." + digits[pointPos..];
        }
        else
        {
            body = digits[..1] + (digits.Length > 1 ? "." + digits[1..] : "") + "e" + (sci < 0 ? "-" : "+")
                + Math.Abs(sci).ToString("00", CultureInfo.InvariantCulture);
        }
        return negative ? "-" + body : body;
    }

    /// <summary>Python's repr(str): single quotes unless the text has one and no double quote.</summary>
    public static string ReprString(string s)
    {
        char q = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        var sb = new StringBuilder(s.Length + 2).Append(q);
        foreach (char c in s)
        {
            switch (c)
            {
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (c == q) sb.Append('\\').Append(c);
                    else if (c < 0x20 || c == 0x7f) sb.Append("\\x").Append(((int)c).ToString("x2", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        return sb.Append(q).ToString();
    }

    /// <summary>
    /// Python's json.dumps as transformers' <c>tojson</c> calls it: <c>", "</c> and <c>": "</c> separators, or
    /// <c>","</c> and newlines when <paramref name="indent"/> is set; keys in insertion order unless sorted;
    /// non-ASCII kept unless <paramref name="ensureAscii"/>.
    /// </summary>
    public static string Json(object? value, string? indent, bool ensureAscii, bool sortKeys)
    {
        var sb = new StringBuilder();
        WriteJson(sb, value, indent, ensureAscii, sortKeys, 0);
        TemplateMeter.Current.Produce(sb.Length, "tojson's output");
        return sb.ToString();
    }

    /// <summary>Stops tojson when its text passes the budget's value length (checked as it is written).</summary>
    private static void CheckLength(StringBuilder sb) => TemplateMeter.Current.Limit(sb.Length, "tojson's output");

    private static void WriteJson(StringBuilder sb, object? v, string? indent, bool ascii, bool sort, int level)
    {
        if (v is List<object?> or OrderedDictionary<string, object?>)
        {
            // Nesting within the budget's depth, so a deeply nested value cannot overflow the stack.
            var meter = TemplateMeter.Current;
            meter.Enter();
            WriteJsonCore(sb, v, indent, ascii, sort, level);
            meter.Exit();
        }
        else WriteJsonCore(sb, v, indent, ascii, sort, level);
    }

    private static void WriteJsonCore(StringBuilder sb, object? v, string? indent, bool ascii, bool sort, int level)
    {
        switch (v)
        {
            case null: sb.Append("null"); return;
            case bool b: sb.Append(b ? "true" : "false"); return;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); return;
            case double d:
                sb.Append(double.IsNaN(d) ? "NaN" : double.IsPositiveInfinity(d) ? "Infinity" : double.IsNegativeInfinity(d) ? "-Infinity" : Float(d));
                return;
            case string s: JsonString(sb, s, ascii); return;
            case List<object?> list:
                WriteContainer(sb, '[', ']', list.Count, indent, level, i => WriteJson(sb, list[i], indent, ascii, sort, level + 1));
                return;
            case OrderedDictionary<string, object?> dict:
                var pairs = dict.ToList();
                if (sort) pairs.Sort((a, b) => string.CompareOrdinal(a.Key, b.Key));
                WriteContainer(sb, '{', '}', pairs.Count, indent, level, i =>
                {
                    JsonString(sb, pairs[i].Key, ascii);
                    sb.Append(": ");
                    WriteJson(sb, pairs[i].Value, indent, ascii, sort, level + 1);
                });
                return;
            default:
                throw new TemplateRuntimeException($"Object of type {TemplateValues.TypeName(v)} is not JSON serializable");
        }
    }

    private static void WriteContainer(StringBuilder sb, char open, char close, int count, string? indent, int level, Action<int> item)
    {
        sb.Append(open);
        if (count == 0)
        {
            sb.Append(close);
            return;
        }
        for (int i = 0; i < count; i++)
        {
            if (indent is null) sb.Append(i == 0 ? "" : ", ");
            else
            {
                sb.Append(i == 0 ? "\n" : ",\n");
                for (int k = 0; k <= level; k++)
                {
                    sb.Append(indent);
                    CheckLength(sb);
                }
            }
            item(i);
            CheckLength(sb);
        }
        if (indent is not null)
        {
            sb.Append('\n');
            for (int k = 0; k < level; k++)
            {
                sb.Append(indent);
                CheckLength(sb);
            }
        }
        sb.Append(close);
    }

    private static void JsonString(StringBuilder sb, string s, bool ascii)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20 || (ascii && c > 0x7e)) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }

    private static readonly string[] Days = { "Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday" };

    private static readonly string[] Months =
        { "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December" };

    /// <summary>
    /// Python's datetime.strftime in the C locale for the directives templates use (Llama 3.x writes
    /// <c>"%d %b %Y"</c>), with glibc's <c>%-d</c> form that drops the zero padding.
    /// </summary>
    public static string Strftime(DateTimeOffset t, string format)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 >= format.Length)
            {
                sb.Append(format[i]);
                continue;
            }
            bool noPad = format[i + 1] == '-' && i + 2 < format.Length;
            char d = format[noPad ? i + 2 : i + 1];
            i += noPad ? 2 : 1;
            string Num(int value, int width) => noPad ? value.ToString(CultureInfo.InvariantCulture) : value.ToString(new string('0', width), CultureInfo.InvariantCulture);
            int hour12 = t.Hour % 12 == 0 ? 12 : t.Hour % 12;
            sb.Append(d switch
            {
                'Y' => t.Year.ToString(CultureInfo.InvariantCulture),
                'y' => Num(t.Year % 100, 2),
                'm' => Num(t.Month, 2),
                'd' => Num(t.Day, 2),
                'e' => t.Day.ToString(CultureInfo.InvariantCulture).PadLeft(2),
                'H' => Num(t.Hour, 2),
                'I' => Num(hour12, 2),
                'M' => Num(t.Minute, 2),
                'S' => Num(t.Second, 2),
                'j' => Num(t.DayOfYear, 3),
                'p' => t.Hour < 12 ? "AM" : "PM",
                'a' => Days[(int)t.DayOfWeek][..3],
                'A' => Days[(int)t.DayOfWeek],
                'b' or 'h' => Months[t.Month - 1][..3],
                'B' => Months[t.Month - 1],
                'z' => (t.Offset < TimeSpan.Zero ? "-" : "+") + t.Offset.ToString("hhmm", CultureInfo.InvariantCulture),
                'F' => t.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture),
                'T' => t.ToString("HH:mm:ss", CultureInfo.InvariantCulture),
                '%' => "%",
                _ => throw new TemplateRuntimeException($"strftime_now: the directive '%{(noPad ? "-" : "")}{d}' is not supported"),
            });
        }
        return sb.ToString();
    }
}
