using System.Text.Json.Nodes;
using ResLora.Text.Templates;

namespace ResLora.Tests.IO.Templates;

/// <summary>Reading <c>chat_template</c> from <c>tokenizer_config.json</c>: a string, a named list, or absent.</summary>
public sealed class ChatTemplatesConfigTests
{
    private static JsonObject Config(JsonNode? chatTemplate) => new() { ["bos_token"] = "<s>", ["chat_template"] = chatTemplate };

    private static JsonArray Named(params (string Name, string Template)[] items) =>
        new(items.Select(i => (JsonNode)new JsonObject { ["name"] = i.Name, ["template"] = i.Template }).ToArray());

    private static string Run(ChatTemplate? t) => t!.Render(new Dictionary<string, object?>());

    [Fact]
    public void FromTokenizerConfig_StringTemplate_IsTheDefault()
    {
        var t = ChatTemplates.FromTokenizerConfig(Config("plain"));
        Assert.Equal("default", t!.Name);
        Assert.Equal("plain", Run(t));
    }

    [Fact]
    public void FromTokenizerConfig_NoTemplate_ReturnsNull()
    {
        Assert.Null(ChatTemplates.FromTokenizerConfig(new JsonObject { ["bos_token"] = "<s>" }));
        Assert.Null(ChatTemplates.FromTokenizerConfig(Config(null)));
    }

    [Fact]
    public void FromTokenizerConfig_NamedList_PicksDefaultOrTheNamedOne()
    {
        var config = Config(Named(("default", "D"), ("tool_use", "T")));
        Assert.Equal("D", Run(ChatTemplates.FromTokenizerConfig(config)));
        var toolUse = ChatTemplates.FromTokenizerConfig(config, "tool_use");
        Assert.Equal("tool_use", toolUse!.Name);
        Assert.Equal("T", Run(toolUse));
    }

    [Fact]
    public void FromTokenizerConfig_ListWithoutDefault_ListsTheNames()
    {
        var e = Assert.Throws<UserInputException>(() => ChatTemplates.FromTokenizerConfig(Config(Named(("rag", "R"), ("tool_use", "T")))));
        Assert.Equal("tokenizer_config.json: chat_template holds several templates and none is named 'default'; choose one by name: 'rag', 'tool_use'.", e.Message);
    }

    [Fact]
    public void FromTokenizerConfig_UnknownName_ListsTheNames()
    {
        var e = Assert.Throws<UserInputException>(() => ChatTemplates.FromTokenizerConfig(Config(Named(("default", "D"))), "rag"));
        Assert.Equal("tokenizer_config.json: chat_template has no template named 'rag'; the templates are: 'default'.", e.Message);
        Assert.Throws<UserInputException>(() => ChatTemplates.FromTokenizerConfig(Config("x"), "rag"));
    }

    [Fact]
    public void FromTokenizerConfig_WrongShape_IsRefused()
    {
        Assert.Throws<UserInputException>(() => ChatTemplates.FromTokenizerConfig(Config(42)));
        Assert.Throws<UserInputException>(() => ChatTemplates.FromTokenizerConfig(Config(new JsonArray(new JsonObject { ["name"] = "default" }))));
    }

    [Fact]
    public void FromTokenizerConfig_UnsupportedConstruct_NamesTheTemplate()
    {
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplates.FromTokenizerConfig(Config(Named(("default", "ok"), ("tool_use", "\n{% macro f() %}{% endmacro %}"))), "tool_use"));
        Assert.Equal("chat template 'tool_use' line 2: the 'macro' tag is not supported", e.Message);
    }

    [Fact]
    public void FromTokenizerConfig_RealisticConfig_RendersAConversation()
    {
        var config = (JsonObject)JsonNode.Parse("""
            {"bos_token": "<s>", "eos_token": "</s>",
             "chat_template": "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + eos_token + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"}
            """)!;
        var t = ChatTemplates.FromTokenizerConfig(config);
        Assert.Equal("<|user|>\nHi</s>\n<|assistant|>\n", t!.RenderConversation(new[] { new ChatMessage("user", "Hi") }, true, "<s>", "</s>"));
    }
}
