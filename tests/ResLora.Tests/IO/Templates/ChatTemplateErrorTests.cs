using ResLora.Text.Templates;
using static ResLora.Tests.IO.Templates.ChatTemplateTestKit;

namespace ResLora.Tests.IO.Templates;

/// <summary>Refusals at load time (unsupported constructs, syntax errors) and render-time errors, each naming the line.</summary>
public sealed class ChatTemplateErrorTests
{
    [Theory]
    [InlineData("{% macro m() %}x{% endmacro %}", 1, "the 'macro' tag is not supported")]
    [InlineData("a\nb\n{% call m() %}x{% endcall %}", 3, "the 'call' tag is not supported")]
    [InlineData("{% if x %}\n{% filter upper %}x{% endfilter %}{% endif %}", 2, "the 'filter' tag is not supported")]
    [InlineData("{% include 'other.jinja' %}", 1, "the 'include' tag is not supported")]
    [InlineData("{% raw %}{{ x }}{% endraw %}", 1, "the 'raw' tag is not supported")]
    [InlineData("\n{{ x | wordwrap(10) }}", 2, "the 'wordwrap' filter is not supported")]
    [InlineData("{% if x is callable %}{% endif %}", 1, "the 'callable' test is not supported")]
    [InlineData("{{ lipsum(2) }}", 1, "the function 'lipsum' is not supported")]
    [InlineData("{{ 'a {}'.format(1) }}", 1, "the method 'format' is not supported")]
    [InlineData("{% for x in xs recursive %}{% endfor %}", 1, "recursive for loops are not supported")]
    public void Parse_UnsupportedConstruct_NamesLineAndConstruct(string template, int line, string detail)
    {
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(template));
        Assert.Equal(line, e.Line);
        Assert.Equal($"chat template line {line}: {detail}", e.Message);
    }

    [Fact]
    public void Parse_UnsupportedConstructInABranchNeverTaken_IsStillRefused()
    {
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse("{% if false %}\n{% import 'm' as m %}\n{% endif %}", "default"));
        Assert.Equal("chat template 'default' line 2: the 'import' tag is not supported", e.Message);
    }

    [Fact]
    public void ChatTemplateException_IsAUserInputException()
    {
        Assert.IsAssignableFrom<UserInputException>(Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse("{% macro m() %}")));
    }

    [Theory]
    [InlineData("a\n\n{% if x %}\nb", 3, "the 'if' tag is never closed; expected '{% endif %}'")]
    [InlineData("{% for m in ms %}\n{% if m %}x{% endif %}", 1, "the 'for' tag is never closed; expected '{% endfor %}'")]
    [InlineData("{% if x %}\n{% endfor %}", 2, "unexpected 'endfor'; the 'if' tag on line 1 is still open")]
    [InlineData("x\n{% endif %}", 2, "unexpected 'endif': no block is open")]
    [InlineData("a\n{{ x", 2, "the tag '{{' is never closed with '}}'")]
    [InlineData("{# note", 1, "the comment '{#' is never closed with '#}'")]
    [InlineData("{{ 'abc }}", 1, "a string literal is never closed")]
    [InlineData("{% if x y %}{% endif %}", 1, "expected '%}' but found 'y'")]
    [InlineData("{{ }}", 1, "'{{ }}' holds no expression")]
    [InlineData("{{ (1 + 2 }}", 1, "unexpected '}'; expected ')'")]
    [InlineData("{% break %}", 1, "'break' is only allowed inside a for loop")]
    public void Parse_SyntaxError_NamesTheLine(string template, int line, string detail)
    {
        var e = Assert.Throws<ChatTemplateException>(() => ChatTemplate.Parse(template));
        Assert.Equal($"chat template line {line}: {detail}", e.Message);
    }

    [Fact]
    public void Render_RaiseException_CarriesTheTemplatesMessageAndLine()
    {
        var template = ChatTemplate.Parse("ok\n{% if messages | length == 0 %}{{ raise_exception('No messages given') }}{% endif %}", "default");
        var e = Assert.Throws<ChatTemplateRaisedException>(() => template.Render(new Dictionary<string, object?> { ["messages"] = Array.Empty<object>() }));
        Assert.Equal("No messages given", e.TemplateMessage);
        Assert.Equal(2, e.Line);
        Assert.Equal("chat template 'default' line 2: the template rejected the conversation: No messages given", e.Message);
    }

    [Theory]
    [InlineData("a\n{{ nothing.attr }}", 2, "'nothing' is undefined")]
    [InlineData("{{ m.missing.deeper }}", 1, "'dict object' has no attribute 'missing'")]
    [InlineData("\n\n{{ 1 + 'a' }}", 3, "unsupported operand type(s) for +: 'int' and 'str'")]
    [InlineData("{{ 1 // 0 }}", 1, "integer division or modulo by zero")]
    [InlineData("{{ nothing + 1 }}", 1, "'nothing' is undefined")]
    [InlineData("{{ 1 < 'a' }}", 1, "'<' not supported between instances of 'int' and 'str'")]
    [InlineData("{% for x in 5 %}{% endfor %}", 1, "'int' object is not iterable")]
    [InlineData("{% set n = 1 %}{% set n.x = 2 %}", 1, "cannot assign the attribute 'x' of 'n': only a namespace() accepts attribute assignment")]
    [InlineData("{{ nothing | tojson }}", 1, "Object of type Undefined is not JSON serializable")]
    [InlineData("{{ 'a'.strip(1, 2) }}", 1, "str.strip() takes at most 1 argument(s), got 2")]
    [InlineData("{% for a, b in [[1, 2, 3]] %}{% endfor %}", 1, "cannot unpack 3 value(s) into 2 names (a, b)")]
    public void Render_RuntimeError_NamesTheLine(string template, int line, string detail)
    {
        var parsed = ChatTemplate.Parse(template);
        var e = Assert.Throws<ChatTemplateException>(() => parsed.Render(new Dictionary<string, object?> { ["m"] = new Dictionary<string, object?>() }));
        Assert.Equal($"chat template line {line}: {detail}", e.Message);
    }

    [Fact]
    public void RenderConversation_ExtraRedefiningAParameter_IsRefused()
    {
        var template = ChatTemplate.Parse("{{ messages | length }}");
        var extra = new Dictionary<string, object?> { ["bos_token"] = "<s>" };
        var e = Assert.Throws<ArgumentException>(() => template.RenderConversation(Array.Empty<ChatMessage>(), false, null, null, extra));
        Assert.Contains("bos_token", e.Message);
    }

    [Fact]
    public void RenderConversation_ExtraAndDefaults_ReachTheTemplate()
    {
        var template = ChatTemplate.Parse("{{ date_string }}|{{ tools is none }}|{{ bos_token is defined }}|{{ messages[0].content }}");
        var extra = new Dictionary<string, object?> { ["date_string"] = "26 Jul 2024" };
        Assert.Equal("26 Jul 2024|True|False|hi", template.RenderConversation(new[] { new ChatMessage("user", "hi") }, false, null, "</s>", extra));
    }

    [Fact]
    public void Render_UnsupportedValueType_NamesTheVariable()
    {
        var e = Assert.Throws<ArgumentException>(() => ChatTemplate.Parse("{{ x }}").Render(new Dictionary<string, object?> { ["x"] = new object() }));
        Assert.Contains("'x'", e.Message);
    }

    [Fact]
    public void Render_Helper_RendersNothingForEmptyTemplate()
    {
        Assert.Equal("", Render(""));
    }
}
