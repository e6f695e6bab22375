using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace ResLora.Cli;

/// <summary>
/// <c>reslora train --config FILE</c>: a JSON or YAML recipe whose keys are train's flags without the dashes
/// (<c>batch-size</c> or <c>batch_size</c>). Its values become flags before the command line is parsed, so every check
/// of a flag applies to them; a flag given on the command line wins over the file. Each run writes the flags it was
/// given (file and command line) to <see cref="FileName"/> in --out, which <c>--config</c> reads back.
/// </summary>
internal static class TrainRecipe
{
    public const string FileName = Pipelines.FineTuning.RecipeFile;
    public const string Flag = "--config";

    /// <summary>Flags that say what to do with --out now rather than how to train; they are not written to the recipe.</summary>
    private static readonly HashSet<string> NotRecorded = new(StringComparer.Ordinal) { Flag, "--resume", "--overwrite", "--help" };

    private enum RecipeEntryKind { Text, Number, Bool, List }

    private sealed record RecipeValue(RecipeEntryKind Kind, string Text, IReadOnlyList<string> Items);

    /// <summary>
    /// <paramref name="args"/> with the recipe's flags inserted after <c>train</c> when they hold <c>--config FILE</c>
    /// (unchanged otherwise). Unknown keys and values of the wrong type are <see cref="UserInputException"/>s.
    /// </summary>
    public static string[] Expand(string[] args, Command train)
    {
        if (args.Length == 0 || args[0] != train.Name) return args;
        int at = Array.FindIndex(args, a => a == Flag || a.StartsWith(Flag + "=", StringComparison.Ordinal) || a.StartsWith(Flag + ":", StringComparison.Ordinal));
        if (at < 0) return args;
        string path = args[at].Length > Flag.Length ? args[at][(Flag.Length + 1)..] : at + 1 < args.Length ? args[at + 1] : throw new UserInputException($"{Flag} needs a recipe file (JSON or YAML).");
        if (!File.Exists(path)) throw new UserInputException($"{Flag} {path}: no such file.");
        var byName = new Dictionary<string, Option>(StringComparer.Ordinal);
        foreach (var o in train.Options.Where(o => !o.Hidden && o.Name.StartsWith("--", StringComparison.Ordinal) && o.Name is not (Flag or "--help")))
            byName[o.Name[2..]] = o;
        var given = args.Skip(1).Select(a => a.Split('=', ':')[0]).ToHashSet(StringComparer.Ordinal);
        var tokens = new List<string> { args[0] };
        foreach (var (key, value) in Read(path))
        {
            string name = key.Trim().TrimStart('-').Replace('_', '-').ToLowerInvariant();
            if (!byName.TryGetValue(name, out var option))
                throw new UserInputException(name == Flag[2..]
                    ? $"{path}: a recipe cannot name another recipe (key '{key}')."
                    : $"{path}: unknown key '{key}'; {Nearest(name, byName.Keys)} (keys are train's flags without the dashes; see reslora train --help).");
            if (value is null || option.Aliases.Append(option.Name).Any(given.Contains)) continue; // the command line wins
            tokens.AddRange(Tokens(path, key, option, value));
        }
        return tokens.Concat(args.Skip(1)).ToArray();
    }

    /// <summary>The recipe of a parsed train command: every flag given (file or command line) but those of <see cref="NotRecorded"/>, as JSON.</summary>
    public static string Record(ParseResult r, Command train)
    {
        var o = new JsonObject();
        foreach (var option in train.Options)
        {
            if (NotRecorded.Contains(option.Name) || r.GetResult(option) is not { Implicit: false } result) continue;
            o[option.Name[2..]] = result.GetValueOrDefault<object?>() switch
            {
                null => null,
                string[] list => new JsonArray(list.Select(s => (JsonNode?)JsonValue.Create(s)).ToArray()),
                bool b => JsonValue.Create(b),
                int i => JsonValue.Create(i),
                long l => JsonValue.Create(l),
                double d => JsonValue.Create(d),
                var other => JsonValue.Create(Convert.ToString(other, CultureInfo.InvariantCulture)),
            };
        }
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n";
    }

    private static IEnumerable<string> Tokens(string path, string key, Option option, RecipeValue v)
    {
        var type = Nullable.GetUnderlyingType(option.ValueType) ?? option.ValueType;
        string Wrong(string expected) => $"{path}: key '{key}' ({option.Name}) must be {expected}, got {Describe(v)}.";
        if (type == typeof(bool))
        {
            if (v.Kind != RecipeEntryKind.Bool) throw new UserInputException(Wrong("true or false"));
            return new[] { option.Name, v.Text };
        }
        if (type == typeof(int) || type == typeof(long))
        {
            if (v.Kind != RecipeEntryKind.Number || !long.TryParse(v.Text, NumberStyles.Integer, CultureInfo.InvariantCulture, out _)) throw new UserInputException(Wrong("an integer"));
            return new[] { $"{option.Name}={v.Text}" };
        }
        if (type == typeof(double) || type == typeof(float))
        {
            if (v.Kind != RecipeEntryKind.Number) throw new UserInputException(Wrong("a number"));
            return new[] { $"{option.Name}={v.Text}" };
        }
        if (type == typeof(string[]))
            return (v.Kind == RecipeEntryKind.List ? v.Items : new[] { v.Text }).Select(s => $"{option.Name}={s}");
        if (v.Kind == RecipeEntryKind.List) throw new UserInputException(Wrong("a string"));
        return new[] { $"{option.Name}={v.Text}" };
    }

    private static string Describe(RecipeValue v) => v.Kind switch
    {
        RecipeEntryKind.List => "a list",
        RecipeEntryKind.Text => $"the text \"{v.Text}\"",
        RecipeEntryKind.Bool => v.Text,
        _ => $"the number {v.Text}",
    };

    /// <summary>"did you mean ...": the flag nearest in edit distance.</summary>
    private static string Nearest(string name, IEnumerable<string> names)
    {
        var best = names.OrderBy(n => Distance(name, n)).ThenBy(n => n, StringComparer.Ordinal).First();
        return $"did you mean '{best}' (--{best})?";
    }

    private static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }

    /// <summary>The recipe's keys and values in file order (null: the key is given as null and left to its default).</summary>
    private static List<(string Key, RecipeValue? Value)> Read(string path)
    {
        string text = File.ReadAllText(path);
        bool yaml = Path.GetExtension(path).ToLowerInvariant() is ".yaml" or ".yml";
        return yaml ? ReadYaml(path, text) : ReadJson(path, text);
    }

    private static List<(string, RecipeValue?)> ReadJson(string path, string text)
    {
        JsonNode? root;
        try
        {
            root = JsonNode.Parse(text, documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        }
        catch (JsonException e)
        {
            throw new UserInputException($"{path}: not valid JSON ({e.Message}); a recipe is a JSON object of train's flags (or YAML in a .yaml/.yml file).", e);
        }
        if (root is not JsonObject obj) throw new UserInputException($"{path}: a recipe is a JSON object of train's flags, e.g. {{\"model\": \"...\", \"steps\": 200}}.");
        return obj.Select(kv => (kv.Key, kv.Value is null ? null : Json(path, kv.Key, kv.Value))).ToList();
    }

    private static RecipeValue Json(string path, string key, JsonNode node) => node switch
    {
        JsonArray a => new RecipeValue(RecipeEntryKind.List, "", a.Select(x => x is JsonValue sv && sv.GetValueKind() is not (JsonValueKind.Object or JsonValueKind.Array)
            ? Json(path, key, sv).Text : throw new UserInputException($"{path}: key '{key}' must be a list of strings or numbers, not of lists or objects.")).ToList()),
        JsonObject => throw new UserInputException($"{path}: key '{key}' holds an object; give the flag's value (a string, number, true/false or a list)."),
        _ => node.GetValueKind() switch
        {
            JsonValueKind.String => new RecipeValue(RecipeEntryKind.Text, node.GetValue<string>(), Array.Empty<string>()),
            JsonValueKind.True or JsonValueKind.False => new RecipeValue(RecipeEntryKind.Bool, node.GetValueKind() == JsonValueKind.True ? "true" : "false", Array.Empty<string>()),
            _ => new RecipeValue(RecipeEntryKind.Number, node.ToJsonString(), Array.Empty<string>()),
        },
    };

    private static List<(string, RecipeValue?)> ReadYaml(string path, string text)
    {
        var stream = new YamlStream();
        try
        {
            stream.Load(new StringReader(text));
        }
        catch (YamlException e)
        {
            throw new UserInputException($"{path}: not valid YAML ({e.Message}).", e);
        }
        if (stream.Documents.Count == 0) return new();
        if (stream.Documents[0].RootNode is not YamlMappingNode map) throw new UserInputException($"{path}: a recipe is a mapping of train's flags, e.g. \"steps: 200\".");
        var list = new List<(string, RecipeValue?)>();
        foreach (var (k, v) in map.Children)
        {
            string key = (k as YamlScalarNode)?.Value ?? throw new UserInputException($"{path}: keys are flag names, not lists or mappings.");
            list.Add((key, v switch
            {
                YamlScalarNode s => Scalar(s),
                YamlSequenceNode seq => new RecipeValue(RecipeEntryKind.List, "", seq.Children.Select(c => c is YamlScalarNode cs ? cs.Value ?? "" : throw new UserInputException($"{path}: key '{key}' must be a list of strings or numbers.")).ToList()),
                _ => throw new UserInputException($"{path}: key '{key}' holds a mapping; give the flag's value (a string, number, true/false or a list)."),
            }));
        }
        return list;
    }

    /// <summary>A YAML scalar as JSON would type it: quoted is text; plain true/false, numbers and null are typed (YAML 1.2 core schema).</summary>
    private static RecipeValue? Scalar(YamlScalarNode s)
    {
        string t = s.Value ?? "";
        if (s.Style is not ScalarStyle.Plain) return new RecipeValue(RecipeEntryKind.Text, t, Array.Empty<string>());
        if (t is "" or "~" or "null" or "Null" or "NULL") return null;
        if (t is "true" or "True" or "TRUE" or "false" or "False" or "FALSE") return new RecipeValue(RecipeEntryKind.Bool, t.ToLowerInvariant(), Array.Empty<string>());
        if (double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out _)) return new RecipeValue(RecipeEntryKind.Number, t, Array.Empty<string>());
        return new RecipeValue(RecipeEntryKind.Text, t, Array.Empty<string>());
    }
}
