using ResLora.Text.Templates;
using static ResLora.Tests.IO.Templates.ChatTemplateTestKit;

namespace ResLora.Tests.IO.Templates;

/// <summary>Statements (for, if, set, namespace, loop controls) and whitespace handling (-, +, trim/lstrip blocks).</summary>
public sealed class ChatTemplateStatementTests
{
    [Fact]
    public void Render_LoopVariables_CountFromOneAndZero()
    {
        Assert.Equal("1 0 True False 3 3|2 1 False False 3 2|3 2 False True 3 1|",
            Render("{% for x in ['a', 'b', 'c'] %}{{ loop.index }} {{ loop.index0 }} {{ loop.first }} {{ loop.last }} {{ loop.length }} {{ loop.revindex }}|{% endfor %}"));
    }

    [Fact]
    public void Render_ForOverItems_UnpacksPairsInInsertionOrder()
    {
        var d = new Dictionary<string, object?> { ["b"] = 1, ["a"] = 2 };
        Assert.Equal("b=1;a=2;|b=1;a=2;|b,a,", Render(
            "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{% for k, v in d | items %}{{ k }}={{ v }};{% endfor %}|{% for k in d %}{{ k }},{% endfor %}", ("d", d)));
    }

    [Fact]
    public void Render_ForWithFilterAndElse_CountsOnlyKeptItems()
    {
        Assert.Equal("1:2 2:3! |empty", Render(
            "{% for x in xs if x > 1 %}{{ loop.index }}:{{ x }}{% if loop.last %}!{% endif %} {% endfor %}|{% for x in [] %}x{% else %}empty{% endfor %}",
            ("xs", new[] { 1, 2, 3 })));
    }

    [Fact]
    public void Render_BreakAndContinue_ControlTheInnermostLoop()
    {
        Assert.Equal("02|ab", Render(
            "{% for x in range(10) %}{% if x == 3 %}{% break %}{% endif %}{% if x == 1 %}{% continue %}{% endif %}{{ x }}{% endfor %}|"
            + "{% for s in ['a', 'b'] %}{% for i in range(5) %}{% if i == 1 %}{% break %}{% endif %}{{ s }}{% endfor %}{% endfor %}"));
    }

    [Fact]
    public void Render_IfElifElse_TakesTheFirstTrueBranch()
    {
        const string T = "{% if x == 1 %}one{% elif x == 2 %}two{% elif x == 2 %}again{% else %}many{% endif %}";
        Assert.Equal("one two many", $"{Render(T, ("x", 1))} {Render(T, ("x", 2))} {Render(T, ("x", 5))}");
    }

    [Fact]
    public void Render_SetInsideLoop_DoesNotLeakOrCarryOverButNamespaceDoes()
    {
        // Jinja gives every iteration its own scope: x starts from the outer 1 each time and is 1 again after the loop.
        Assert.Equal("11 11 1", Render("{% set x = 1 %}{% for i in [1, 2] %}{% set x = x + 10 %}{{ x }} {% endfor %}{{ x }}"));
        Assert.Equal("True 6", Render(
            "{% set ns = namespace(found=false, n=0) %}{% for x in [1, 2, 3] %}{% if x == 2 %}{% set ns.found = true %}{% endif %}"
            + "{% set ns.n = ns.n + x %}{% endfor %}{{ ns.found }} {{ ns.n }}"));
    }

    [Fact]
    public void Render_SetForms_AssignTuplesAndBlocks()
    {
        Assert.Equal("12|HI BOB", Render("{% set a, b = 1, 2 %}{{ a }}{{ b }}|{% set greeting %}Hi {{ name }}{% endset %}{{ greeting | upper }}", ("name", "Bob")));
    }

    [Fact]
    public void Render_LoopNeighboursAndCycle_SeeAdjacentItems()
    {
        Assert.Equal("-a:b:odd|a-b:c:even|b-c::odd|", Render(
            "{% for x in ['a', 'b', 'c'] %}{{ loop.previtem }}-{{ x }}:{{ loop.nextitem }}:{{ loop.cycle('odd', 'even') }}|{% endfor %}"));
    }

    [Fact]
    public void Render_IndentedTemplateWithDashes_EmitsOnlyTheExpressions()
    {
        // The layout of current Hugging Face templates: one tag per line, indented, every tag stripping its left side.
        const string Template = """
            {%- for message in messages %}
                {%- if message.role == 'system' %}
                    {{- '<<' + message.content + '>>\n' }}
                {%- else %}
                    {{- message.role + ': ' + message.content + '\n' }}
                {%- endif %}
            {%- endfor %}
            {%- if add_generation_prompt %}
                {{- 'assistant: ' }}
            {%- endif %}

            """;
        var messages = new[] { new ChatMessage("system", "S"), new ChatMessage("user", "U") };
        Assert.Equal("<<S>>\nuser: U\nassistant: ", ChatTemplate.Parse(Template).RenderConversation(messages, true, null, null));
    }

    [Fact]
    public void Render_GenerationBlock_RendersItsBody()
    {
        Assert.Equal("<a>x</a>", Render("<a>{% generation %}x{% endgeneration %}</a>"));
    }

    [Theory]
    [InlineData("a  {{- 'b' -}}  c", "abc")]
    [InlineData("a\n\n{%- if true -%}\n\n b \n{%- endif -%}\n\nc", "abc")]
    [InlineData("a {#- note -#} b", "ab")]
    [InlineData("{% if true %}\nyes\n{% endif %}\n", "yes\n")] // trim_blocks, and the one trailing newline dropped
    [InlineData("x\n\n", "x\n")]
    [InlineData("<ul>\n    {% for x in [1, 2] %}\n    <li>{{ x }}</li>\n    {% endfor %}\n</ul>", "<ul>\n    <li>1</li>\n    <li>2</li>\n</ul>")]
    [InlineData("  {{ 'x' }}", "  x")] // lstrip_blocks leaves {{ }} alone
    [InlineData("a {% if true %}b{% endif %}", "a b")] // only a tag alone at its line start is lstripped
    [InlineData("\t {% if true %}b{% endif %}", "b")]
    [InlineData("  {%+ if true %}x{% endif %}", "  x")] // + keeps the indentation
    [InlineData("{% if true +%}\nx{% endif %}", "\nx")] // + keeps the newline
    [InlineData("a {# note #} b", "a  b")]
    [InlineData("line1\n  {# c #}\nline2", "line1\nline2")] // comments are lstripped and trimmed too
    [InlineData("{{ 'x' }}\ny", "x\ny")] // trim_blocks does not apply to }}
    [InlineData("a\r\n{% if true %}\r\nb{% endif %}", "a\nb")] // newlines normalised first
    [InlineData("{{ {'a': {'b': 1}} }}", "{'a': {'b': 1}}")] // }} inside a dict literal does not close the tag
    [InlineData("{{ '%}' ~ '}}' }}", "%}}}")]
    public void Render_WhitespaceControl_MatchesTrimAndLstripBlocks(string template, string expected)
    {
        Assert.Equal(expected, Render(template));
    }
}
