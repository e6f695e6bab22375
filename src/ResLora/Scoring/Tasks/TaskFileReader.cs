using System.Text.Json;
using System.Text.RegularExpressions;

namespace ResLora.Scoring.Tasks;

/// <summary>
/// Reads and checks one task file (<c>docs/evaluation-tasks.md</c>). Read by hand rather than by the serializer so that
/// an unknown field, a value of the wrong type and a conflicting combination each get a message naming the file, the
/// field and the fix.
/// </summary>
internal static class TaskFileReader
{
    private static readonly string[] ChoiceFields =
        ["parse_field", "parse_pattern", "choice_split", "choices_field", "choices", "context_template", "target_delimiter",
         "fewshot_delimiter", "gold_field", "gold_pattern", "gold_base", "gold_map", "scoring", "blank"];

    private static readonly string[] GenerateFields =
        ["parse_field", "parse_pattern", "prompt_template", "prompt_template_with_input", "reference_field", "extraction",
         "extract_pattern", "tolerance", "max_new_tokens"];

    private static readonly string[] CommonFields = ["name", "description", "output_type", "data", "metrics"];

    /// <summary>The task in <paramref name="json"/>, read from <paramref name="source"/> (a path, or <c>builtin task NAME</c>).</summary>
    public static EvalTaskSpec Parse(string json, string source)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        }
        catch (JsonException e)
        {
            throw new UserInputException($"{source}: not valid JSON ({e.Message}); a task file is one JSON object, see docs/evaluation-tasks.md.");
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw new UserInputException($"{source}: a task file is one JSON object, got a {Kind(root)}.");
            var f = new TaskFileFields(root, source);
            string outputType = f.String("output_type") ?? throw f.Missing("output_type", "\"multiple_choice\" or \"generate\"");
            var type = outputType switch
            {
                "multiple_choice" => TaskOutputType.MultipleChoice,
                "generate" => TaskOutputType.Generate,
                _ => throw new UserInputException($"{source}: field 'output_type' is \"{outputType}\"; use \"multiple_choice\" or \"generate\"."),
            };
            var allowed = CommonFields.Concat(type == TaskOutputType.MultipleChoice ? ChoiceFields : GenerateFields).ToHashSet(StringComparer.Ordinal);
            foreach (var p in root.EnumerateObject())
            {
                if (allowed.Contains(p.Name)) continue;
                bool other = (type == TaskOutputType.MultipleChoice ? GenerateFields : ChoiceFields).Contains(p.Name);
                throw new UserInputException(other
                    ? $"{source}: field '{p.Name}' belongs to {(type == TaskOutputType.MultipleChoice ? "generate" : "multiple_choice")} tasks, and this task's output_type is \"{outputType}\"; remove it."
                    : $"{source}: unknown field '{p.Name}'; fields are: {string.Join(", ", allowed.Order(StringComparer.Ordinal))}.");
            }

            string name = f.String("name") ?? throw f.Missing("name", "the task's name, e.g. \"arc_easy\"");
            if (string.IsNullOrWhiteSpace(name)) throw new UserInputException($"{source}: field 'name' is empty; give the task a name, e.g. \"arc_easy\".");
            string data = f.String("data") ?? throw f.Missing("data", "the test file relative to the data root, e.g. \"ARC-Easy/test.json\"");
            if (string.IsNullOrWhiteSpace(data)) throw new UserInputException($"{source}: field 'data' is empty; give the test file relative to the data root, e.g. \"ARC-Easy/test.json\".");
            var parse = f.Pattern("parse_pattern", RegexOptions.Singleline, anchored: true);
            var spec = new EvalTaskSpec
            {
                Source = source,
                Name = name,
                Description = f.String("description") ?? "",
                OutputType = type,
                Data = data,
                ParseField = f.String("parse_field") ?? "instruction",
                ParsePattern = parse,
            };
            spec = type == TaskOutputType.MultipleChoice ? ReadChoice(spec, f) : ReadGenerate(spec, f);
            return spec with { Metrics = ReadMetrics(f, type) };
        }
    }

    private static EvalTaskSpec ReadChoice(EvalTaskSpec spec, TaskFileFields f)
    {
        string source = spec.Source;
        string context = f.String("context_template") ?? throw f.Missing("context_template", "e.g. \"Question: {question}\\nAnswer:\"");
        TaskTemplate.Placeholders(context, $"{source}: field 'context_template'");
        var split = f.Pattern("choice_split", RegexOptions.None, anchored: false);
        string? choicesField = f.String("choices_field");
        var fixedChoices = f.StringList("choices");
        int sources = (split is null ? 0 : 1) + (choicesField is null ? 0 : 1) + (fixedChoices is null ? 0 : 1);
        if (sources != 1)
            throw new UserInputException($"{source}: give exactly one of 'choices' (the same list for every record), 'choice_split' (split the parse_pattern group 'choices'), or 'choices_field' (a record field holding a list); {(sources == 0 ? "none is" : "several are")} set.");
        if (split is not null && (spec.ParsePattern is null || !spec.ParsePattern.GetGroupNames().Contains("choices")))
            throw new UserInputException($"{source}: field 'choice_split' splits the group 'choices' of 'parse_pattern', and {(spec.ParsePattern is null ? "there is no parse_pattern" : "parse_pattern has no group (?<choices>...)")}; add one.");
        if (fixedChoices is not null)
        {
            if (fixedChoices.Count < 2) throw new UserInputException($"{source}: field 'choices' has {fixedChoices.Count} entr{(fixedChoices.Count == 1 ? "y" : "ies")}; a multiple-choice task needs at least two.");
            int empty = fixedChoices.ToList().FindIndex(string.IsNullOrWhiteSpace);
            if (empty >= 0) throw new UserInputException($"{source}: field 'choices' entry {empty} is empty; every choice needs text.");
        }
        var gold = f.Pattern("gold_pattern", RegexOptions.None, anchored: false);
        if (gold is not null && gold.GetGroupNumbers().Length < 2)
            throw new UserInputException($"{source}: field 'gold_pattern' has no capture group; capture the choice number, e.g. \"^answer(\\\\d+)$\".");
        var map = f.IntMap("gold_map");
        string scoring = f.String("scoring") ?? "full";
        var mode = scoring switch
        {
            "full" => ChoiceScoring.Full,
            "partial" => ChoiceScoring.Partial,
            _ => throw new UserInputException($"{source}: field 'scoring' is \"{scoring}\"; use \"full\" (context + choice) or \"partial\" (WinoGrande: the choice fills the blank)."),
        };
        string blank = f.String("blank") ?? "_";
        if (blank.Length == 0) throw new UserInputException($"{source}: field 'blank' is empty; give the placeholder that partial scoring fills, e.g. \"_\".");
        return spec with
        {
            ContextTemplate = context,
            ChoiceSplit = split,
            ChoicesField = choicesField,
            Choices = fixedChoices,
            TargetDelimiter = f.String("target_delimiter") ?? " ",
            FewshotDelimiter = f.String("fewshot_delimiter") ?? "\n\n",
            GoldField = f.String("gold_field") ?? "answer",
            GoldPattern = gold,
            GoldBase = f.Int("gold_base") ?? 0,
            GoldMap = map,
            Scoring = mode,
            Blank = blank,
        };
    }

    private static EvalTaskSpec ReadGenerate(EvalTaskSpec spec, TaskFileFields f)
    {
        string source = spec.Source;
        string prompt = f.String("prompt_template") ?? throw f.Missing("prompt_template", "the generation prompt, e.g. LLM-Adapters' \"...### Instruction:\\n{instruction}\\n\\n### Response:\\n\"");
        TaskTemplate.Placeholders(prompt, $"{source}: field 'prompt_template'");
        string? withInput = f.String("prompt_template_with_input");
        if (withInput is not null) TaskTemplate.Placeholders(withInput, $"{source}: field 'prompt_template_with_input'");
        string extraction = f.String("extraction") ?? throw f.Missing("extraction", "\"first_match\" (with extract_pattern) or \"last_number\"");
        var rule = extraction switch
        {
            "first_match" => ExtractionRule.FirstMatch,
            "last_number" => ExtractionRule.LastNumber,
            _ => throw new UserInputException($"{source}: field 'extraction' is \"{extraction}\"; use \"first_match\" (with extract_pattern) or \"last_number\"."),
        };
        var pattern = f.Pattern("extract_pattern", RegexOptions.None, anchored: false);
        if (rule == ExtractionRule.FirstMatch && pattern is null)
            throw f.Missing("extract_pattern", "the answer words to look for, e.g. \"answer1|answer2|answer3|answer4\" (extraction \"first_match\" needs it)");
        if (rule == ExtractionRule.LastNumber && pattern is not null)
            throw new UserInputException($"{source}: field 'extract_pattern' is not used by extraction \"last_number\" (the last number in the text); remove it.");
        double tolerance = f.Double("tolerance") ?? 0.001;
        if (!(tolerance >= 0) || double.IsInfinity(tolerance)) throw new UserInputException($"{source}: field 'tolerance' is {tolerance}; give a finite value ≥ 0, e.g. 0.001.");
        int maxNew = f.Int("max_new_tokens") ?? 32;
        if (maxNew < 1) throw new UserInputException($"{source}: field 'max_new_tokens' is {maxNew}; give a positive budget, e.g. 32.");
        return spec with
        {
            PromptTemplate = prompt,
            PromptTemplateWithInput = withInput,
            ReferenceField = f.String("reference_field") ?? "answer",
            Extraction = rule,
            ExtractPattern = pattern,
            Tolerance = tolerance,
            MaxNewTokens = maxNew,
        };
    }

    private static IReadOnlyList<string> ReadMetrics(TaskFileFields f, TaskOutputType type)
    {
        string[] known = type == TaskOutputType.MultipleChoice ? ["acc", "acc_norm"] : ["acc"];
        var metrics = f.StringList("metrics") ?? known;
        if (metrics.Count == 0) throw new UserInputException($"{f.Source}: field 'metrics' is empty; list at least one of {string.Join(", ", known)}.");
        foreach (string m in metrics)
            if (!known.Contains(m))
                throw new UserInputException($"{f.Source}: field 'metrics' has \"{m}\"; {(type == TaskOutputType.MultipleChoice ? "multiple_choice" : "generate")} tasks report {string.Join(", ", known)}.");
        return metrics.Distinct().ToList();
    }

    private static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Array => "list",
        JsonValueKind.Object => "object",
        JsonValueKind.String => "string",
        JsonValueKind.Number => "number",
        JsonValueKind.True or JsonValueKind.False => "boolean",
        _ => "null",
    };

    /// <summary>Typed access to the object's fields, each error naming the file and the field.</summary>
    private sealed class TaskFileFields(JsonElement root, string source)
    {
        public string Source => source;

        public UserInputException Missing(string field, string what) =>
            new($"{source}: field '{field}' is missing; give {what}.");

        private JsonElement? Get(string field) =>
            root.TryGetProperty(field, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

        private UserInputException Wrong(string field, string expected, JsonElement got) =>
            new($"{source}: field '{field}' must be {expected}, got {Kind(got)} {Clip(got.GetRawText())}.");

        private static string Clip(string s) => s.Length <= 60 ? s : s[..57] + "...";

        public string? String(string field)
        {
            if (Get(field) is not { } v) return null;
            return v.ValueKind == JsonValueKind.String ? v.GetString()! : throw Wrong(field, "a string", v);
        }

        public int? Int(string field)
        {
            if (Get(field) is not { } v) return null;
            return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : throw Wrong(field, "an integer", v);
        }

        public double? Double(string field)
        {
            if (Get(field) is not { } v) return null;
            return v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw Wrong(field, "a number", v);
        }

        public IReadOnlyList<string>? StringList(string field)
        {
            if (Get(field) is not { } v) return null;
            if (v.ValueKind != JsonValueKind.Array || v.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.String))
                throw Wrong(field, "a list of strings", v);
            return v.EnumerateArray().Select(e => e.GetString()!).ToList();
        }

        public IReadOnlyDictionary<string, int>? IntMap(string field)
        {
            if (Get(field) is not { } v) return null;
            if (v.ValueKind != JsonValueKind.Object || v.EnumerateObject().Any(p => p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out _)))
                throw Wrong(field, "an object of integers, e.g. {\"false\": 0, \"true\": 1}", v);
            var map = v.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetInt32(), StringComparer.Ordinal);
            foreach (var (key, index) in map)
                if (index < 0) throw new UserInputException($"{source}: field '{field}' maps \"{key}\" to {index}; choice indices count from 0.");
            return map;
        }

        public Regex? Pattern(string field, RegexOptions options, bool anchored)
        {
            string? pattern = String(field);
            if (pattern is null) return null;
            try
            {
                return new Regex(anchored ? $@"\A(?:{pattern})\z" : pattern, options | RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));
            }
            catch (ArgumentException e)
            {
                throw new UserInputException($"{source}: field '{field}' is not a valid regular expression ({e.Message}); fix the pattern (JSON strings double the backslash: \"\\\\d+\").");
            }
        }
    }
}
