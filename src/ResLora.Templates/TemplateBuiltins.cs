using System.Globalization;
using System.Text;
using static ResLora.Templates.TemplateValues;

namespace ResLora.Templates;

/// <summary>Evaluated call arguments, bound by position or keyword as Python binds them.</summary>
internal sealed class Args
{
    public Args(List<object?> positional, Dictionary<string, object?> named)
    {
        Positional = positional;
        Named = named;
    }

    public List<object?> Positional { get; }

    public Dictionary<string, object?> Named { get; }

    public object? Get(int index, string name, object? fallback = null) =>
        index < Positional.Count ? Positional[index] : Named.TryGetValue(name, out var v) ? v : fallback;

    /// <summary>Rejects more positional arguments than <paramref name="names"/>, and unknown keywords.</summary>
    public void Check(string what, params string[] names)
    {
        if (Positional.Count > names.Length)
            throw new TemplateRuntimeException($"{what} takes at most {names.Length} argument(s), got {Positional.Count}");
        foreach (var key in Named.Keys)
            if (Array.IndexOf(names, key) < 0) throw new TemplateRuntimeException($"{what} got an unexpected keyword argument '{key}'");
    }
}

/// <summary>What <c>raise_exception(message)</c> throws; the renderer adds the line and the template's name.</summary>
internal sealed class TemplateRaiseSignal : Exception
{
    public TemplateRaiseSignal(string message) : base(message) { }
}

/// <summary>
/// The filters, tests, global functions and methods of the subset. The name sets are what the parser accepts;
/// anything else is refused at load time.
/// </summary>
internal static partial class TemplateBuiltins
{
    public static readonly HashSet<string> Filters = new(StringComparer.Ordinal)
    {
        "trim", "length", "count", "tojson", "upper", "lower", "capitalize", "title", "replace", "join", "first", "last",
        "default", "d", "string", "int", "float", "list", "items", "selectattr", "rejectattr", "select", "reject", "map",
        "reverse", "safe", "abs",
    };

    public static readonly HashSet<string> Tests = new(StringComparer.Ordinal)
    {
        "defined", "undefined", "none", "string", "mapping", "iterable", "sequence", "number", "integer", "float",
        "boolean", "true", "false", "eq", "equalto", "ne", "lt", "lessthan", "le", "gt", "greaterthan", "ge", "in",
        "odd", "even", "divisibleby", "sameas", "lower", "upper",
    };

    public static readonly HashSet<string> Functions = new(StringComparer.Ordinal)
    { "raise_exception", "range", "namespace", "strftime_now", "dict" };

    public static readonly HashSet<string> Methods = new(StringComparer.Ordinal)
    {
        "strip", "lstrip", "rstrip", "startswith", "endswith", "split", "upper", "lower", "replace", "title",
        "capitalize", "join", "get", "items", "keys", "values", "cycle",
    };

    /// <summary>Jinja's sandbox refuses ranges longer than this; so do we.</summary>
    private const int MaxRange = 100_000;

    public static object? Function(string name, Args a, TimeProvider clock)
    {
        switch (name)
        {
            case "raise_exception":
                a.Check("raise_exception()", "message");
                throw new TemplateRaiseSignal(Str(a.Get(0, "message", "")));
            case "range":
                a.Check("range()", "start", "stop", "step");
                if (a.Positional.Count == 0) throw new TemplateRuntimeException("range() expects at least 1 argument");
                long start = a.Positional.Count == 1 ? 0 : ToLong(a.Positional[0]);
                long stop = ToLong(a.Positional.Count == 1 ? a.Positional[0] : a.Positional[1]);
                long step = a.Positional.Count > 2 ? ToLong(a.Positional[2]) : 1;
                if (step == 0) throw new TemplateRuntimeException("range() arg 3 must not be zero");
                long count = checked(step > 0 ? (stop - start + step - 1) / step : (start - stop - step - 1) / -step);
                if (count > MaxRange) throw new TemplateRuntimeException($"range() of {count} items is larger than the limit of {MaxRange}");
                TemplateMeter.Current.Produce(Math.Max(count, 0), "range()");
                var items = new List<object?>();
                for (long i = 0; i < count; i++) items.Add(start + i * step);
                return items;
            case "namespace":
                var ns = new TemplateNamespace();
                foreach (var (k, v) in DictFrom(a, "namespace()")) ns.Attributes[k] = v;
                return ns;
            case "dict":
                return DictFrom(a, "dict()");
            case "strftime_now":
                a.Check("strftime_now()", "format");
                return PyFormat.Strftime(clock.GetLocalNow(), Str(a.Get(0, "format", "")));
            default:
                throw new TemplateRuntimeException($"the function '{name}' is not supported");
        }
    }

    private static OrderedDictionary<string, object?> DictFrom(Args a, string what)
    {
        if (a.Positional.Count > 1) throw new TemplateRuntimeException($"{what} takes at most 1 positional argument");
        var d = new OrderedDictionary<string, object?>(StringComparer.Ordinal);
        if (a.Positional.Count == 1)
        {
            if (a.Positional[0] is not OrderedDictionary<string, object?> src) throw new TemplateRuntimeException($"{what} expects a mapping");
            foreach (var (k, v) in src) d[k] = v;
        }
        foreach (var (k, v) in a.Named) d[k] = v;
        return d;
    }

    public static object? Method(object? obj, string name, Args a)
    {
        switch (obj)
        {
            case Undefined u: throw UndefinedUse(u);
            case string s: return StringMethod(s, name, a);
            case OrderedDictionary<string, object?> d:
                switch (name)
                {
                    case "get":
                        a.Check("dict.get()", "key", "default");
                        return a.Get(0, "key") is string key && d.TryGetValue(key, out var v) ? v : a.Get(1, "default");
                    case "items":
                        a.Check("dict.items()");
                        return d.Select(p => (object?)new List<object?> { p.Key, p.Value }).ToList();
                    case "keys":
                        a.Check("dict.keys()");
                        return d.Keys.Select(k => (object?)k).ToList();
                    case "values":
                        a.Check("dict.values()");
                        return d.Values.ToList();
                }
                break;
            case LoopInfo loop when name == "cycle":
                if (a.Positional.Count == 0) throw new TemplateRuntimeException("loop.cycle() needs at least one value");
                return a.Positional[loop.Index0 % a.Positional.Count];
        }
        throw new TemplateRuntimeException($"'{TypeName(obj)}' object has no method '{name}'");
    }

    private static object? StringMethod(string s, string name, Args a)
    {
        switch (name)
        {
            case "strip" or "lstrip" or "rstrip":
                a.Check($"str.{name}()", "chars");
                return Strip(s, a.Get(0, "chars") is string chars ? chars : null, name != "rstrip", name != "lstrip");
            case "startswith" or "endswith":
                a.Check($"str.{name}()", "prefix");
                var arg = a.Get(0, "prefix");
                var options = arg is List<object?> l ? l : new List<object?> { arg };
                return options.Any(o => o is string p
                    ? (name == "startswith" ? s.StartsWith(p, StringComparison.Ordinal) : s.EndsWith(p, StringComparison.Ordinal))
                    : throw new TemplateRuntimeException($"{name} first arg must be str or a tuple of str, not {TypeName(o)}"));
            case "split":
                a.Check("str.split()", "sep", "maxsplit");
                return Split(s, a.Get(0, "sep") as string, a.Get(1, "maxsplit") is { } m ? ToLong(m) : -1);
            case "upper": a.Check("str.upper()"); return s.ToUpperInvariant();
            case "lower": a.Check("str.lower()"); return s.ToLowerInvariant();
            case "title": a.Check("str.title()"); return PyTitle(s);
            case "capitalize": a.Check("str.capitalize()"); return Capitalize(s);
            case "replace":
                a.Check("str.replace()", "old", "new", "count");
                return Replace(s, Str(a.Get(0, "old", "")), Str(a.Get(1, "new", "")), a.Get(2, "count") is { } c ? ToLong(c) : -1);
            case "join":
                a.Check("str.join()", "iterable");
                return Join(s, Iterate(a.Get(0, "iterable")).Select(x => x is string t ? t
                    : throw new TemplateRuntimeException($"str.join() expects strings, found '{TypeName(x)}'")).ToList(), "str.join()'s result");
        }
        throw new TemplateRuntimeException($"'str' object has no method '{name}'");
    }

    /// <summary>Joins <paramref name="parts"/>, its length checked against the budget before it is built.</summary>
    public static string Join(string separator, List<string> parts, string what)
    {
        long length = parts.Count == 0 ? 0 : TemplateMeter.SafeMultiply(separator.Length, parts.Count - 1);
        foreach (var p in parts) length = Math.Min(length + p.Length, long.MaxValue / 2);
        TemplateMeter.Current.Produce(length, what);
        return string.Join(separator, parts);
    }

    public static string Strip(string s, string? chars, bool left, bool right)
    {
        Func<char, bool> strip = chars is null ? TemplateLexer.IsPySpace : c => chars.Contains(c);
        int start = 0, end = s.Length;
        if (left) while (start < end && strip(s[start])) start++;
        if (right) while (end > start && strip(s[end - 1])) end--;
        return s[start..end];
    }

    private static List<object?> Split(string s, string? sep, long maxSplit)
    {
        var parts = new List<object?>();
        if (sep is null)
        {
            // Python: runs of whitespace separate, and no empty strings come out.
            int i = 0;
            while (true)
            {
                while (i < s.Length && TemplateLexer.IsPySpace(s[i])) i++;
                if (i >= s.Length) break;
                if (maxSplit >= 0 && parts.Count == maxSplit)
                {
                    parts.Add(Strip(s[i..], null, false, true));
                    break;
                }
                int j = i;
                while (j < s.Length && !TemplateLexer.IsPySpace(s[j])) j++;
                parts.Add(s[i..j]);
                i = j;
            }
            return parts;
        }
        if (sep.Length == 0) throw new TemplateRuntimeException("str.split(): empty separator");
        int from = 0;
        while (maxSplit < 0 || parts.Count < maxSplit)
        {
            int k = s.IndexOf(sep, from, StringComparison.Ordinal);
            if (k < 0) break;
            parts.Add(s[from..k]);
            from = k + sep.Length;
        }
        parts.Add(s[from..]);
        return parts;
    }

    public static string Replace(string s, string old, string replacement, long count)
    {
        // Checked after every replacement, so 'x' * 10**7 | replace('x', 'y' * 10**7) stops at once.
        var meter = TemplateMeter.Current;
        var sb = new StringBuilder();
        int from = 0;
        long done = 0;
        if (old.Length == 0)
        {
            // Python inserts the replacement before every character and at the end.
            for (int i = 0; i <= s.Length; i++)
            {
                if (count < 0 || done < count) { sb.Append(replacement); done++; }
                if (i < s.Length) sb.Append(s[i]);
                if (replacement.Length > 0) meter.Limit(sb.Length, "the replaced string");
            }
            meter.Produce(sb.Length, "the replaced string");
            return sb.ToString();
        }
        while (count < 0 || done < count)
        {
            int k = s.IndexOf(old, from, StringComparison.Ordinal);
            if (k < 0) break;
            sb.Append(s, from, k - from).Append(replacement);
            meter.Limit(sb.Length, "the replaced string");
            from = k + old.Length;
            done++;
        }
        sb.Append(s, from, s.Length - from);
        meter.Produce(sb.Length, "the replaced string");
        return sb.ToString();
    }

    public static string Capitalize(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    /// <summary>Python's str.title(): a letter after a non-letter starts a word.</summary>
    private static string PyTitle(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool prevCased = false;
        foreach (char c in s)
        {
            bool cased = char.IsLetter(c);
            sb.Append(cased ? (prevCased ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c)) : c);
            prevCased = cased;
        }
        return sb.ToString();
    }

    /// <summary>Jinja's title filter: words begin after whitespace, '-' and opening brackets only.</summary>
    public static string JinjaTitle(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool wordStart = true;
        foreach (char c in s)
        {
            bool boundary = TemplateLexer.IsPySpace(c) || c is '-' or '(' or '{' or '[' or '<';
            sb.Append(boundary ? c : wordStart ? char.ToUpperInvariant(c) : char.ToLowerInvariant(c));
            wordStart = boundary;
        }
        return sb.ToString();
    }

    /// <summary>Python's int() on a string: surrounding whitespace, a sign and '_' between digits allowed.</summary>
    public static bool TryParseInt(string s, long numberBase, out long value)
    {
        value = 0;
        string t = Strip(s, null, true, true);
        bool negative = t.StartsWith('-');
        if (t.StartsWith('-') || t.StartsWith('+')) t = t[1..];
        if (t.Length == 0 || t.StartsWith('_') || t.EndsWith('_') || t.Contains("__")) return false;
        t = t.Replace("_", "");
        try
        {
            if (numberBase == 10)
            {
                if (!long.TryParse(t, NumberStyles.None, CultureInfo.InvariantCulture, out value)) return false;
            }
            else
            {
                if (numberBase is not (2 or 8 or 16)) return false;
                value = Convert.ToInt64(t, (int)numberBase);
            }
        }
        catch (Exception e) when (e is FormatException or OverflowException or ArgumentException)
        {
            return false;
        }
        if (negative) value = -value;
        return true;
    }
}
