using System.Text.Json.Nodes;
using ResLora.Text.Templates;
using static ResLora.Tests.IO.Templates.ChatTemplateTestKit;

namespace ResLora.Tests.IO.Templates;

/// <summary>Expression evaluation: precedence, literals, access and slicing, operators, filters, tests, methods.</summary>
public sealed class ChatTemplateExpressionTests
{
    [Theory]
    [InlineData("{{ 1 + 2 * 3 }}", "7")]
    [InlineData("{{ (1 + 2) * 3 }}", "9")]
    [InlineData("{{ 2 * 3 ~ 4 }}", "64")] // * binds tighter than ~
    [InlineData("{{ 10 - 2 - 3 }}", "5")] // left-associative
    [InlineData("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }}", "3 -4 2 -2")] // Python floor semantics
    [InlineData("{{ 7 / 2 }} {{ 4 / 2 }} {{ 2 ** 10 }}", "3.5 2.0 1024")]
    [InlineData("{{ 1 + 2.5 }} {{ 0.1 + 0.2 }} {{ 1e-5 }} {{ 1e16 }} {{ 100.0 }}", "3.5 0.30000000000000004 1e-05 1e+16 100.0")]
    [InlineData("{{ not true or true }}", "True")]
    [InlineData("{{ not 1 == 2 }}", "True")]
    [InlineData("{{ true and not false }}", "True")]
    [InlineData("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }}", "True False")] // chained comparisons
    [InlineData("{{ 'a' + '  b  ' | trim }}", "ab")] // the filter applies to its operand only
    [InlineData("{{ -3 | abs }}", "3")]
    [InlineData("{{ none or 'fallback' }}|{{ 0 and 'x' }}|{{ 'x' and 'y' }}", "fallback|0|y")] // and/or return an operand
    [InlineData("{{ 'x' if false }}|{{ 'a' if 1 > 2 else 'b' if true else 'c' }}", "|b")]
    [InlineData("{{ 'a' ~ 1 ~ none ~ true }}", "a1NoneTrue")]
    [InlineData("{{ 'ab' * 3 }}{{ [0] * 2 }}", "ababab[0, 0]")]
    [InlineData("{{ [1, 2] + [3] }}", "[1, 2, 3]")]
    public void Render_Operators_FollowJinjaPrecedenceAndPythonArithmetic(string template, string expected)
    {
        Assert.Equal(expected, Render(template));
    }

    [Theory]
    [InlineData("{{ [1, 'a', none, true, 1.5] }}", "[1, 'a', None, True, 1.5]")]
    [InlineData("{{ {'k': 'v', \"n\": [1, False]} }}", "{'k': 'v', 'n': [1, False]}")]
    [InlineData("{{ True }}{{ None }}{{ false }}", "TrueNoneFalse")]
    [InlineData("{{ 'it\\'s' }} {{ \"say \\\"hi\\\"\" }}", "it's say \"hi\"")]
    [InlineData("{{ 'a\\tb\\n' }}", "a\tb\n")]
    [InlineData("{{ 'a' 'b' }}", "ab")] // adjacent literals join
    [InlineData("{{ ['it\\'s'] }}", "[\"it's\"]")] // repr picks double quotes
    [InlineData("{{ 1_000 }}", "1000")]
    [InlineData("{{ [1, 2,] | length }}", "2")] // trailing comma
    public void Render_Literals_PrintAsPython(string template, string expected)
    {
        Assert.Equal(expected, Render(template));
    }

    [Theory]
    [InlineData("{{ xs[1:] }}", "[2, 3, 4]")]
    [InlineData("{{ xs[::-1] }}", "[4, 3, 2, 1]")]
    [InlineData("{{ xs[-1] }}", "4")]
    [InlineData("{{ xs[:-1] }}", "[1, 2, 3]")]
    [InlineData("{{ xs[1:3] }}", "[2, 3]")]
    [InlineData("{{ xs[::2] }}", "[1, 3]")]
    [InlineData("{{ xs[-10:] }}", "[1, 2, 3, 4]")]
    [InlineData("{{ xs[10] is defined }}", "False")]
    [InlineData("{{ xs.0 }}", "1")]
    [InlineData("{{ 'hello'[1:3] }}{{ 'hello'[::-1] }}{{ 'hello'[-1] }}", "elolleho")]
    public void Render_IndexAndSlice_FollowPython(string template, string expected)
    {
        Assert.Equal(expected, Render(template, ("xs", new object?[] { 1, 2, 3, 4 })));
    }

    [Fact]
    public void Render_AttributeAndItemAccessOnDicts_AreTheSame()
    {
        var m = new Dictionary<string, object?> { ["role"] = "user", ["content"] = null };
        Assert.Equal("user user None", Render("{{ m.role }} {{ m['role'] }} {{ m.content }}", ("m", m)));
        Assert.Equal("False True", Render("{{ m.missing is defined }} {{ m.content is none }}", ("m", m)));
        Assert.Equal("d|None", Render("{{ m.get('missing', 'd') }}|{{ m.get('missing') }}", ("m", m)));
        Assert.Equal("role,content|user", Render("{{ m.keys() | join(',') }}|{{ m.values() | first }}", ("m", m)));
    }

    [Theory]
    [InlineData("{{ 'a' in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1, 2] }}", "True True True True")]
    [InlineData("{{ 1 == 1.0 }} {{ 'a' == 'a' }} {{ [1, 'a'] == [1, 'a'] }} {{ 'a' != 1 }}", "True True True True")]
    [InlineData("{{ 'abc' < 'abd' }} {{ [1, 2] < [1, 3] }}", "True True")]
    public void Render_Comparisons_UsePythonEquality(string template, string expected)
    {
        Assert.Equal(expected, Render(template));
    }

    [Fact]
    public void Render_Tojson_MatchesPythonJsonDumps()
    {
        var tools = JsonNode.Parse("""[{"name": "f", "parameters": {"x": 1.0, "y": [1, "é"]}}]""");
        Assert.Equal("""[{"name": "f", "parameters": {"x": 1.0, "y": [1, "é"]}}]""", Render("{{ tools | tojson }}", ("tools", tools)));
        Assert.Equal("{\"a\": 1, \"b\": [true, null, \"q\\\"\\n\\\\\"]}", Render("{{ {'a': 1, 'b': [true, none, 'q\"\\n\\\\']} | tojson }}"));
        Assert.Equal("{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {},\n  \"c\": []\n}", Render("{{ {'a': [1, 2], 'b': {}, 'c': []} | tojson(indent=2) }}"));
        Assert.Equal("\"\\u00e9\" \"é\"", Render("{{ 'é' | tojson(ensure_ascii=true) }} {{ 'é' | tojson }}"));
        Assert.Equal("{\"a\": 2, \"b\": 1}", Render("{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}"));
        Assert.Equal("1.5 \"x\" null", Render("{{ 1.5 | tojson }} {{ 'x' | tojson }} {{ none | tojson }}"));
    }

    [Theory]
    [InlineData("{{ '  a b \\n'.strip() }}|{{ '  a '.lstrip() }}|{{ ' a  '.rstrip() }}|{{ 'xxaxx'.strip('x') }}", "a b|a | a|a")]
    [InlineData("{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }}", "['a', 'b', '', 'c'] ['a', 'b'] ['a', 'b c']")]
    [InlineData("{{ 'Hello'.startswith('He') }} {{ 'Hello'.endswith(('x', 'lo')) }}", "True True")]
    [InlineData("{{ 'Hello'.upper() }} {{ 'Hello'.lower() }} {{ 'a-b'.replace('-', '+') }} {{ 'hi there'.title() }}", "HELLO hello a+b Hi There")]
    [InlineData("{{ ', '.join(['a', 'b']) }}", "a, b")]
    public void Render_StringMethods_FollowPython(string template, string expected)
    {
        Assert.Equal(expected, Render(template));
    }

    [Theory]
    [InlineData("{{ '  x  ' | trim }}|{{ 'ab' | upper }}|{{ 'AB' | lower }}|{{ 'hELLO wORLD' | capitalize }}|{{ 'hello big-world' | title }}", "x|AB|ab|Hello world|Hello Big-World")]
    [InlineData("{{ 'a.b.c' | replace('.', '/') }}|{{ 'aaa' | replace('a', 'b', 2) }}", "a/b/c|bba")]
    [InlineData("{{ [1, 2, 3] | length }} {{ 'héllo' | length }} {{ {'a': 1} | count }} {{ missing | length }}", "3 5 1 0")]
    [InlineData("{{ [1, 2] | join }} {{ ['a', 'b'] | join(', ') }}", "12 a, b")]
    [InlineData("{{ [1, 2] | first }} {{ [1, 2] | last }} {{ 'xyz' | first }} {{ [] | first is defined }}", "1 2 x False")]
    [InlineData("{{ missing | default('d') }} {{ '' | default('d') }} {{ '' | default('d', true) }} {{ none | d('n') }}", "d  d None")]
    [InlineData("{{ 42 | string ~ 'x' }} {{ '42' | int + 1 }} {{ 'x' | int }} {{ 3.9 | int }} {{ '2.5' | float }}", "42x 43 0 3 2.5")]
    [InlineData("{{ 'ab' | list }} {{ {'a': 1} | items | list }} {{ [3, 1] | reverse | list }}", "['a', 'b'] [['a', 1]] [1, 3]")]
    public void Render_Filters_FollowJinja(string template, string expected)
    {
        Assert.Equal(expected, Render(template));
    }

    [Fact]
    public void Render_SelectattrAndMap_FilterAndProjectMessages()
    {
        var messages = new object?[]
        {
            new Dictionary<string, object?> { ["role"] = "system", ["content"] = "s" },
            new Dictionary<string, object?> { ["role"] = "user", ["content"] = "u1" },
            new Dictionary<string, object?> { ["role"] = "user", ["content"] = "u2" },
        };
        Assert.Equal("2|s|u1,u2|user,user",
            Render("{{ messages | selectattr('role', 'equalto', 'user') | list | length }}|"
                + "{{ (messages | rejectattr('role', 'equalto', 'user') | first).content }}|"
                + "{{ messages | selectattr('role', 'eq', 'user') | map(attribute='content') | join(',') }}|"
                + "{{ messages | map(attribute='role') | select('equalto', 'user') | join(',') }}", ("messages", messages)));
    }

    [Theory]
    [InlineData("{{ x is defined }} {{ missing is defined }} {{ missing is not defined }} {{ missing is undefined }}", "True False True True")]
    [InlineData("{{ none is none }} {{ x is none }} {{ x is not none }}", "True False True")]
    [InlineData("{{ 'a' is string }} {{ 1 is string }} {{ {} is mapping }} {{ [] is mapping }}", "True False True False")]
    [InlineData("{{ [] is iterable }} {{ 'a' is iterable }} {{ 1 is iterable }} {{ [] is sequence }} {{ 1 is sequence }}", "True True False True False")]
    [InlineData("{{ 1 is number }} {{ 1.5 is number }} {{ 'a' is number }} {{ 1 is integer }} {{ 1.5 is float }}", "True True False True True")]
    [InlineData("{{ true is true }} {{ 1 is true }} {{ false is false }} {{ true is boolean }}", "True False True True")]
    [InlineData("{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }}", "True True True False")]
    [InlineData("{{ 1 is eq 1 }} {{ 2 is gt 1 }} {{ 'a' is in 'cat' }} {{ none is sameas none }} {{ 'ab' is lower }}", "True True True True True")]
    public void Render_Tests_FollowJinja(string template, string expected)
    {
        Assert.Equal(expected, Render(template, ("x", 1)));
    }

    [Fact]
    public void Render_UndefinedVariable_IsEmptyFalsyAndIteratesAsEmpty()
    {
        Assert.Equal("[]|n|0|", Render("[{{ missing }}]|{% if missing %}y{% else %}n{% endif %}|{{ missing | length }}|{% for x in missing %}x{% endfor %}"));
        Assert.Equal("True False", Render("{{ missing == other }} {{ missing == none }}"));
        Assert.Equal("x", Render("{{ missing ~ 'x' }}"));
    }

    [Fact]
    public void Render_StrftimeNow_ReadsTheInjectedClock()
    {
        var clock = new FixedClock(new DateTimeOffset(2024, 7, 5, 9, 3, 7, TimeSpan.Zero));
        var template = ChatTemplate.Parse("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%-d %B %Y, %H:%M:%S %p %a %A %j %%') }}", clock: clock);
        Assert.Equal("05 Jul 2024|5 July 2024, 09:03:07 AM Fri Friday 187 %", template.Render(new Dictionary<string, object?>()));
    }

    [Fact]
    public void Render_RangeNamespaceAndDict_Work()
    {
        Assert.Equal("[0, 1, 2] [1, 3] [3, 2, 1] 2 1", Render(
            "{{ range(3) }} {{ range(1, 5, 2) }} {{ range(3, 0, -1) }} {{ namespace({'a': 1}, b=2).b }} {{ dict(a=1).a }}"));
    }

    [Fact]
    public void Render_DotNetValues_AreConverted()
    {
        var vars = new Dictionary<string, object?>
        {
            ["ints"] = new[] { 1, 2 },
            ["map"] = new Dictionary<string, int> { ["a"] = 1 },
            ["d"] = 1.25m,
            ["msg"] = new ChatMessage("user", "hi"),
            ["json"] = JsonNode.Parse("""{"n": 1, "f": 1.0, "s": "x"}"""),
        };
        Assert.Equal("[1, 2] 1 1.25 user 1 1.0 x", ChatTemplate.Parse("{{ ints }} {{ map.a }} {{ d }} {{ msg.role }} {{ json.n }} {{ json.f }} {{ json.s }}").Render(vars));
    }
}
