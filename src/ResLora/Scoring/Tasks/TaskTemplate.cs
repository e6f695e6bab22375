using System.Text;

namespace ResLora.Scoring.Tasks;

/// <summary>
/// The templates of task files: literal text with <c>{name}</c> placeholders; <c>{{</c> and <c>}}</c> are literal
/// braces. Deliberately not Jinja: a task template only substitutes named values.
/// </summary>
internal static class TaskTemplate
{
    /// <summary>The placeholder names in <paramref name="template"/>, in order; a malformed template is an error naming <paramref name="where"/>.</summary>
    public static IReadOnlyList<string> Placeholders(string template, string where)
    {
        var names = new List<string>();
        Walk(template, where, _ => { }, name => names.Add(name));
        return names;
    }

    /// <summary>The template with each placeholder replaced by <paramref name="valueOf"/>(name).</summary>
    public static string Render(string template, string where, Func<string, string> valueOf)
    {
        var sb = new StringBuilder(template.Length + 64);
        Walk(template, where, text => sb.Append(text), name => sb.Append(valueOf(name)));
        return sb.ToString();
    }

    private static void Walk(string template, string where, Action<string> literal, Action<string> placeholder)
    {
        int i = 0;
        while (i < template.Length)
        {
            char c = template[i];
            if (c == '{' && i + 1 < template.Length && template[i + 1] == '{') { literal("{"); i += 2; continue; }
            if (c == '}' && i + 1 < template.Length && template[i + 1] == '}') { literal("}"); i += 2; continue; }
            if (c == '}')
                throw new UserInputException($"{where}: a lone '}}' at character {i}; write '}}}}' for a literal brace.");
            if (c == '{')
            {
                int close = template.IndexOf('}', i + 1);
                if (close < 0)
                    throw new UserInputException($"{where}: '{{' at character {i} is never closed; write '{{{{' for a literal brace.");
                string name = template[(i + 1)..close];
                if (name.Length == 0 || !name.All(ch => char.IsLetterOrDigit(ch) || ch == '_'))
                    throw new UserInputException($"{where}: '{{{name}}}' is not a placeholder name (letters, digits, '_'); write '{{{{' for a literal brace.");
                placeholder(name);
                i = close + 1;
                continue;
            }
            int next = template.IndexOfAny(['{', '}'], i);
            if (next < 0) next = template.Length;
            literal(template[i..next]);
            i = next;
        }
    }
}
