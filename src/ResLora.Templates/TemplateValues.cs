using System.Collections;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ResLora.Templates;

/// <summary>
/// Jinja's default Undefined: printed as "", falsy, iterates as empty, equal only to another undefined; using it as
/// an object (attribute, index, arithmetic, ordering) raises an error carrying <see cref="Hint"/>.
/// </summary>
internal sealed class Undefined
{
    public Undefined(string hint) => Hint = hint;

    /// <summary>Why it is undefined, as Jinja words it: "'foo' is undefined", "'dict object' has no attribute 'x'".</summary>
    public string Hint { get; }
}

/// <summary>What <c>namespace(...)</c> returns: the one object a template may assign attributes on from inside a loop.</summary>
internal sealed class TemplateNamespace
{
    public OrderedDictionary<string, object?> Attributes { get; } = new(StringComparer.Ordinal);
}

/// <summary>The <c>loop</c> variable of a for loop.</summary>
internal sealed class LoopInfo
{
    private readonly List<object?> _items;

    public LoopInfo(List<object?> items) => _items = items;

    public int Index0 { get; set; }

    public object? Get(string name) => name switch
    {
        "index" => (long)Index0 + 1,
        "index0" => (long)Index0,
        "first" => Index0 == 0,
        "last" => Index0 == _items.Count - 1,
        "length" => (long)_items.Count,
        "revindex" => (long)(_items.Count - Index0),
        "revindex0" => (long)(_items.Count - Index0 - 1),
        "previtem" => Index0 > 0 ? _items[Index0 - 1] : new Undefined("there is no previous item"),
        "nextitem" => Index0 < _items.Count - 1 ? _items[Index0 + 1] : new Undefined("there is no next item"),
        "depth" => 1L,
        "depth0" => 0L,
        _ => new Undefined($"'LoopContext object' has no attribute '{name}'"),
    };
}

/// <summary>A render-time error without its line; the renderer adds the line of the expression that raised it.</summary>
internal sealed class TemplateRuntimeException : Exception
{
    public TemplateRuntimeException(string message) : base(message) { }
}

/// <summary>
/// The template's value model, Python's semantics on .NET values: <c>null</c> (None), bool, long (int), double
/// (float), string, <see cref="List{T}"/> (list and tuple), <see cref="OrderedDictionary{TKey,TValue}"/> (dict, in
/// insertion order), <see cref="Undefined"/>, <see cref="TemplateNamespace"/> and <see cref="LoopInfo"/>.
/// </summary>
internal static partial class TemplateValues
{
    /// <summary>Converts a caller's value to the value model; <paramref name="path"/> names it in the error.</summary>
    public static object? FromDotNet(object? value, string path)
    {
        switch (value)
        {
            case null: return null;
            case string s: return s;
            case bool b: return b;
            case char c: return c.ToString();
            case sbyte or byte or short or ushort or int or uint or long: return Convert.ToInt64(value, CultureInfo.InvariantCulture);
            case ulong u when u <= long.MaxValue: return (long)u;
            case float or double or decimal: return Convert.ToDouble(value, CultureInfo.InvariantCulture);
            case ITemplateObject o:
                var fields = new OrderedDictionary<string, object?>(StringComparer.Ordinal);
                foreach (var (k, v) in o.TemplateFields()) fields[k] = FromDotNet(v, $"{path}.{k}");
                return fields;
            case JsonNode node: return FromJsonText(node.ToJsonString(), path);
            case JsonElement element: return FromJsonText(element.GetRawText(), path);
            case IReadOnlyDictionary<string, object?> map:
                var dict = new OrderedDictionary<string, object?>(StringComparer.Ordinal);
                foreach (var (k, v) in map) dict[k] = FromDotNet(v, $"{path}.{k}");
                return dict;
            case IDictionary map:
                var d = new OrderedDictionary<string, object?>(StringComparer.Ordinal);
                foreach (DictionaryEntry e in map)
                {
                    if (e.Key is not string key) throw new ArgumentException($"chat template variable '{path}': dictionary keys must be strings.");
                    d[key] = FromDotNet(e.Value, $"{path}.{key}");
                }
                return d;
            case IEnumerable items:
                var list = new List<object?>();
                foreach (var item in items) list.Add(FromDotNet(item, $"{path}[{list.Count}]"));
                return list;
            default:
                throw new ArgumentException($"chat template variable '{path}': values of type {value.GetType().Name} are not supported; "
                    + "use strings, numbers, booleans, null, lists and string-keyed dictionaries.");
        }
    }

    /// <summary>JSON as Python's json.loads reads it: "1" an int, "1.0" a float, objects in document order.</summary>
    private static object? FromJsonText(string json, string path) => FromJsonElement(JsonDocument.Parse(json).RootElement, path);

    private static object? FromJsonElement(JsonElement e, string path)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.Object:
                var d = new OrderedDictionary<string, object?>(StringComparer.Ordinal);
                foreach (var p in e.EnumerateObject()) d[p.Name] = FromJsonElement(p.Value, $"{path}.{p.Name}");
                return d;
            case JsonValueKind.Array:
                return e.EnumerateArray().Select((x, i) => FromJsonElement(x, $"{path}[{i}]")).ToList();
            case JsonValueKind.String: return e.GetString();
            case JsonValueKind.Number:
                // Python's json reads "1" as int and "1.0" or "1e3" as float.
                string raw = e.GetRawText();
                return raw.IndexOfAny(new[] { '.', 'e', 'E' }) < 0 && e.TryGetInt64(out long l) ? (object)l : e.GetDouble();
            case JsonValueKind.True: return true;
            case JsonValueKind.False: return false;
            default: return null;
        }
    }

    public static OrderedDictionary<string, object?> Dict(params (string Key, object? Value)[] items)
    {
        var d = new OrderedDictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (k, v) in items) d[k] = v;
        return d;
    }

    public static string TypeName(object? v) => v switch
    {
        null => "NoneType",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        List<object?> => "list",
        OrderedDictionary<string, object?> => "dict",
        Undefined => "Undefined",
        TemplateNamespace => "Namespace",
        LoopInfo => "LoopContext",
        _ => v.GetType().Name,
    };

    public static bool IsNumber(object? v) => v is long or double or bool;

    public static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        OrderedDictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    /// <summary>Python's str(): what <c>{{ x }}</c> prints.</summary>
    public static string Str(object? v) => v switch
    {
        string s => s,
        Undefined => "",
        null => "None",
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => PyFormat.Float(d),
        LoopInfo => "<LoopContext>",
        _ => Repr(v),
    };

    /// <summary>Python's repr(): how lists and dicts print their items.</summary>
    public static string Repr(object? v)
    {
        if (v is string s) return PyFormat.ReprString(s);
        var sb = new StringBuilder();
        var meter = TemplateMeter.Current;
        ReprInto(sb, v, meter);
        meter.Produce(sb.Length, "the printed value");
        return sb.ToString();
    }

    /// <summary>
    /// Writes repr(<paramref name="v"/>), within the budget's depth (a namespace may hold itself; printing it must
    /// end) and value length (checked after every item, so a list of big strings stops early).
    /// </summary>
    private static void ReprInto(StringBuilder sb, object? v, TemplateMeter meter)
    {
        switch (v)
        {
            case string s:
                sb.Append(PyFormat.ReprString(s));
                break;
            case List<object?> list:
                meter.Enter();
                sb.Append('[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) sb.Append(", ");
                    ReprInto(sb, list[i], meter);
                    meter.Limit(sb.Length, "the printed list");
                }
                sb.Append(']');
                meter.Exit();
                break;
            case OrderedDictionary<string, object?> d:
                meter.Enter();
                sb.Append('{');
                bool first = true;
                foreach (var (key, value) in d)
                {
                    if (!first) sb.Append(", ");
                    first = false;
                    sb.Append(PyFormat.ReprString(key)).Append(": ");
                    ReprInto(sb, value, meter);
                    meter.Limit(sb.Length, "the printed dict");
                }
                sb.Append('}');
                meter.Exit();
                break;
            case TemplateNamespace n:
                sb.Append("<Namespace ");
                ReprInto(sb, n.Attributes, meter);
                sb.Append('>');
                break;
            default:
                sb.Append(Str(v));
                break;
        }
    }

    public static TemplateRuntimeException UndefinedUse(Undefined u) => new(u.Hint);

    /// <summary>Python's ==, with Jinja's rule that an undefined equals only another undefined.</summary>
    public static bool PyEquals(object? a, object? b)
    {
        if (a is List<object?> or OrderedDictionary<string, object?>)
        {
            var meter = TemplateMeter.Current;
            meter.Enter();
            bool equal = PyEqualsCore(a, b);
            meter.Exit();
            return equal;
        }
        return PyEqualsCore(a, b);
    }

    private static bool PyEqualsCore(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b))
        {
            if (a is double || b is double) return ToDouble(a) == ToDouble(b);
            return ToLong(a) == ToLong(b);
        }
        switch (a)
        {
            case null: return b is null;
            case Undefined: return b is Undefined;
            case string s: return b is string t && string.Equals(s, t, StringComparison.Ordinal);
            case List<object?> x:
                return b is List<object?> y && x.Count == y.Count && x.Zip(y).All(p => PyEquals(p.First, p.Second));
            case OrderedDictionary<string, object?> m:
                return b is OrderedDictionary<string, object?> n && m.Count == n.Count
                    && m.All(p => n.TryGetValue(p.Key, out var other) && PyEquals(p.Value, other));
            default: return ReferenceEquals(a, b);
        }
    }

    /// <summary>Python's ordering: numbers with numbers, strings by code point, lists item by item.</summary>
    public static int PyCompare(object? a, object? b, string op)
    {
        if (a is Undefined ua) throw UndefinedUse(ua);
        if (b is Undefined ub) throw UndefinedUse(ub);
        if (IsNumber(a) && IsNumber(b))
            return a is double || b is double ? ToDouble(a).CompareTo(ToDouble(b)) : ToLong(a).CompareTo(ToLong(b));
        if (a is string s && b is string t) return Math.Sign(string.CompareOrdinal(s, t));
        if (a is List<object?> x && b is List<object?> y)
        {
            var meter = TemplateMeter.Current;
            meter.Enter();
            for (int i = 0; i < Math.Min(x.Count, y.Count); i++)
                if (!PyEquals(x[i], y[i]))
                {
                    int order = PyCompare(x[i], y[i], op);
                    meter.Exit();
                    return order;
                }
            meter.Exit();
            return x.Count.CompareTo(y.Count);
        }
        throw new TemplateRuntimeException($"'{op}' not supported between instances of '{TypeName(a)}' and '{TypeName(b)}'");
    }

    public static long ToLong(object? v) => v switch
    {
        long l => l,
        Undefined u => throw UndefinedUse(u),
        bool b => b ? 1 : 0,
        _ => throw new TemplateRuntimeException($"expected an integer but got '{TypeName(v)}'"),
    };

    public static double ToDouble(object? v) => v switch
    {
        double d => d,
        Undefined u => throw UndefinedUse(u),
        long l => l,
        bool b => b ? 1 : 0,
        _ => throw new TemplateRuntimeException($"expected a number but got '{TypeName(v)}'"),
    };
}
