using ResLora.Scoring.Tasks;

namespace ResLora.Tests.Scoring.Tasks;

public sealed class TaskInstancesTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-taskdata-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    // Records in LLM-Adapters' ARC form; the arc_easy task splits them.
    private static string ArcRecord(string question, string[] choices, int gold) =>
        System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, string>
        {
            ["instruction"] = $"Please choose the correct answer to the question: {question}\n\n"
                + string.Join(" ", choices.Select((c, i) => $"Answer{i + 1}: {c}"))
                + $"\n\nAnswer format: {string.Join("/", choices.Select((_, i) => $"answer{i + 1}"))}",
            ["input"] = "",
            ["output"] = $"the correct answer is answer{gold}",
            ["answer"] = $"answer{gold}",
        });

    private string WriteData(string relative, IEnumerable<string> lines, bool asArray = true)
    {
        string path = Path.Combine(_dir, relative);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, asArray ? "[\n" + string.Join(",\n", lines) + "\n]" : string.Join("\n", lines) + "\n");
        return path;
    }

    private string ArcData(int count) => WriteData("ARC-Easy/test.json",
        Enumerable.Range(0, count).Select(i => ArcRecord($"q{i}?", [$"a{i}", $"b{i}", $"c{i}"], gold: i % 3 + 1)));

    [Fact]
    public void MultipleChoice_ContextIsTheTemplate_ContinuationIsDelimiterPlusChoice()
    {
        ArcData(3);
        var built = TaskInstances.Build(TaskLibrary.Load("arc_easy"), _dir, null, numFewshot: 0, seed: 1234, limit: null);
        Assert.Equal(3, built.Choice.Count);
        Assert.Empty(built.Generate);
        var q = built.Choice[1];
        Assert.Equal(1, q.Index);
        Assert.Equal(1, q.Gold); // "answer2" with gold_base 1
        Assert.Equal(["a1", "b1", "c1"], q.ChoiceTexts);
        Assert.Equal([("Question: q1?\nAnswer:", " a1"), ("Question: q1?\nAnswer:", " b1"), ("Question: q1?\nAnswer:", " c1")], q.Requests);
        Assert.Equal(2, built.Choice[2].Gold);
    }

    [Fact]
    public void Fewshot_DrawsOtherRecords_RendersGoldAnswers_AndIsSeeded()
    {
        ArcData(6);
        var task = TaskLibrary.Load("arc_easy");
        var built = TaskInstances.Build(task, _dir, null, numFewshot: 2, seed: 1234, limit: null);
        // Every record rendered as a few-shot example: context + " " + its gold choice.
        var examples = Enumerable.Range(0, 6).Select(j => $"Question: q{j}?\nAnswer: {"abc"[j % 3]}{j}").ToList();
        foreach (var q in built.Choice)
        {
            string context = q.Requests[0].Context;
            Assert.All(q.Requests, r => Assert.Equal(context, r.Context));
            string[] parts = context.Split("\n\n");
            Assert.Equal(3, parts.Length);
            Assert.Equal($"Question: q{q.Index}?\nAnswer:", parts[2]);
            Assert.NotEqual(parts[0], parts[1]);
            Assert.All(parts[..2], p => Assert.Contains(p, examples));
            Assert.DoesNotContain(examples[q.Index], parts[..2]);
        }
        // The same seed gives the same examples whatever the limit; another seed changes some.
        var limited = TaskInstances.Build(task, _dir, null, numFewshot: 2, seed: 1234, limit: 2);
        Assert.Equal(2, limited.Choice.Count);
        Assert.Equal(built.Choice[1].Requests, limited.Choice[1].Requests);
        var other = TaskInstances.Build(task, _dir, null, numFewshot: 2, seed: 99, limit: null);
        Assert.Contains(Enumerable.Range(0, 6), i => other.Choice[i].Requests[0].Context != built.Choice[i].Requests[0].Context);
        // K = pool - 1 takes every other record; K = pool is an error.
        var all = TaskInstances.Build(task, _dir, null, numFewshot: 5, seed: 1, limit: 1);
        Assert.Equal(examples.Skip(1).Order(), all.Choice[0].Requests[0].Context.Split("\n\n")[..5].Order());
        var e = Assert.Throws<UserInputException>(() => TaskInstances.Build(task, _dir, null, numFewshot: 6, seed: 1, limit: null));
        Assert.Contains("--num-fewshot 6", e.Message);
        Assert.Contains("use at most 5", e.Message);
    }

    [Fact]
    public void PartialScoring_SubstitutesTheOption_AndSharesTheRemainder()
    {
        string record = System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, string>
        {
            ["instruction"] = "Please choose the correct answer to fill in the blank to complete the given sentence: "
                + "The trophy didn't fit in the suitcase because the _ was too big.\n\nOption1: trophy Option2: suitcase Answer format: option1/option2",
            ["answer"] = "option1",
        });
        WriteData("winogrande/test.json", [record], asArray: false);
        var q = TaskInstances.Build(TaskLibrary.Load("winogrande"), _dir, null, 0, 1234, null).Choice.Single();
        Assert.Equal(0, q.Gold);
        Assert.Equal(
            [("The trophy didn't fit in the suitcase because the trophy", " was too big."),
             ("The trophy didn't fit in the suitcase because the suitcase", " was too big.")],
            q.Requests);
        // lm-eval's doc_to_choice for WinoGrande is the substituted contexts; acc_norm divides by their lengths.
        Assert.Equal(q.Requests.Select(r => r.Context), q.ChoiceTexts);
    }

    [Fact]
    public void PartialScoring_FewshotExamplesAreTheGoldOptionFilledIn()
    {
        static string Wino(string sentence, string a, string b, int gold) => System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, string>
        {
            ["instruction"] = "Please choose the correct answer to fill in the blank to complete the given sentence: "
                + $"{sentence}\n\nOption1: {a} Option2: {b} Answer format: option1/option2",
            ["answer"] = $"option{gold}",
        });
        WriteData("winogrande/test.json", [Wino("Ann paid Bo because _ owed money.", "Ann", "Bo", 1), Wino("The cup beat the jug since _ was fast.", "cup", "jug", 1)]);
        var q = TaskInstances.Build(TaskLibrary.Load("winogrande"), _dir, null, numFewshot: 1, seed: 3, limit: null).Choice[1];
        // lm-eval: the example is its gold choice (the filled-in context) + target delimiter + its remainder.
        Assert.Equal(
            [("Ann paid Bo because Ann owed money.\n\nThe cup beat the jug since cup", " was fast."),
             ("Ann paid Bo because Ann owed money.\n\nThe cup beat the jug since jug", " was fast.")],
            q.Requests);
    }

    [Fact]
    public void Generate_UsesTheInputTemplateOnlyWhenTheRecordHasInput()
    {
        string task = Path.Combine(_dir, "gen.json");
        File.WriteAllText(task, """
            {"name": "gen", "output_type": "generate", "data": "gen.jsonl", "prompt_template": "I: {instruction}\nR:",
             "prompt_template_with_input": "I: {instruction}\nIn: {input}\nR:", "extraction": "last_number", "max_new_tokens": 8}
            """);
        WriteData("gen.jsonl", ["""{"instruction": "add", "input": "", "answer": 3}""", """{"instruction": "add", "input": "1 2", "answer": "3"}"""], asArray: false);
        var built = TaskInstances.Build(TaskLibrary.Load(task), _dir, null, 0, 1, null);
        Assert.Equal(["I: add\nR:", "I: add\nIn: 1 2\nR:"], built.Generate.Select(g => g.Prompt));
        Assert.Equal(["3", "3"], built.Generate.Select(g => g.Reference));
        Assert.Equal(8, built.Task.MaxNewTokens);
        WriteData("gen.jsonl", ["""{"instruction": "add", "answer": "three"}"""], asArray: false);
        var e = Assert.Throws<UserInputException>(() => TaskInstances.Build(TaskLibrary.Load(task), _dir, null, 0, 1, null));
        Assert.Contains("record 0: field 'answer' is \"three\"", e.Message);
        Assert.Contains("the reference must be a number", e.Message);
    }

    [Fact]
    public void BoolQ_ScoresNoAndYes_WithTheGoldFromTrueFalse()
    {
        WriteData("boolq/test.json",
        [
            """{"instruction": "Please answer the following question with true or false, question: is water wet?\n\nAnswer format: true/false", "answer": "true"}""",
            """{"instruction": "Please answer the following question with true or false, question: is fire cold?\n\nAnswer format: true/false", "answer": "false"}""",
        ]);
        var built = TaskInstances.Build(TaskLibrary.Load("boolq"), _dir, null, 0, 1234, null);
        Assert.Equal([("Question: is water wet?\nAnswer:", " no"), ("Question: is water wet?\nAnswer:", " yes")], built.Choice[0].Requests);
        Assert.Equal(1, built.Choice[0].Gold);
        Assert.Equal(0, built.Choice[1].Gold);
    }

    [Fact]
    public void Generate_RendersTheAlpacaPromptAndKeepsTheReference()
    {
        WriteData("gsm8k/test.json", ["""{"instruction": "What is 2 + 3?", "input": "", "output": "5", "answer": "5.0"}"""]);
        var built = TaskInstances.Build(TaskLibrary.Load("gsm8k"), _dir, null, 0, 1234, null);
        var q = Assert.Single(built.Generate);
        Assert.Equal("5.0", q.Reference);
        // LLM-Adapters' evaluate.py generate_prompt, indentation and the space after "request." included.
        Assert.Equal("Below is an instruction that describes a task. Write a response that appropriately completes the request. \n\n"
            + "                ### Instruction:\n                What is 2 + 3?\n\n                ### Response:\n                ", q.Prompt);
        var e = Assert.Throws<UserInputException>(() => TaskInstances.Build(TaskLibrary.Load("gsm8k"), _dir, null, 1, 1234, null));
        Assert.Contains("zero-shot", e.Message);
    }

    [Fact]
    public void AUserTask_ReadsJsonLinesWithChoiceListsAndIntegerLabels()
    {
        string task = Path.Combine(_dir, "mine.json");
        File.WriteAllText(task, """
            {"name": "mine", "output_type": "multiple_choice", "data": "mine.jsonl", "choices_field": "options",
             "context_template": "{q} =", "gold_field": "label", "target_delimiter": "", "fewshot_delimiter": "\n"}
            """);
        WriteData("mine.jsonl", ["""{"q": "1+1", "options": [" 2", " 3"], "label": 0}""", """{"q": "2+2", "options": [" 3", " 4"], "label": 1}"""], asArray: false);
        var built = TaskInstances.Build(TaskLibrary.Load(task), _dir, null, numFewshot: 1, seed: 7, limit: null);
        Assert.Equal([("2+2 = 4\n1+1 =", " 2"), ("2+2 = 4\n1+1 =", " 3")], built.Choice[0].Requests);
        Assert.Equal([("1+1 = 2\n2+2 =", " 3"), ("1+1 = 2\n2+2 =", " 4")], built.Choice[1].Requests);
        Assert.Equal(1, built.Choice[1].Gold);
    }

    [Fact]
    public void BadRecords_NameTheRecordAndTheField()
    {
        var arc = TaskLibrary.Load("arc_easy");
        string ok = ArcRecord("q?", ["a", "b"], 1);
        string path = WriteData("ARC-Easy/test.json", [ok, """{"instruction": "Please choose the correct answer to the question: q?\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2"}"""]);
        var missing = Assert.Throws<UserInputException>(() => TaskInstances.Build(arc, _dir, null, 0, 1, null));
        Assert.Contains($"{path} record 1: no field 'answer'", missing.Message);

        WriteData("ARC-Easy/test.json", [ok, ArcRecord("q?", ["a", "b"], 3)]);
        var range = Assert.Throws<UserInputException>(() => TaskInstances.Build(arc, _dir, null, 0, 1, null));
        Assert.Contains("record 1: field 'answer' \"answer3\" names choice 2 (counting from 0), and the record has 2 choices", range.Message);
        Assert.Single(TaskInstances.Build(arc, _dir, null, 0, 1, limit: 1).Choice); // the bad record is past the limit

        WriteData("ARC-Easy/test.json", [ArcRecord("q?", ["a", " "], 1)]);
        var empty = Assert.Throws<UserInputException>(() => TaskInstances.Build(arc, _dir, null, 0, 1, null));
        Assert.Contains("record 0: choice 1 (counting from 0) is empty", empty.Message);

        WriteData("ARC-Easy/test.json", ["""{"instruction": "Which is it? a or b", "answer": "answer1"}"""]);
        var split = Assert.Throws<UserInputException>(() => TaskInstances.Build(arc, _dir, null, 0, 1, null));
        Assert.Contains("record 0: field 'instruction' (\"Which is it? a or b\") does not match task arc_easy's parse_pattern", split.Message);

        WriteData("ARC-Easy/test.json", ["""{"instruction": "Please choose the correct answer to the question: q?\n\nAnswer1: only one\n\nAnswer format: answer1/answer2", "answer": "answer1"}"""]);
        var one = Assert.Throws<UserInputException>(() => TaskInstances.Build(arc, _dir, null, 0, 1, null));
        Assert.Contains("record 0: task arc_easy's choice_split finds 1 choice", one.Message);
    }

    [Fact]
    public void MissingData_SaysWhereItLookedAndWhatTheFlagIs()
    {
        var arc = TaskLibrary.Load("arc_easy");
        var none = Assert.Throws<UserInputException>(() => TaskInstances.Build(arc, null, null, 0, 1, null));
        Assert.Contains("'ARC-Easy/test.json'", none.Message);
        Assert.Contains("--task-data DIR points at the LLM-Adapters test sets", none.Message);
        var absent = Assert.Throws<UserInputException>(() => TaskInstances.Build(arc, _dir, null, 0, 1, null));
        Assert.Contains($"no data file at {Path.Combine(_dir, "ARC-Easy/test.json")}", absent.Message);
        Assert.Contains("--task-data", absent.Message);
        var file = Assert.Throws<UserInputException>(() => TaskInstances.Build(arc, null, Path.Combine(_dir, "x.json"), 0, 1, null));
        Assert.Contains("x.json does not exist", file.Message);
        // An explicit data file wins over the data root.
        string explicitFile = WriteData("elsewhere.json", [ArcRecord("z?", ["y", "n"], 2)]);
        Assert.Equal(1, TaskInstances.Build(arc, "/nonexistent", explicitFile, 0, 1, null).Choice[0].Gold);
    }
}
