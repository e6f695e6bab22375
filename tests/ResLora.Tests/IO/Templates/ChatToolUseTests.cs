using ResLora.Text.Templates;
using ResLora.Training;

namespace ResLora.Tests.IO.Templates;

/// <summary>
/// Tool use in conversation data: OpenAI-shaped tool calls and tool results reach the template (Qwen2.5's tool template,
/// Fixtures/qwen2_5_tools.jinja); malformed calls, results without a call and templates that drop tool use are refused
/// with the record's line and the field.
/// </summary>
public sealed class ChatToolUseTests : IDisposable
{
    private const string Tools = "[{\"type\":\"function\",\"function\":{\"name\":\"weather\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}}}}]";

    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-tooluse-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static ChatFormat Qwen25() =>
        new(ChatTemplate.Parse(ChatTemplateTestKit.Fixture("qwen2_5_tools.jinja"), "qwen2.5"), null, "<|im_end|>", new[] { "<|im_start|>", "<|im_end|>" });

    private string Write(string record)
    {
        string p = Path.Combine(_dir, "data.jsonl");
        File.WriteAllText(p, record + "\n");
        return p;
    }

    private static string Conversation(string assistantCall, string results = "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"18 C\"}") =>
        "{\"tools\":" + Tools + ",\"messages\":[{\"role\":\"user\",\"content\":\"Weather?\"}," + assistantCall + "," + results
        + ",{\"role\":\"assistant\",\"content\":\"Warm.\"}]}";

    private static string Call(string calls) => "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":" + calls + "}";

    [Fact]
    public void Load_ParallelCallsAndConsecutiveResults_RenderAsQwen25WritesThem_CallsAndAnswerLearnt()
    {
        string calls = "[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":{\"city\":\"Paris\"}}},"
            + "{\"id\":\"c2\",\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":\"{\\\"city\\\": \\\"Rome\\\"}\"}}]";
        string record = "{\"tools\":" + Tools + ",\"messages\":[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"Paris and Rome?\"},"
            + "{\"role\":\"assistant\",\"content\":\"Checking.\",\"tool_calls\":" + calls + "},"
            + "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"name\":\"weather\",\"content\":\"18 C\"},{\"role\":\"tool\",\"tool_call_id\":\"c2\",\"name\":\"weather\",\"content\":\"21 C\"},"
            + "{\"role\":\"assistant\",\"content\":\"Paris 18 C, Rome 21 C.\"}]}";
        var e = Assert.Single(DataSet.Load(Write(record), new DataTemplates { Chat = Qwen25() }));
        Assert.Null(e.TurnExample); // Qwen2.5's template is prefix-stable: one example
        Assert.StartsWith("<|im_start|>system\nS\n\n# Tools\n\n", e.Completion);
        // A string of arguments goes through tojson as a string, exactly as transformers renders it with this template.
        const string Turn = "Checking.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n"
            + "<tool_call>\n{\"name\": \"weather\", \"arguments\": \"{\\\"city\\\": \\\"Rome\\\"}\"}\n</tool_call><|im_end|>";
        Assert.EndsWith("</tool_call><|im_end|>\n<|im_start|>user\nParis and Rome?<|im_end|>\n<|im_start|>assistant\n" + Turn + "\n"
            + "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>\n<tool_response>\n21 C\n</tool_response><|im_end|>\n"
            + "<|im_start|>assistant\nParis 18 C, Rome 21 C.<|im_end|>\n", e.Completion);
        Assert.Equal(new[] { Turn, "Paris 18 C, Rome 21 C.<|im_end|>" }, e.LossSpans!.Select(s => e.Completion[s.Start..s.End]));
    }

    [Fact]
    public void Load_ShareGptFunctionCallThenObservation_IsAccepted()
    {
        string record = "{\"conversations\":[{\"from\":\"human\",\"value\":\"Weather?\"},{\"from\":\"function_call\",\"value\":\"{\\\"name\\\": \\\"weather\\\", \\\"arguments\\\": {}}\"},"
            + "{\"from\":\"observation\",\"value\":\"18 C\"},{\"from\":\"gpt\",\"value\":\"Warm.\"}]}";
        var e = Assert.Single(DataSet.Load(Write(record), new DataTemplates { Chat = ChatFormat.ForModel(_dir, "chatml")! }));
        Assert.Contains("<|im_start|>tool\n18 C<|im_end|>", e.Completion, StringComparison.Ordinal);
        Assert.Equal(2, e.LossSpans!.Count);
    }

    public static TheoryData<string, string> BadRecords() => new()
    {
        { "{\"messages\":[{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"tool\",\"content\":\"18 C\"},{\"role\":\"assistant\",\"content\":\"A\"}]}", "messages[1] is a tool result without a tool call before it" },
        {
            "{\"messages\":[{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"assistant\",\"content\":\"A\"},{\"role\":\"tool\",\"content\":\"18 C\"},{\"role\":\"assistant\",\"content\":\"B\"}]}",
            "messages[2] is a tool result without a tool call before it"
        },
        { Conversation(Call("[\"weather\"]")), "messages[1].tool_calls[0] must be an object" },
        {
            Conversation(Call("[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":{}}}]"), "{\"role\":\"tool\",\"tool_call_id\":\"c9\",\"content\":\"18 C\"}"),
            "messages[2].tool_call_id 'c9' answers none of the calls of messages[1] (their ids: c1)"
        },
        { Conversation(Call("[{\"name\":\"weather\",\"arguments\":{}}]")), "messages[1].tool_calls[0] has 'name' at the top level; put name and arguments inside \"function\"" },
        { Conversation(Call("[{\"type\":\"function\",\"function\":{\"arguments\":{}}}]")), "messages[1].tool_calls[0].function.name must be the called function's name (a non-empty string), and it is missing" },
        { Conversation(Call("[{\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":{}}},{\"type\":\"function\",\"function\":{\"name\":\"\",\"arguments\":{}}}]")), "messages[1].tool_calls[1].function.name must be" },
        { Conversation(Call("[{\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":\"city=Paris\"}}]")), "messages[1].tool_calls[0].function.arguments is a string that does not hold a JSON object" },
        { Conversation(Call("[{\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":7}}]")), "messages[1].tool_calls[0].function.arguments must be an object or a string holding a JSON object, got number" },
        { Conversation(Call("[{\"type\":\"function\",\"function\":{\"name\":\"weather\"}}]")), "messages[1].tool_calls[0].function.arguments is missing" },
        { Conversation(Call("[{\"type\":\"tool\",\"function\":{\"name\":\"weather\",\"arguments\":{}}}]")), "messages[1].tool_calls[0].type must be \"function\", got \"tool\"" },
    };

    [Theory, MemberData(nameof(BadRecords))]
    public void Load_BadToolUse_NamesTheLineAndTheField(string record, string expected)
    {
        string p = Write(record);
        var e = Assert.Throws<UserInputException>(() => DataSet.Load(p, new DataTemplates { Chat = Qwen25() }));
        Assert.StartsWith($"{p}: record 1 (line 1): ", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Load_ToolsGivenToATemplateWithoutTools_SaysTheTemplateDoesNotRenderThem()
    {
        var llama3 = new ChatFormat(ChatTemplate.Parse(ChatTemplateTestKit.Fixture("llama3.jinja"), "llama3"), "<|begin_of_text|>", "<|eot_id|>");
        string p = Write("{\"tools\":" + Tools + ",\"messages\":[{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"assistant\",\"content\":\"A\"}]}");
        var e = Assert.Throws<UserInputException>(() => DataSet.Load(p, new DataTemplates { Chat = llama3 }));
        Assert.StartsWith($"{p}: record 1 (line 1): chat template 'llama3': the chat template does not render 'tools'", e.Message);
        Assert.Contains("--chat-template", e.Message);
    }

    [Fact]
    public void Load_ToolCallsOnATemplateThatDropsThem_SaysTheModelWouldLearnAnEmptyReply()
    {
        // content "" rather than null: ChatML joins the content as a string, and would fail on None before any check.
        string p = Write("{\"messages\":[{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":{}}}]}"
            + ",{\"role\":\"tool\",\"content\":\"18 C\"},{\"role\":\"assistant\",\"content\":\"A\"}]}");
        var e = Assert.Throws<UserInputException>(() => DataSet.Load(p, new DataTemplates { Chat = ChatFormat.ForModel(_dir, "chatml")! }));
        Assert.Contains("the chat template does not render tool_calls (message 2's calls leave the text unchanged)", e.Message);
    }

    [Fact]
    public void Load_ToolResultsOnATemplateThatSkipsThem_SaysSo()
    {
        var skipsTools = new ChatFormat(ChatTemplate.Parse(
            "{% for m in messages %}{% if m.role != 'tool' %}{{ m.role }}: {{ m.content }}{% for c in m.tool_calls or [] %}[{{ c.function.name }}]{% endfor %}\n{% endif %}{% endfor %}", "skips"), null, null);
        string p = Write(Conversation(Call("[{\"type\":\"function\",\"function\":{\"name\":\"weather\",\"arguments\":{}}}]")).Replace("{\"tools\":" + Tools + ",", "{", StringComparison.Ordinal));
        var e = Assert.Throws<UserInputException>(() => DataSet.Load(p, new DataTemplates { Chat = skipsTools }));
        Assert.Contains("the chat template does not render tool results (message 3, role tool, is missing from the text)", e.Message);
    }
}
