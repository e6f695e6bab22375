using System.Text;

namespace ResLora.Templates;

/// <summary>Walking and indexing values: iteration, <c>in</c>, attributes, items and slices, with Python's rules.</summary>
internal static partial class TemplateValues
{
    /// <summary>The items a for loop or filter walks: a list's items, a string's characters, a dict's keys.</summary>
    public static List<object?> Iterate(object? v) => v switch
    {
        List<object?> l => l,
        string s => IterateString(s),
        OrderedDictionary<string, object?> d => d.Keys.Select(k => (object?)k).ToList(),
        Undefined => new List<object?>(),
        _ => throw new TemplateRuntimeException($"'{TypeName(v)}' object is not iterable"),
    };

    private static List<object?> IterateString(string s)
    {
        TemplateMeter.Current.Produce(s.Length, "the list of a string's characters");
        return s.EnumerateRunes().Select(r => (object?)r.ToString()).ToList();
    }

    /// <summary><c>item in container</c>.</summary>
    public static bool Contains(object? container, object? item) => container switch
    {
        string s when item is string t => s.Contains(t, StringComparison.Ordinal),
        string => throw new TemplateRuntimeException($"'in <string>' requires string as left operand, not {TypeName(item)}"),
        List<object?> l => l.Any(x => PyEquals(x, item)),
        OrderedDictionary<string, object?> d => item is string k && d.ContainsKey(k),
        Undefined => false,
        _ => throw new TemplateRuntimeException($"argument of type '{TypeName(container)}' is not iterable"),
    };

    /// <summary><c>obj.name</c>: a dict's key, a namespace's attribute, a loop property; undefined when missing.</summary>
    public static object? GetAttr(object? obj, string name) => obj switch
    {
        Undefined u => throw UndefinedUse(u),
        OrderedDictionary<string, object?> d => d.TryGetValue(name, out var v) ? v : new Undefined($"'dict object' has no attribute '{name}'"),
        TemplateNamespace ns => ns.Attributes.TryGetValue(name, out var v) ? v : new Undefined($"'Namespace object' has no attribute '{name}'"),
        LoopInfo loop => loop.Get(name),
        _ => new Undefined($"'{TypeName(obj)} object' has no attribute '{name}'"),
    };

    /// <summary><c>obj[key]</c>, Python indexing (negative from the end); undefined when out of range or missing.</summary>
    public static object? GetItem(object? obj, object? key)
    {
        if (obj is Undefined u) throw UndefinedUse(u);
        if (key is string name && obj is not OrderedDictionary<string, object?>) return GetAttr(obj, name);
        switch (obj)
        {
            case OrderedDictionary<string, object?> d:
                return key is string k && d.TryGetValue(k, out var v) ? v : new Undefined($"'dict object' has no attribute {Repr(key)}");
            case List<object?> list when key is long or bool:
                long i = ToLong(key);
                if (i < 0) i += list.Count;
                return i >= 0 && i < list.Count ? list[(int)i] : new Undefined($"'list object' has no element {Repr(key)}");
            case string s when key is long or bool:
                long j = ToLong(key);
                if (j < 0) j += s.Length;
                return j >= 0 && j < s.Length ? s[(int)j].ToString() : new Undefined($"'str object' has no element {Repr(key)}");
            default:
                return new Undefined($"'{TypeName(obj)} object' has no element {Repr(key)}");
        }
    }

    /// <summary><c>obj[start:stop:step]</c> with Python's slice rules.</summary>
    public static object? SliceOf(object? obj, object? start, object? stop, object? step)
    {
        if (obj is Undefined u) throw UndefinedUse(u);
        int n = obj switch
        {
            List<object?> l => l.Count,
            string s => s.Length,
            _ => -1,
        };
        if (n < 0) return new Undefined($"'{TypeName(obj)} object' cannot be sliced");
        long st = step is null ? 1 : ToLong(step);
        if (st == 0) throw new TemplateRuntimeException("slice step cannot be zero");
        // Any step longer than the sequence picks the same items; clamping it keeps 'i += st' below from wrapping.
        st = Math.Clamp(st, -(long)n - 1, (long)n + 1);
        long lower = st > 0 ? 0 : -1, upper = st > 0 ? n : n - 1;
        long Bound(object? v, long absent)
        {
            if (v is null) return absent;
            long x = ToLong(v);
            if (x < 0) return Math.Max(x + n, lower);
            return Math.Min(x, upper);
        }
        long from = Bound(start, st > 0 ? lower : upper), to = Bound(stop, st > 0 ? upper : lower);
        var picked = new List<int>();
        for (long i = from; st > 0 ? i < to : i > to; i += st) picked.Add((int)i);
        if (obj is string str)
        {
            var sb = new StringBuilder(picked.Count);
            foreach (int i in picked) sb.Append(str[i]);
            return sb.ToString();
        }
        var src = (List<object?>)obj!;
        return picked.Select(i => src[i]).ToList();
    }
}
