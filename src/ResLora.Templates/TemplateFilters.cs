using System.Globalization;
using static ResLora.Templates.TemplateValues;

namespace ResLora.Templates;

/// <summary>Filters (<c>x | f(args)</c>) and tests (<c>x is t(args)</c>), with Jinja's semantics.</summary>
internal static partial class TemplateBuiltins
{
    public static object? Filter(string name, object? v, Args a)
    {
        switch (name)
        {
            case "trim":
                a.Check("the trim filter", "chars");
                return Strip(Str(v), a.Get(0, "chars") as string, true, true);
            case "length" or "count":
                a.Check($"the {name} filter");
                return Length(v);
            case "tojson":
                a.Check("the tojson filter", "ensure_ascii", "indent", "separators", "sort_keys");
                if (a.Get(2, "separators") is not null) throw new TemplateRuntimeException("the tojson filter's separators argument is not supported");
                string? indent = a.Get(1, "indent") switch
                {
                    null => null,
                    long n => new string(' ', (int)Math.Clamp(n, 0, 64)),
                    string s => s,
                    var other => throw new TemplateRuntimeException($"the tojson filter's indent must be an int or a string, not '{TypeName(other)}'"),
                };
                return PyFormat.Json(v, indent, Truthy(a.Get(0, "ensure_ascii", false)), Truthy(a.Get(3, "sort_keys", false)));
            case "upper": a.Check("the upper filter"); return Str(v).ToUpperInvariant();
            case "lower": a.Check("the lower filter"); return Str(v).ToLowerInvariant();
            case "capitalize": a.Check("the capitalize filter"); return Capitalize(Str(v));
            case "title": a.Check("the title filter"); return JinjaTitle(Str(v));
            case "replace":
                a.Check("the replace filter", "old", "new", "count");
                return Replace(Str(v), Str(a.Get(0, "old", "")), Str(a.Get(1, "new", "")), a.Get(2, "count") is { } c ? ToLong(c) : -1);
            case "join":
                a.Check("the join filter", "d", "attribute");
                var parts = Iterate(v);
                if (a.Get(1, "attribute") is { } attr) parts = parts.Select(x => AttrPath(x, attr)).ToList();
                return Join(Str(a.Get(0, "d", "")), parts.Select(Str).ToList(), "the join filter's result");
            case "first" or "last":
                a.Check($"the {name} filter");
                var all = Iterate(v);
                return all.Count == 0 ? new Undefined($"No {name} item, sequence was empty.") : name == "first" ? all[0] : all[^1];
            case "default" or "d":
                a.Check($"the {name} filter", "default_value", "boolean");
                return v is Undefined || (Truthy(a.Get(1, "boolean", false)) && !Truthy(v)) ? a.Get(0, "default_value", "") : v;
            case "string": a.Check("the string filter"); return Str(v);
            case "int":
                a.Check("the int filter", "default", "base");
                return ToInt(v, a.Get(0, "default", 0L), ToLong(a.Get(1, "base", 10L)));
            case "float":
                a.Check("the float filter", "default");
                return ToFloat(v, a.Get(0, "default", 0.0));
            case "list": a.Check("the list filter"); return new List<object?>(Iterate(v));
            case "items":
                a.Check("the items filter");
                return v switch
                {
                    Undefined => new List<object?>(),
                    OrderedDictionary<string, object?> d => d.Select(p => (object?)new List<object?> { p.Key, p.Value }).ToList(),
                    _ => throw new TemplateRuntimeException($"the items filter needs a mapping, not '{TypeName(v)}'"),
                };
            case "selectattr" or "rejectattr":
                if (a.Positional.Count == 0 || a.Named.Count > 0) throw new TemplateRuntimeException($"the {name} filter takes an attribute name, then an optional test and its arguments");
                return Select(v, a.Positional[0], a.Positional.Skip(1).ToList(), name == "selectattr");
            case "select" or "reject":
                if (a.Named.Count > 0) throw new TemplateRuntimeException($"the {name} filter takes a test name and its arguments");
                return Select(v, null, a.Positional, name == "select");
            case "map": return Map(v, a);
            case "reverse":
                a.Check("the reverse filter");
                if (v is string str)
                {
                    var runes = str.EnumerateRunes().ToArray();
                    Array.Reverse(runes);
                    return string.Concat(runes.Select(r => r.ToString()));
                }
                var reversed = new List<object?>(Iterate(v));
                reversed.Reverse();
                return reversed;
            case "safe": a.Check("the safe filter"); return v;
            case "abs":
                a.Check("the abs filter");
                return v switch
                {
                    long l => (object)checked(Math.Abs(l)),
                    double d => Math.Abs(d),
                    bool b => b ? 1L : 0L,
                    Undefined u => throw UndefinedUse(u),
                    _ => throw new TemplateRuntimeException($"bad operand type for abs(): '{TypeName(v)}'"),
                };
            default:
                throw new TemplateRuntimeException($"the '{name}' filter is not supported");
        }
    }

    public static object? Length(object? v) => v switch
    {
        Undefined => 0L,
        string s => (long)s.EnumerateRunes().Count(),
        List<object?> l => (long)l.Count,
        OrderedDictionary<string, object?> d => (long)d.Count,
        _ => throw new TemplateRuntimeException($"object of type '{TypeName(v)}' has no len()"),
    };

    /// <summary>Jinja's attribute paths in selectattr/map/join: "a.b.0", each part looked up as an item.</summary>
    private static object? AttrPath(object? item, object? path)
    {
        if (path is long index) return GetItem(item, index);
        foreach (var part in Str(path).Split('.'))
            item = GetItem(item, long.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out long i) ? i : part);
        return item;
    }

    private static List<object?> Select(object? v, object? attribute, List<object?> testAndArgs, bool keep)
    {
        Func<object?, bool> pass;
        if (testAndArgs.Count == 0) pass = Truthy;
        else
        {
            string test = testAndArgs[0] as string ?? throw new TemplateRuntimeException("a test name must be a string");
            if (!Tests.Contains(test)) throw new TemplateRuntimeException($"the '{test}' test is not supported");
            var args = new Args(testAndArgs.Skip(1).ToList(), new Dictionary<string, object?>());
            pass = x => Test(test, x, args);
        }
        return Iterate(v).Where(x => pass(attribute is null ? x : AttrPath(x, attribute)) == keep).ToList();
    }

    private static List<object?> Map(object? v, Args a)
    {
        var items = Iterate(v);
        if (a.Named.ContainsKey("attribute"))
        {
            a.Check("the map filter", "attribute", "default");
            if (a.Positional.Count > 0) throw new TemplateRuntimeException("the map filter takes either attribute= or a filter name");
            bool hasDefault = a.Named.TryGetValue("default", out var fallback);
            return items.Select(x => AttrPath(x, a.Named["attribute"]) is var r && r is Undefined && hasDefault ? fallback : r).ToList();
        }
        if (a.Positional.Count == 0 || a.Positional[0] is not string filter)
            throw new TemplateRuntimeException("the map filter needs attribute= or a filter name");
        if (!Filters.Contains(filter) || filter == "map") throw new TemplateRuntimeException($"the '{filter}' filter is not supported in map");
        var rest = new Args(a.Positional.Skip(1).ToList(), a.Named);
        return items.Select(x => Filter(filter, x, rest)).ToList();
    }

    private static object? ToInt(object? v, object? fallback, long numberBase)
    {
        switch (v)
        {
            case long l: return l;
            case bool b: return b ? 1L : 0L;
            case double d: return double.IsFinite(d) && Math.Abs(d) < 9.2e18 ? (long)Math.Truncate(d) : fallback;
            case Undefined u: throw UndefinedUse(u);
            case string s:
                if (TryParseInt(s, numberBase, out long parsed)) return parsed;
                return TryParseFloat(s, out double f) && double.IsFinite(f) && Math.Abs(f) < 9.2e18 ? (long)Math.Truncate(f) : fallback;
            default: return fallback;
        }
    }

    private static object? ToFloat(object? v, object? fallback) => v switch
    {
        double d => d,
        long l => (double)l,
        bool b => b ? 1.0 : 0.0,
        Undefined u => throw UndefinedUse(u),
        string s => TryParseFloat(s, out double f) ? f : fallback,
        _ => fallback,
    };

    private static bool TryParseFloat(string s, out double value)
    {
        string t = Strip(s, null, true, true).Replace("_", "");
        string lower = t.ToLowerInvariant().TrimStart('+', '-');
        if (lower is "inf" or "infinity" or "nan")
        {
            value = lower == "nan" ? double.NaN : t.StartsWith('-') ? double.NegativeInfinity : double.PositiveInfinity;
            return true;
        }
        return double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out value);
    }

    public static bool Test(string name, object? v, Args a)
    {
        object? Arg()
        {
            if (a.Positional.Count + a.Named.Count == 0) throw new TemplateRuntimeException($"the '{name}' test needs an argument");
            return a.Positional.Count > 0 ? a.Positional[0] : a.Named.Values.First();
        }
        return name switch
        {
            "defined" => v is not Undefined,
            "undefined" => v is Undefined,
            "none" => v is null,
            "string" => v is string,
            "mapping" => v is OrderedDictionary<string, object?>,
            // Jinja's Undefined iterates (as empty) and has a length, so it passes both.
            "iterable" or "sequence" => v is string or List<object?> or OrderedDictionary<string, object?> or Undefined,
            "number" => v is long or double or bool,
            "integer" => v is long,
            "float" => v is double,
            "boolean" => v is bool,
            "true" => v is true,
            "false" => v is false,
            "eq" or "equalto" => PyEquals(v, Arg()),
            "ne" => !PyEquals(v, Arg()),
            "lt" or "lessthan" => PyCompare(v, Arg(), "<") < 0,
            "le" => PyCompare(v, Arg(), "<=") <= 0,
            "gt" or "greaterthan" => PyCompare(v, Arg(), ">") > 0,
            "ge" => PyCompare(v, Arg(), ">=") >= 0,
            "in" => Contains(Arg(), v),
            "odd" => ToLong(v) % 2 != 0,
            "even" => ToLong(v) % 2 == 0,
            "divisibleby" => ToLong(Arg()) is var n && n != 0 ? ToLong(v) % n == 0 : throw new TemplateRuntimeException("divisibleby 0"),
            "sameas" => Arg() is var other && (v is null ? other is null : v is bool or long ? PyEquals(v, other) && v.GetType() == other?.GetType() : ReferenceEquals(v, other)),
            "lower" => IsCase(Str(v), upper: false),
            "upper" => IsCase(Str(v), upper: true),
            _ => throw new TemplateRuntimeException($"the '{name}' test is not supported"),
        };
    }

    /// <summary>Python's str.islower()/isupper(): at least one cased character, and all of them in that case.</summary>
    private static bool IsCase(string s, bool upper)
    {
        bool any = false;
        foreach (char c in s)
        {
            if (char.IsUpper(c)) { if (!upper) return false; any = true; }
            else if (char.IsLower(c)) { if (upper) return false; any = true; }
        }
        return any;
    }
}
