using System.Text;
using static ResLora.IO.Templates.TemplateValues;

namespace ResLora.IO.Templates;

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
                case "+" when a is string s && b is string t: return s + t;
                case "+" when a is List<object?> x && b is List<object?> y: return x.Concat(y).ToList();
                case "*" when a is string s && IsInt(b): return Repeat(s, ToLong(b));
                case "*" when IsInt(a) && b is string s: return Repeat(s, ToLong(a));
                case "*" when a is List<object?> x && IsInt(b): return Enumerable.Repeat(x, (int)Math.Clamp(ToLong(b), 0, 100_000)).SelectMany(l => l).ToList();
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
                    if (ints && ToLong(b) >= 0)
                    {
                        long result = 1, basis = ToLong(a);
                        for (long i = 0; i < ToLong(b); i++) result = checked(result * basis);
                        return result;
                    }
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

    private static string Repeat(string s, long n)
    {
        if (n <= 0 || s.Length == 0) return "";
        if (s.Length * n > 10_000_000) throw new TemplateRuntimeException("a repeated string would be longer than 10,000,000 characters");
        return new StringBuilder(s.Length * (int)n).Insert(0, s, (int)n).ToString();
    }
}
