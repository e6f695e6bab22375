using System.Text;
using static ResLora.Templates.TemplateValues;

namespace ResLora.Templates;

/// <summary>Python's arithmetic on the value model: int stays int (checked), <c>/</c> is true division, <c>//</c> and <c>%</c> floor.</summary>
internal static class TemplateOperators
{
    public static object? Binary(string op, object? a, object? b)
    {
        if (a is Undefined ua) throw UndefinedUse(ua);
        if (b is Undefined ub) throw UndefinedUse(ub);
        try
        {
            switch (op)
            {
                case "+" when a is string s && b is string t:
                    TemplateMeter.Current.Produce((long)s.Length + t.Length, "a string '+'");
                    return s + t;
                case "+" when a is List<object?> x && b is List<object?> y:
                    TemplateMeter.Current.Produce((long)x.Count + y.Count, "a list '+'");
                    return x.Concat(y).ToList();
                case "*" when a is string s && IsInt(b): return Repeat(s, ToLong(b));
                case "*" when IsInt(a) && b is string s: return Repeat(s, ToLong(a));
                case "*" when a is List<object?> x && IsInt(b): return RepeatList(x, ToLong(b));
                case "*" when IsInt(a) && b is List<object?> x: return RepeatList(x, ToLong(a));
                case "%" when a is string: throw new TemplateRuntimeException("string formatting with '%' is not supported");
            }
            if (!IsNumber(a) || !IsNumber(b))
                throw new TemplateRuntimeException($"unsupported operand type(s) for {op}: '{TypeName(a)}' and '{TypeName(b)}'");
            bool ints = a is not double && b is not double;
            switch (op)
            {
                case "+": return ints ? (object)checked(ToLong(a) + ToLong(b)) : ToDouble(a) + ToDouble(b);
                case "-": return ints ? (object)checked(ToLong(a) - ToLong(b)) : ToDouble(a) - ToDouble(b);
                case "*": return ints ? (object)checked(ToLong(a) * ToLong(b)) : ToDouble(a) * ToDouble(b);
                case "/":
                    if (ToDouble(b) == 0) throw new TemplateRuntimeException("division by zero");
                    return ToDouble(a) / ToDouble(b);
                case "//":
                    if (ToDouble(b) == 0) throw new TemplateRuntimeException("integer division or modulo by zero");
                    if (!ints) return Math.Floor(ToDouble(a) / ToDouble(b));
                    long q = ToLong(a) / ToLong(b);
                    return (ToLong(a) % ToLong(b) != 0 && (ToLong(a) < 0) != (ToLong(b) < 0)) ? q - 1 : q;
                case "%":
                    if (ToDouble(b) == 0) throw new TemplateRuntimeException("integer division or modulo by zero");
                    if (!ints)
                    {
                        double x = ToDouble(a), y = ToDouble(b);
                        return x - y * Math.Floor(x / y);
                    }
                    long r = ToLong(a) % ToLong(b);
                    return r != 0 && (r < 0) != (ToLong(b) < 0) ? r + ToLong(b) : r;
                case "**":
                    if (ints && ToLong(b) >= 0) return IntPower(ToLong(a), ToLong(b));
                    return Math.Pow(ToDouble(a), ToDouble(b));
            }
        }
        catch (OverflowException)
        {
            throw new TemplateRuntimeException($"integer overflow in '{op}'");
        }
        throw new TemplateRuntimeException($"unknown operator '{op}'");
    }

    public static object? Unary(string op, object? v) => v switch
    {
        Undefined u => throw UndefinedUse(u),
        long l when op == "-" => (object)checked(-l),
        double d when op == "-" => -d,
        bool b when op == "-" => b ? -1L : 0L,
        long or double => v,
        bool b => b ? 1L : 0L,
        _ => throw new TemplateRuntimeException($"bad operand type for unary {op}: '{TypeName(v)}'"),
    };

    /// <summary>One comparison of a chain: <c>== != &lt; &lt;= &gt; &gt;= in notin</c>.</summary>
    public static bool Compare(string op, object? a, object? b) => op switch
    {
        "==" => PyEquals(a, b),
        "!=" => !PyEquals(a, b),
        "<" => PyCompare(a, b, op) < 0,
        "<=" => PyCompare(a, b, op) <= 0,
        ">" => PyCompare(a, b, op) > 0,
        ">=" => PyCompare(a, b, op) >= 0,
        "in" => Contains(b, a),
        "notin" => !Contains(b, a),
        _ => throw new TemplateRuntimeException($"unknown comparison '{op}'"),
    };

    private static bool IsInt(object? v) => v is long or bool;

    /// <summary>
    /// <c>x ** n</c> for ints by squaring (at most 63 checked multiplications, however large <paramref name="n"/>), so
    /// <c>2 ** 64</c> is an overflow error at once and <c>1 ** 9223372036854775807</c> is 1 at once.
    /// </summary>
    private static long IntPower(long basis, long n)
    {
        if (basis is 0 or 1) return n == 0 ? 1 : basis;
        if (basis == -1) return (n & 1) == 0 ? 1 : -1;
        long result = 1;
        while (n > 0)
        {
            if ((n & 1) == 1) result = checked(result * basis);
            n >>= 1;
            if (n > 0) basis = checked(basis * basis);
        }
        return result;
    }

    /// <summary>Python's <c>str * n</c>; the length is checked (without wrapping) before anything is built.</summary>
    private static string Repeat(string s, long n)
    {
        if (n <= 0 || s.Length == 0) return "";
        TemplateMeter.Current.Produce(TemplateMeter.SafeMultiply(s.Length, n), "a repeated string");
        // Filled by doubling copies: StringBuilder.Insert(0, s, n) takes seconds for 10 M one-character copies.
        return string.Create(s.Length * (int)n, s, static (span, unit) =>
        {
            unit.AsSpan().CopyTo(span);
            for (int filled = unit.Length; filled < span.Length; filled *= 2)
                span[..Math.Min(filled, span.Length - filled)].CopyTo(span[filled..]);
        });
    }

    /// <summary>Python's <c>list * n</c>; the length is checked (without wrapping) before anything is built.</summary>
    private static List<object?> RepeatList(List<object?> items, long n)
    {
        if (n <= 0 || items.Count == 0) return new List<object?>();
        TemplateMeter.Current.Produce(TemplateMeter.SafeMultiply(items.Count, n), "a repeated list");
        var result = new List<object?>(items.Count * (int)n);
        for (long i = 0; i < n; i++) result.AddRange(items);
        return result;
    }
}
