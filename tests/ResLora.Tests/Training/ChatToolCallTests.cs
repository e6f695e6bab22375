using ResLora.Text.Templates;
using ResLora.Tests.IO.Templates;
using ResLora.Training;

namespace ResLora.Tests.Training;

/// <summary>
/// Tool use in conversation data: the record's <c>tools</c> reach the template, an assistant message may carry
/// <c>tool_calls</c> without content, tool results carry <c>tool_call_id</c>/<c>name</c>; the model learns the calls and
/// its answers, never the tool results. Rendered with Qwen2.5's template (written from its public definition).
/// </summary>
public sealed class ChatToolCallTests : IDisposable
{
    private const string Record =
        "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"weather\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}}],"
        + "\"messages\":[{\"role\":\"user\",\"content\":\"Weather in Paris?\"},"
        + "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":{\"city\":\"Paris\"}}}]},"
        + "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"name\":\"weather\",\"content\":\"18 C, sunny\"},"
        + "{\"role\":\"assistant\",\"content\":\"It is 18 C and sunny.\"}]}";

    private const string Expected =
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n"
        + "You may call one or more functions to assist with the user query.\n\n"
        + "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + "{\"type\": \"function\", \"function\": {\"name\": \"weather\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}}}}\n"
        + "</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
        + "<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
        + "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        + "<|im_start|>assistant\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n"
        + "<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response><|im_end|>\n"
        + "<|im_start|>assistant\nIt is 18 C and sunny.<|im_end|>\n";

    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-tools-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static ChatFormat Qwen25() =>
        new(ChatTemplate.Parse(ChatTemplateTestKit.Fixture("qwen2_5_tools.jinja"), "qwen2.5"), null, "<|im_end|>", new[] { "<|im_start|>", "<|im_end|>" });

    private string Write(string record)
    {
        string p = Path.Combine(_dir, "tools.jsonl");
        File.WriteAllText(p, record + "\n");
        return p;
    }

    [Fact]
    public void Load_ToolsAndToolCalls_RenderAsTheTemplateWritesThem_AndOnlyTheCallsAndTheAnswerCarryLoss()
    {
        var ex = DataSet.Load(Write(Record), new DataTemplates { Chat = Qwen25() })[0];
        Assert.Equal(Expected, ex.Completion);
        var learnt = ex.LossSpans!.Select(s => ex.Completion[s.Start..s.End]).ToArray();
        Assert.Equal(new[]
        {
            "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>",
            "It is 18 C and sunny.<|im_end|>",
        }, learnt);
        Assert.DoesNotContain(learnt, s => s.Contains("18 C, sunny", StringComparison.Ordinal));
    }

    [Fact]
    public void Load_ToolsGivenAsAJsonString_EqualsToolsGivenAsAList()
    {
        var asList = DataSet.Load(Write(Record), new DataTemplates { Chat = Qwen25() })[0];
        string tools = "[{\"type\":\"function\",\"function\":{\"name\":\"weather\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}}]";
        string asString = Record.Replace("\"tools\":" + tools, "\"tools\":" + System.Text.Json.JsonSerializer.Serialize(tools), StringComparison.Ordinal);
        Assert.NotEqual(Record, asString);
        var fromString = DataSet.Load(Write(asString), new DataTemplates { Chat = Qwen25() })[0];
        Assert.Equal(asList.Completion, fromString.Completion);
        Assert.Equal(asList.LossSpans, fromString.LossSpans);
    }

    [Fact]
    public void Render_WithoutTools_UsesTheTemplatesOtherBranch()
    {
        var r = Qwen25().Render(new[] { new ChatMessage("user", "Hi"), new ChatMessage("assistant", "Hello.") });
        Assert.Equal("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n", r.Text);
    }

    [Theory]
    [InlineData("{\"tools\":{\"a\":1},\"messages\":[{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"assistant\",\"content\":\"A\"}]}", "'tools' must be a list of tool definitions")]
    [InlineData("{\"tools\":\"not json\",\"messages\":[{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"assistant\",\"content\":\"A\"}]}", "'tools' must be a list of tool definitions")]
    [InlineData("{\"messages\":[{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":\"weather\"}]}", "messages[1].tool_calls must be a list of calls")]
    [InlineData("{\"messages\":[{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"assistant\",\"content\":null}]}", "messages[1].content must be a string, got null")]
    [InlineData("{\"messages\":[{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"tool\",\"content\":\"r\",\"tool_call_id\":7},{\"role\":\"assistant\",\"content\":\"A\"}]}", "messages[1].tool_call_id must be a string, got number")]
    public void Load_MalformedToolFields_NameTheRecordAndTheField(string record, string expected)
    {
        string p = Write(record);
        var e = Assert.Throws<UserInputException>(() => DataSet.Load(p, new DataTemplates { Chat = Qwen25() }));
        Assert.StartsWith($"{p}: record 1 (line 1): ", e.Message);
        Assert.Contains(expected, e.Message);
    }
}
