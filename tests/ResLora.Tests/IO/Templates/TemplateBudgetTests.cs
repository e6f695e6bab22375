using System.Diagnostics;
using System.Text;
using ResLora.Templates;
using ResLora.Text.Templates;

namespace ResLora.Tests.IO.Templates;

/// <summary>
/// Chat templates are untrusted input (issue 30): each hostile template here once killed the process (stack
/// overflow), hung it or took gigabytes; now it ends with a <see cref="ChatTemplateException"/> naming the template
/// and the limit. Cases that nest deeply run on a thread with a 256 KB stack, so the depth limit is shown to hold long
/// before a stack overflow could happen.
/// </summary>
public sealed class TemplateBudgetTests
{
    private const string Name = "hostile";
    private const int SmallStack = 256 * 1024;

    /// <summary>Runs <paramref name="body"/> on a new thread with <paramref name="stackSize"/> bytes of stack, rethrowing what it threw.</summary>
    private static T OnThread<T>(Func<T> body, int stackSize = SmallStack)
    {
        T result = default!;
        Exception? error = null;
        var thread = new Thread(() =>
        {
            try
            {
                result = body();
            }
            catch (Exception e)
            {
                error = e;
            }
        }, stackSize);
        thread.Start();
        thread.Join();
        if (error is not null) throw new AggregateException(error);
        return result;
    }

    private static string Render(string source, TemplateBudget? budget = null) =>
        ChatTemplate.Parse(source, Name, budget: budget).Render(new Dictionary<string, object?>());

    /// <summary>Renders <paramref name="source"/> on a small stack and returns the template error it must end with.</summary>
    private static ChatTemplateException Refused(string source, TemplateBudget? budget = null)
    {
        var clock = Stopwatch.StartNew();
        var error = OnThread<Exception?>(() =>
        {
            try
            {
                Render(source, budget);
                return null;
            }
            catch (Exception e)
            {
                return e;
            }
        });
        clock.Stop();
        var refused = Assert.IsAssignableFrom<ChatTemplateException>(error);
        Assert.Contains($"'{Name}'", refused.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(15), $"took {clock.Elapsed}");
        return refused;
    }

    private static string Repeat(string s, int n) => new StringBuilder(s.Length * n).Insert(0, s, n).ToString();

    [Theory]
    [InlineData(3_400)]
    [InlineData(100_000)]
    public void NestedParentheses_AreRefusedAtParse(int depth)
    {
        string source = "{{ " + Repeat("(", depth) + "1" + Repeat(")", depth) + " }}";
        var e = Refused(source);
        Assert.Contains("TemplateBudget.MaxDepth", e.Message);
    }

    [Theory]
    [InlineData("if")]
    [InlineData("for")]
    [InlineData("set")]
    [InlineData("list")]
    [InlineData("dict")]
    [InlineData("minus")]
    [InlineData("not")]
    [InlineData("inline-if")]
    public void NestedBlocksAndOperators_AreRefusedAtParse(string kind)
    {
        const int n = 3_400;
        string source = kind switch
        {
            "if" => Repeat("{% if true %}", n) + "x" + Repeat("{% endif %}", n),
            "for" => Repeat("{% for i in [1] %}", n) + "x" + Repeat("{% endfor %}", n),
            "set" => Repeat("{% set x %}", n) + "x" + Repeat("{% endset %}", n),
            "list" => "{{ " + Repeat("[", n) + "1" + Repeat("]", n) + " }}",
            "dict" => "{{ " + Repeat("{'a': ", n) + "1" + Repeat(" }", n) + " }}",
            "minus" => "{{ " + Repeat("- ", n) + "1 }}",
            "not" => "{{ " + Repeat("not ", n) + "1 }}",
            _ => "{{ " + Repeat("1 if false else ", n) + "1 }}",
        };
        var e = Refused(source);
        Assert.Contains("TemplateBudget.MaxDepth", e.Message);
    }

    [Fact]
    public void DeepExpressionChains_AreRefusedAtRender()
    {
        // A left-deep chain parses without recursion but evaluates recursively.
        Assert.Contains("TemplateBudget.MaxDepth", Refused("{{ 1" + Repeat(" + 1", 100_000) + " }}").Message);
        Assert.Contains("TemplateBudget.MaxDepth", Refused("{{ 'a'" + Repeat(" | trim", 100_000) + " }}").Message);
    }

    [Theory]
    [InlineData("{{ ns }}")]
    [InlineData("{{ ns.x }}")]
    [InlineData("{{ ns.x | tojson }}")]
    [InlineData("{{ ns.x == ns.x }}")]
    [InlineData("{{ ns.x < ns.x }}")]
    [InlineData("{{ ns.x ~ '' }}")]
    public void ValuesNested100000Deep_AreRefused(string use)
    {
        string source = "{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}" + use;
        var e = Refused(source);
        Assert.Contains("TemplateBudget", e.Message);
    }

    [Theory]
    [InlineData("{{ ns }}")]
    [InlineData("{{ ns | string }}")]
    [InlineData("{{ [ns] }}")]
    [InlineData("{{ {'a': ns} }}")]
    public void SelfReferencingNamespace_IsRefused(string use)
    {
        var e = Refused("{% set ns = namespace() %}{% set ns.me = ns %}{% set ns.list = [ns, {'n': ns}] %}" + use);
        Assert.Contains("TemplateBudget.MaxDepth", e.Message);
    }

    [Fact]
    public void NestedRangeLoops_RunOutOfSteps()
    {
        var e = Refused("{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}{% endfor %}{% endfor %}{% endfor %}");
        Assert.Contains("TemplateBudget.MaxSteps", e.Message);
    }

    [Fact]
    public void LongLoops_RunOutOfTime_WhenStepsAreUnlimited()
    {
        var budget = TemplateBudget.Default with { MaxSteps = long.MaxValue, MaxRenderTime = TimeSpan.FromMilliseconds(200) };
        var e = Refused("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", budget);
        Assert.Contains("TemplateBudget.MaxRenderTime", e.Message);
    }

    [Fact]
    public void HugePowers_EndAtOnce()
    {
        Assert.Equal("1 -1 1 0", OnThread(() => Render("{{ 1 ** 9223372036854775807 }} {{ (-1) ** 9223372036854775807 }} {{ (-1) ** 9223372036854775806 }} {{ 0 ** 9223372036854775807 }}")));
        Assert.Equal("4611686018427387904 -9223372036854775808", Render("{{ 2 ** 62 }} {{ (-2) ** 63 }}"));
        Assert.Contains("integer overflow", Refused("{{ 2 ** 9223372036854775807 }}").Message);
        Assert.Contains("integer overflow", Refused("{{ 2 ** 63 }}").Message);
        Assert.Contains("integer overflow", Refused("{{ 3 ** 40 }}").Message);
    }

    [Theory]
    [InlineData("{{ 9223372036854775807 + 1 }}")]
    [InlineData("{{ -9223372036854775807 - 2 }}")]
    [InlineData("{{ 4611686018427387904 * 2 }}")]
    [InlineData("{{ (-9223372036854775807 - 1) // -1 }}")]
    [InlineData("{{ -(-9223372036854775807 - 1) }}")]
    [InlineData("{{ (-9223372036854775807 - 1) | abs }}")]
    [InlineData("{{ range(-9223372036854775807, 9223372036854775807) | list }}")]
    public void IntegerOverflow_IsATemplateError(string source)
    {
        Assert.Contains("overflow", Refused(source).Message);
    }

    [Fact]
    public void HugeSliceSteps_PickWhatPythonPicks()
    {
        Assert.Equal("a c b", Render("{{ 'abc'[0:3:9223372036854775807] }} {{ 'abc'[::-9223372036854775807] }} {{ 'abc'[1:3:9223372036854775807] }}"));
        Assert.Equal("[1]", Render("{{ [1, 2, 3][::9223372036854775807] }}"));
    }

    [Theory]
    [InlineData("{{ 'abcd' * 2305843009280802816 }}")]
    [InlineData("{{ 2305843009280802816 * 'abcd' }}")]
    [InlineData("{{ [1, 2, 3, 4] * 2305843009280802816 }}")]
    [InlineData("{{ 'x' * 20000000 }}")]
    [InlineData("{% set s = 'x' * 10000000 %}{{ s | replace('x', s) }}")]
    [InlineData("{% set s = 'x' * 10000000 %}{{ s.replace('x', 'yy') }}")]
    [InlineData("{% set s = 'x' * 10000000 %}{{ [s, s] | join }}")]
    [InlineData("{% set s = 'x' * 10000000 %}{{ ''.join([s, s]) }}")]
    [InlineData("{% set s = 'x' * 10000000 %}{{ [s, s] | tojson }}")]
    [InlineData("{% set s = 'x' * 10000000 %}{{ [s, s] }}")]
    [InlineData("{% set s = 'x' * 10000000 %}{{ s ~ s }}")]
    [InlineData("{% set s = 'x' * 10000000 %}{{ s + s }}")]
    [InlineData("{{ [[1, 1]] | tojson(indent='x' * 10000000) }}")]
    public void OversizedValues_AreRefusedBeforeTheyAreBuilt(string source)
    {
        Assert.Contains("TemplateBudget.MaxValueLength", Refused(source).Message);
    }

    [Fact]
    public void RepeatedBigStringsInALoop_StopAtTheOutputBudget()
    {
        var e = Refused("{% for i in range(100000) %}{{ 'x' * 10000000 }}{% endfor %}");
        Assert.Contains("TemplateBudget.MaxOutputLength", e.Message);
    }

    [Fact]
    public void BigStringsBuiltAndDropped_RunOutOfSteps()
    {
        var e = Refused("{% for i in range(100000) %}{% set y = 'x' * 10000000 %}{% endfor %}");
        Assert.Contains("TemplateBudget.MaxSteps", e.Message);
    }

    [Fact]
    public void Budget_CanBeSetPerTemplate_AndIsValidated()
    {
        var tight = TemplateBudget.Default with { MaxDepth = 4 };
        Assert.Contains("TemplateBudget.MaxDepth", Assert.Throws<ChatTemplateException>(() => Render("{{ ((((((1)))))) }}", tight)).Message);
        Assert.Equal("1", Render("{{ ((((((1)))))) }}"));
        Assert.Throws<ArgumentOutOfRangeException>(() => ChatTemplate.Parse("x", budget: TemplateBudget.Default with { MaxSteps = 0 }));
    }

    /// <summary>Each published template renders the same under a budget a hundred times tighter than the default.</summary>
    [Theory]
    [InlineData("llama2.jinja")]
    [InlineData("llama3.jinja")]
    [InlineData("mistral.jinja")]
    [InlineData("qwen2.jinja")]
    [InlineData("qwen2_5_tools.jinja")]
    [InlineData("gemma.jinja")]
    [InlineData("phi3.jinja")]
    [InlineData("zephyr.jinja")]
    public void PublishedTemplates_RenderIdentically_FarWithinTheBudget(string file)
    {
        var tight = new TemplateBudget { MaxDepth = 32, MaxSteps = 100_000, MaxValueLength = 160_000, MaxOutputLength = 320_000 };
        var withSystem = new[]
        {
            new ChatMessage("system", "You are a bot."), new ChatMessage("user", "Hi"),
            new ChatMessage("assistant", "Hello! How can I help?"), new ChatMessage("user", "Tell me a joke."),
        };
        foreach (var messages in new[] { withSystem, withSystem[1..] })
        {
            string? Try(TemplateBudget budget)
            {
                try
                {
                    return ChatTemplate.Parse(ChatTemplateTestKit.Fixture(file), file, budget: budget).RenderConversation(messages, true, "<s>", "</s>");
                }
                catch (ChatTemplateRaisedException)
                {
                    return null; // the template refuses a system message: the same under both budgets
                }
            }
            string? roomy = Try(TemplateBudget.Default);
            Assert.Equal(roomy, OnThread(() => Try(tight)));
            if (messages.Length == 3) Assert.NotNull(roomy);
        }
    }

    /// <summary>
    /// 1,200 generated templates (seeded): random nesting of parentheses, ifs and fors, loops over large ranges, string
    /// and list repetition, namespace self-reference, values nested in themselves. Each ends with its text or a
    /// <see cref="ChatTemplateException"/>, within seconds, on a 256 KB stack. The budget is smaller than the default
    /// (100 k steps, 1 s) so that the cases that exhaust it take milliseconds; the default's own cases are above.
    /// </summary>
    [Fact]
    public void GeneratedTemplates_EndWithTextOrATemplateError()
    {
        var budget = new TemplateBudget { MaxSteps = 100_000, MaxRenderTime = TimeSpan.FromSeconds(1), MaxValueLength = 1_000_000, MaxOutputLength = 2_000_000 };
        var random = new Random(30);
        var cases = Enumerable.Range(0, 1_200).Select(_ => new TemplateFuzzer(random).Template()).ToList();
        var failures = OnThread(() =>
        {
            var found = new List<string>();
            int rendered = 0, refused = 0;
            foreach (var source in cases)
            {
                var clock = Stopwatch.StartNew();
                try
                {
                    ChatTemplate.Parse(source, "fuzz", budget: budget).Render(new Dictionary<string, object?> { ["messages"] = new[] { "a", "b" } });
                    rendered++;
                }
                catch (ChatTemplateException)
                {
                    refused++;
                }
                catch (Exception e)
                {
                    found.Add($"{e.GetType().Name}: {e.Message}\n  template: {Shorten(source)}");
                }
                if (clock.Elapsed > TimeSpan.FromSeconds(5)) found.Add($"took {clock.Elapsed}: {Shorten(source)}");
            }
            // Both outcomes must be common, or the generator tests nothing.
            if (rendered < 100 || refused < 100) found.Add($"only {rendered} rendered and {refused} refused");
            return found;
        });
        Assert.True(failures.Count == 0, string.Join("\n", failures.Take(20)));
    }

    private static string Shorten(string s) => s.Length <= 300 ? s : s[..300] + $"... ({s.Length} chars)";

    /// <summary>Random templates from the supported subset, weighted towards what costs: nesting, loops, repetition.</summary>
    private sealed class TemplateFuzzer
    {
        private static readonly string[] Counts = { "0", "1", "3", "1000", "100000", "9223372036854775807", "-5" };
        private readonly Random _r;

        public TemplateFuzzer(Random random) => _r = random;

        public string Template()
        {
            var sb = new StringBuilder("{% set ns = namespace(x=[], s='ab', n=1) %}");
            if (_r.Next(4) == 0) sb.Append("{% set ns.me = ns %}");
            int statements = _r.Next(1, 4);
            for (int i = 0; i < statements; i++) sb.Append(Statement(0));
            return sb.ToString();
        }

        private string Count() => Counts[_r.Next(Counts.Length)];

        private string Statement(int depth)
        {
            int pick = depth > 4 ? _r.Next(3) : _r.Next(11);
            return pick switch
            {
                0 => "t",
                1 or 2 => "{{ " + Expr(0) + " }}",
                3 => "{% if " + Expr(0) + " %}" + Statement(depth + 1) + "{% else %}" + Statement(depth + 1) + "{% endif %}",
                4 or 5 => "{% for i in range(" + Count() + ") %}" + Statement(depth + 1) + Statement(depth + 1) + "{% endfor %}",
                6 => "{% set ns.x = " + (_r.Next(2) == 0 ? "[ns.x, ns.x]" : "[ns.x]") + " %}",
                7 => "{% set ns.s = ns.s ~ " + Expr(0) + " %}",
                8 => DeepNesting(),
                9 => "{% for m in messages %}{{ loop.index }}{{ m * " + Count() + " }}{% endfor %}",
                _ => "{% set ns.n = " + Expr(0) + " %}",
            };
        }

        private string DeepNesting()
        {
            int n = _r.Next(3) switch { 0 => _r.Next(1, 50), 1 => _r.Next(200, 400), _ => _r.Next(1_000, 5_000) };
            return _r.Next(3) switch
            {
                0 => "{{ " + Repeat("(", n) + "1" + Repeat(")", n) + " }}",
                1 => Repeat("{% if true %}", n) + "y" + Repeat("{% endif %}", n),
                _ => "{{ 1" + Repeat(" + 1", n * 10) + " }}",
            };
        }

        private string Expr(int depth)
        {
            int pick = depth > 3 ? _r.Next(6) : _r.Next(18);
            return pick switch
            {
                0 => Count(),
                1 => "'ab'",
                2 => "ns.x",
                3 => "ns.s",
                4 => "ns.n",
                5 => "ns",
                6 => "(" + Expr(depth + 1) + ")",
                7 => Expr(depth + 1) + " + " + Expr(depth + 1),
                8 => Expr(depth + 1) + " ** " + Expr(depth + 1),
                9 => Expr(depth + 1) + " * " + Count(),
                10 => Expr(depth + 1) + " ~ " + Expr(depth + 1),
                11 => Expr(depth + 1) + " | tojson",
                12 => Expr(depth + 1) + " | string | replace('a', 'aaaa')",
                13 => Expr(depth + 1) + " == " + Expr(depth + 1),
                14 => "range(" + Count() + ") | list",
                15 => "[" + Expr(depth + 1) + ", " + Expr(depth + 1) + "]",
                16 => "(ns.s ~ 'abc')[0:" + Count() + ":" + Count() + "]",
                _ => Expr(depth + 1) + " | join(" + Expr(depth + 1) + ")",
            };
        }
    }
}
