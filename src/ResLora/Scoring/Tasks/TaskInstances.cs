using System.Globalization;
using System.Text.RegularExpressions;

namespace ResLora.Scoring.Tasks;

/// <summary>
/// One multiple-choice question as scoring requests: choice i is scored as the log-likelihood of
/// <c>Requests[i].Continuation</c> given <c>Requests[i].Context</c> (few-shot examples included).
/// </summary>
/// <param name="Index">The record's position in the data file (counting from 0).</param>
/// <param name="Requests">One (context, continuation) pair per choice. Full scoring: one context, continuation = target delimiter + choice. Partial (WinoGrande): one context per choice, one shared continuation.</param>
/// <param name="Gold">Index of the correct choice.</param>
/// <param name="ChoiceTexts">lm-eval's choices (<c>doc_to_choice</c>), whose lengths in characters divide the log-likelihoods for <c>acc_norm</c>; under partial scoring these are the contexts the option was substituted into, as in lm-eval.</param>
public sealed record ChoiceQuestion(int Index, IReadOnlyList<(string Context, string Continuation)> Requests, int Gold, IReadOnlyList<string> ChoiceTexts);

/// <summary>One generate-and-extract question.</summary>
/// <param name="Index">The record's position in the data file (counting from 0).</param>
/// <param name="Prompt">The prompt to generate from (greedy; the generated text, without the prompt, goes to <see cref="AnswerExtraction.Extract"/>).</param>
/// <param name="Reference">The reference answer (<c>answer3</c>, <c>true</c>, <c>576.0</c>, <c>C</c>).</param>
public sealed record GenerateQuestion(int Index, string Prompt, string Reference);

/// <summary>A task's questions built from its data file: multiple-choice requests or generation prompts.</summary>
public sealed class TaskInstances
{
    private TaskInstances(EvalTaskSpec task, string dataFile, int records, IReadOnlyList<ChoiceQuestion> choice, IReadOnlyList<GenerateQuestion> generate)
    {
        Task = task; DataFile = dataFile; RecordCount = records; Choice = choice; Generate = generate;
    }

    /// <summary>The task the questions were built for.</summary>
    public EvalTaskSpec Task { get; }

    /// <summary>The data file read.</summary>
    public string DataFile { get; }

    /// <summary>How many records the data file holds (the few-shot pool).</summary>
    public int RecordCount { get; }

    /// <summary>The questions of a multiple-choice task (empty for a generate task).</summary>
    public IReadOnlyList<ChoiceQuestion> Choice { get; }

    /// <summary>The questions of a generate task (empty for a multiple-choice task).</summary>
    public IReadOnlyList<GenerateQuestion> Generate { get; }

    /// <summary>
    /// Reads <paramref name="task"/>'s data (<see cref="TaskLibrary.ResolveDataFile"/>) and builds the first
    /// <paramref name="limit"/> records' questions (all when null). Multiple choice: <paramref name="numFewshot"/>
    /// examples per question, drawn without replacement from the other records of the same file with a generator seeded
    /// by <paramref name="seed"/> and the record's index (so a question's examples do not depend on <paramref name="limit"/>),
    /// each rendered as context + gold continuation and joined by the few-shot delimiter before the question's context,
    /// as lm-eval's <c>fewshot_context</c> does. Generate tasks are zero-shot, as LLM-Adapters evaluates them.
    /// </summary>
    public static TaskInstances Build(EvalTaskSpec task, string? dataRoot, string? dataFile, int numFewshot, int seed, int? limit)
    {
        ArgumentNullException.ThrowIfNull(task);
        if (numFewshot < 0) throw new UserInputException($"--num-fewshot {numFewshot}: give 0 (zero-shot) or a positive number of examples.");
        if (limit is < 1) throw new UserInputException($"--limit {limit}: give a positive number of questions, or leave it out for all.");
        string path = TaskLibrary.ResolveDataFile(task, dataRoot, dataFile);
        var records = TaskRecords.Read(path);
        if (records.Count == 0) throw new UserInputException($"{path}: holds no records; task {task.Name} needs at least one.");
        int n = Math.Min(limit ?? int.MaxValue, records.Count);
        if (task.OutputType == TaskOutputType.Generate)
        {
            if (numFewshot > 0)
                throw new UserInputException($"--num-fewshot {numFewshot}: task {task.Name} generates and extracts its answer, which LLM-Adapters evaluates zero-shot; drop --num-fewshot for it.");
            var prompts = Enumerable.Range(0, n).Select(i => BuildGenerate(task, records, i)).ToList();
            return new TaskInstances(task, path, records.Count, Array.Empty<ChoiceQuestion>(), prompts);
        }
        if (numFewshot > records.Count - 1)
            throw new UserInputException($"--num-fewshot {numFewshot}: task {task.Name} draws examples from the other records of {path}, and there are {records.Count - 1}; use at most {records.Count - 1}.");
        var parsed = new Dictionary<int, ChoiceRecord>();
        ChoiceRecord Get(int i) => parsed.TryGetValue(i, out var r) ? r : parsed[i] = ParseChoice(task, records, i);
        var questions = new List<ChoiceQuestion>(n);
        for (int i = 0; i < n; i++)
        {
            var record = Get(i);
            string prefix = "";
            if (numFewshot > 0)
            {
                var shots = SampleOthers(records.Count, i, numFewshot, seed).Select(j => Get(j).GoldText);
                prefix = string.Join(task.FewshotDelimiter, shots) + task.FewshotDelimiter;
            }
            var requests = record.Requests.Select(r => (prefix + r.Context, r.Continuation)).ToList();
            questions.Add(new ChoiceQuestion(i, requests, record.Gold, record.ChoiceTexts));
        }
        return new TaskInstances(task, path, records.Count, questions, Array.Empty<GenerateQuestion>());
    }

    /// <summary><paramref name="k"/> distinct indices in [0, <paramref name="count"/>) other than <paramref name="self"/>, in draw order.</summary>
    internal static IReadOnlyList<int> SampleOthers(int count, int self, int k, int seed)
    {
        var rng = new Random(unchecked(seed * 1_000_003 + self));
        var picked = new List<int>(k);
        var seen = new HashSet<int> { self };
        while (picked.Count < k)
        {
            int j = rng.Next(count);
            if (seen.Add(j)) picked.Add(j);
        }
        return picked;
    }

    /// <summary>A record's requests without few-shot examples, its gold index, and its gold example text.</summary>
    private sealed record ChoiceRecord(IReadOnlyList<(string Context, string Continuation)> Requests, int Gold, IReadOnlyList<string> ChoiceTexts)
    {
        /// <summary>The record as a few-shot example: the gold request's context and continuation.</summary>
        public string GoldText => Requests[Gold].Context + Requests[Gold].Continuation;
    }

    private static ChoiceRecord ParseChoice(EvalTaskSpec task, TaskRecords records, int i)
    {
        string where = $"{records.Path} record {i}";
        var groups = MatchParse(task, records, i);
        IReadOnlyList<string> choices;
        if (task.Choices is not null) choices = task.Choices;
        else if (task.ChoicesField is not null) choices = records.TextList(i, task.ChoicesField, $"task {task.Name} reads for its choices (choices_field)");
        else
        {
            var pieces = task.ChoiceSplit!.Split(groups!.Groups["choices"].Value).Select(p => p.Trim()).ToList();
            if (pieces.Count > 0 && pieces[0].Length == 0) pieces.RemoveAt(0);
            if (pieces.Count < 2)
                throw new UserInputException($"{where}: task {task.Name}'s choice_split finds {pieces.Count} choice{(pieces.Count == 1 ? "" : "s")} in \"{Clip(groups.Groups["choices"].Value)}\"; a question needs at least two, so the record cannot be split.");
            choices = pieces;
        }
        int empty = choices.ToList().FindIndex(string.IsNullOrWhiteSpace);
        if (empty >= 0) throw new UserInputException($"{where}: choice {empty} (counting from 0) is empty; every choice of task {task.Name} needs text.");
        int gold = GoldIndex(task, records, i, choices.Count);
        string text = TaskTemplate.Render(task.ContextTemplate!, $"{task.Source}: field 'context_template'", name => Value(task, records, i, groups, name));
        if (task.Scoring == ChoiceScoring.Full)
            return new ChoiceRecord(choices.Select(c => (text, task.TargetDelimiter + c)).ToList(), gold, choices);
        // lm-eval's preprocess_winogrande: the option replaces everything from the blank on; the remainder after the blank, stripped, is the shared target.
        int blank = text.IndexOf(task.Blank, StringComparison.Ordinal);
        if (blank < 0) throw new UserInputException($"{where}: the context \"{Clip(text)}\" has no blank '{task.Blank}' for task {task.Name}'s partial scoring to fill.");
        string continuation = task.TargetDelimiter + text[(blank + task.Blank.Length)..].Trim();
        var contexts = choices.Select(c => text[..blank] + c).ToList();
        return new ChoiceRecord(contexts.Select(c => (c, continuation)).ToList(), gold, contexts);
    }

    private static GenerateQuestion BuildGenerate(EvalTaskSpec task, TaskRecords records, int i)
    {
        var groups = MatchParse(task, records, i);
        bool hasInput = task.PromptTemplateWithInput is not null && records.Has(i, "input") && records.Text(i, "input", "the prompt reads").Length > 0;
        string template = hasInput ? task.PromptTemplateWithInput! : task.PromptTemplate!;
        string field = hasInput ? "prompt_template_with_input" : "prompt_template";
        string prompt = TaskTemplate.Render(template, $"{task.Source}: field '{field}'", name => Value(task, records, i, groups, name));
        string reference = records.Text(i, task.ReferenceField, $"task {task.Name} reads for the reference answer (reference_field)");
        if (task.Extraction == ExtractionRule.LastNumber && !TaskRecords.TryNumber(reference, out _))
            throw new UserInputException($"{records.Path} record {i}: field '{task.ReferenceField}' is \"{Clip(reference)}\", and task {task.Name} compares numbers (extraction \"last_number\"); the reference must be a number.");
        return new GenerateQuestion(i, prompt, reference);
    }

    private static Match? MatchParse(EvalTaskSpec task, TaskRecords records, int i)
    {
        if (task.ParsePattern is null) return null;
        string text = records.Text(i, task.ParseField, $"task {task.Name} splits with parse_pattern (parse_field)");
        var m = task.ParsePattern.Match(text);
        if (!m.Success)
            throw new UserInputException($"{records.Path} record {i}: field '{task.ParseField}' (\"{Clip(text)}\") does not match task {task.Name}'s parse_pattern, so it cannot be split into question and choices; is this the task's data file?");
        return m;
    }

    /// <summary>A template value: a parse_pattern group, else the record's field.</summary>
    private static string Value(EvalTaskSpec task, TaskRecords records, int i, Match? groups, string name)
    {
        // A group of the pattern wins even when it took no part in the match (then it is empty).
        if (groups is not null && task.ParsePattern!.GetGroupNames().Contains(name))
            return groups.Groups[name].Success ? groups.Groups[name].Value : "";
        return records.Text(i, name, $"task {task.Name}'s template uses as {{{name}}}");
    }

    private static int GoldIndex(EvalTaskSpec task, TaskRecords records, int i, int choices)
    {
        string where = $"{records.Path} record {i}";
        string raw = records.Text(i, task.GoldField, $"task {task.Name} reads for the correct choice (gold_field)");
        int index;
        if (task.GoldMap is not null && task.GoldMap.TryGetValue(raw, out int mapped)) index = mapped;
        else
        {
            string number = raw;
            if (task.GoldPattern is not null)
            {
                var m = task.GoldPattern.Match(raw);
                if (!m.Success)
                    throw new UserInputException($"{where}: field '{task.GoldField}' is \"{Clip(raw)}\", which task {task.Name}'s gold_pattern does not match{(task.GoldMap is null ? "" : " and gold_map does not list")}.");
                number = m.Groups[1].Value;
            }
            else if (task.GoldMap is not null)
                throw new UserInputException($"{where}: field '{task.GoldField}' is \"{Clip(raw)}\", which task {task.Name}'s gold_map does not list ({string.Join(", ", task.GoldMap.Keys)}).");
            if (!int.TryParse(number, NumberStyles.Integer, CultureInfo.InvariantCulture, out int k))
                throw new UserInputException($"{where}: field '{task.GoldField}' is \"{Clip(raw)}\"; task {task.Name} needs a choice number there.");
            index = k - task.GoldBase;
        }
        if (index < 0 || index >= choices)
            throw new UserInputException($"{where}: field '{task.GoldField}' \"{Clip(raw)}\" names choice {index} (counting from 0), and the record has {choices} choices (0..{choices - 1}).");
        return index;
    }

    private static string Clip(string s)
    {
        string one = s.Replace("\n", "\\n", StringComparison.Ordinal);
        return one.Length <= 80 ? one : one[..77] + "...";
    }
}
