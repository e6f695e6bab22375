using ResLora.Scoring.Tasks;

namespace ResLora.Tests.Scoring.Tasks;

public sealed class TaskFileTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-taskfile-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string json)
    {
        string path = Path.Combine(_dir, $"task{Guid.NewGuid():N}.json");
        File.WriteAllText(path, json);
        return path;
    }

    private const string Valid = """
        {
          "name": "mine",
          "output_type": "multiple_choice",
          "data": "mine/test.jsonl",
          "choices_field": "options",
          "context_template": "Q: {q}\nA:",
          "gold_field": "label"
        }
        """;

    [Fact]
    public void Names_ListEveryShippedTask()
    {
        string[] expected =
        [
            "addsub", "aqua", "arc_challenge", "arc_challenge_gen", "arc_easy", "arc_easy_gen", "boolq", "boolq_gen", "gsm8k",
            "multiarith", "piqa", "piqa_gen", "singleeq", "siqa", "siqa_gen", "svamp", "winogrande", "winogrande_gen",
        ];
        Assert.Equal(expected, TaskLibrary.Names);
    }

    [Fact]
    public void AUserFile_LoadsWithDefaults()
    {
        var task = TaskLibrary.Load(Write(Valid));
        Assert.Equal("mine", task.Name);
        Assert.Equal(TaskOutputType.MultipleChoice, task.OutputType);
        Assert.Equal(" ", task.TargetDelimiter);
        Assert.Equal("\n\n", task.FewshotDelimiter);
        Assert.Equal(0, task.GoldBase);
        Assert.Equal(["acc", "acc_norm"], task.Metrics);
        Assert.Equal(ChoiceScoring.Full, task.Scoring);
    }

    [Fact]
    public void BuiltinNames_AreCaseInsensitive_AndAnUnknownOneListsThem()
    {
        Assert.Equal("arc_easy", TaskLibrary.Load("ARC_Easy").Name);
        var e = Assert.Throws<UserInputException>(() => TaskLibrary.Load("arc_eazy"));
        Assert.Contains("'arc_eazy' is not known", e.Message);
        Assert.Contains("arc_easy, arc_easy_gen", e.Message);
        var missing = Assert.Throws<UserInputException>(() => TaskLibrary.Load(Path.Combine(_dir, "nothere.json")));
        Assert.Contains("nothere.json does not exist", missing.Message);
    }

    [Theory]
    [InlineData("\"contex_template\": \"x\"", "unknown field 'contex_template'; fields are:")]
    [InlineData("\"prompt_template\": \"x\"", "field 'prompt_template' belongs to generate tasks")]
    [InlineData("\"gold_base\": \"1\"", "field 'gold_base' must be an integer, got string \"1\"")]
    [InlineData("\"gold_pattern\": \"answer(\"", "field 'gold_pattern' is not a valid regular expression")]
    [InlineData("\"gold_pattern\": \"answer\\\\d\"", "field 'gold_pattern' has no capture group")]
    [InlineData("\"choices\": [\"no\", \"yes\"]", "give exactly one of 'choices'")]
    [InlineData("\"scoring\": \"half\"", "field 'scoring' is \"half\"; use \"full\"")]
    [InlineData("\"metrics\": [\"f1\"]", "field 'metrics' has \"f1\"; multiple_choice tasks report acc, acc_norm")]
    [InlineData("\"context_template\": \"Q: {q\"", "field 'context_template': '{' at character 3 is never closed")]
    public void BadFields_NameTheFileTheFieldAndTheFix(string field, string expected)
    {
        // The extra field goes last, so it overrides the valid one of the same name (JsonDocument keeps the last duplicate).
        string path = Write(Valid.TrimEnd().TrimEnd('}') + ",\n  " + field + "\n}");
        var e = Assert.Throws<UserInputException>(() => TaskLibrary.Load(path));
        Assert.StartsWith(path + ": ", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void MissingAndConflictingFields_AreErrors()
    {
        var noType = Assert.Throws<UserInputException>(() => TaskLibrary.Load(Write("""{"name": "x", "data": "d.json"}""")));
        Assert.Contains("field 'output_type' is missing", noType.Message);
        var split = Assert.Throws<UserInputException>(() => TaskLibrary.Load(Write(
            """{"name": "x", "output_type": "multiple_choice", "data": "d.json", "context_template": "{q}", "choice_split": ","}""")));
        Assert.Contains("'choice_split' splits the group 'choices' of 'parse_pattern', and there is no parse_pattern", split.Message);
        var oneChoice = Assert.Throws<UserInputException>(() => TaskLibrary.Load(Write(
            """{"name": "x", "output_type": "multiple_choice", "data": "d.json", "context_template": "{q}", "choices": ["yes"]}""")));
        Assert.Contains("field 'choices' has 1 entry", oneChoice.Message);
        var noPattern = Assert.Throws<UserInputException>(() => TaskLibrary.Load(Write(
            """{"name": "x", "output_type": "generate", "data": "d.json", "prompt_template": "{instruction}", "extraction": "first_match"}""")));
        Assert.Contains("field 'extract_pattern' is missing", noPattern.Message);
        var notJson = Assert.Throws<UserInputException>(() => TaskLibrary.Load(Write("{ name: ")));
        Assert.Contains("not valid JSON", notJson.Message);
    }
}
