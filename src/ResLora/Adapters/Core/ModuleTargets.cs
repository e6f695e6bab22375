using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>
/// <c>target_modules</c>/<c>exclude_modules</c> (peft-format.md §2.3): either a list of names (a module matches when its path
/// equals a name or ends with "." + name) or a single string, which is a regex that must match the whole path;
/// the string "all-linear" (any case) means every linear inside the decoder layers, never lm_head.
/// </summary>
[JsonConverter(typeof(ModuleTargetsConverter))]
public sealed record ModuleTargets
{
    /// <summary>The regex (or "all-linear") when the JSON value was a string; otherwise null.</summary>
    public string? Pattern { get; }

    /// <summary>The names when the JSON value was a list; otherwise null.</summary>
    public IReadOnlyList<string>? Names { get; }

    private ModuleTargets(string? pattern, IReadOnlyList<string>? names) { Pattern = pattern; Names = names; }

    public static ModuleTargets List(params string[] names) => new(null, names.ToArray());
    public static ModuleTargets Regex(string pattern) => new(pattern, null);
    public static ModuleTargets AllLinear { get; } = new("all-linear", null);

    /// <summary>
    /// A command-line value: "all-linear" (any case), a comma list of names / dotted suffixes, or — when it has regex
    /// metacharacters — a full-match regex, as PEFT reads <c>target_modules</c>. <paramref name="flag"/> names the flag in errors.
    /// </summary>
    public static ModuleTargets FromCommandLine(string s, string flag)
    {
        s = s.Trim();
        if (s.Length == 0) throw new UserInputException($"{flag} is empty; give module names such as q_proj,v_proj, or all-linear.");
        if (string.Equals(s, "all-linear", StringComparison.OrdinalIgnoreCase)) return AllLinear;
        if (s.IndexOfAny(new[] { '*', '(', ')', '[', ']', '|', '^', '$', '\\', '+', '?' }) >= 0) return Regex(s);
        return List(s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
    }

    public bool IsAllLinear => Pattern is { } p && string.Equals(p, "all-linear", StringComparison.OrdinalIgnoreCase);

    /// <summary>PEFT's matching rule for one module path (all-linear: decoder layers only).</summary>
    public bool Matches(LinearSpec spec) => MatchingEntry(spec) is not null;

    /// <summary>The list entry / pattern that matched <paramref name="spec"/>, or null.</summary>
    public string? MatchingEntry(LinearSpec spec)
    {
        if (IsAllLinear) return spec.LayerIndex >= 0 && spec.ModuleType != "lm_head" ? Pattern : null;
        if (Pattern is { } p) return FullMatch(p, spec.Name) ? p : null;
        foreach (var n in Names!)
            if (spec.Name == n || spec.Name.EndsWith("." + n, StringComparison.Ordinal)) return n;
        return null;
    }

    /// <summary>The entries that can each match nothing and should be checked (list names, or the single pattern).</summary>
    public IEnumerable<string> Entries => Names ?? new[] { Pattern! };

    internal void Validate(string field)
    {
        if (Names is { } n)
        {
            if (n.Count == 0) throw new UserInputException($"adapter config field '{field}' is an empty list: name at least one module (e.g. [\"q_proj\",\"v_proj\"]) or use null.");
            if (n.Any(string.IsNullOrWhiteSpace)) throw new UserInputException($"adapter config field '{field}' contains an empty module name: remove it.");
        }
        else if (!IsAllLinear) CheckRegex(Pattern!, field);
    }

    internal static void CheckRegex(string pattern, string field)
    {
        try { _ = new System.Text.RegularExpressions.Regex(pattern); }
        catch (ArgumentException e)
        {
            throw new UserInputException($"adapter config field '{field}': '{pattern}' is not a valid regular expression ({e.Message}); fix the pattern or use a list of names.", e);
        }
    }

    internal static bool FullMatch(string pattern, string text) =>
        System.Text.RegularExpressions.Regex.IsMatch(text, "^(?:" + pattern + ")$", System.Text.RegularExpressions.RegexOptions.CultureInvariant);

    public override string ToString() => Names is { } n ? "[" + string.Join(", ", n) + "]" : $"\"{Pattern}\"";
}

internal sealed class ModuleTargetsConverter : JsonConverter<ModuleTargets>
{
    public override ModuleTargets? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        switch (reader.TokenType)
        {
            case JsonTokenType.Null: return null;
            case JsonTokenType.String: return ModuleTargets.Regex(reader.GetString()!);
            case JsonTokenType.StartArray:
                var names = new List<string>();
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                {
                    if (reader.TokenType != JsonTokenType.String) throw new JsonException($"target_modules/exclude_modules: list entries must be strings, found {reader.TokenType}.");
                    names.Add(reader.GetString()!);
                }
                return ModuleTargets.List(names.ToArray());
            default:
                throw new JsonException($"target_modules/exclude_modules must be a string (regex or \"all-linear\") or a list of strings, found {reader.TokenType}.");
        }
    }

    public override void Write(Utf8JsonWriter writer, ModuleTargets value, JsonSerializerOptions options)
    {
        if (value.Names is { } n)
        {
            writer.WriteStartArray();
            foreach (var s in n) writer.WriteStringValue(s);
            writer.WriteEndArray();
        }
        else writer.WriteStringValue(value.Pattern);
    }
}
