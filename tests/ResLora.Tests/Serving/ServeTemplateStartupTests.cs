using ResLora;
using ResLora.IO;
using ResLora.Pipelines.Serving;

namespace ResLora.Tests.Serving;

/// <summary>
/// serve parses and renders the chat template once at start-up (issue 30): a template that fails, or exceeds its
/// budget, stops the server before it listens, instead of failing every chat request.
/// </summary>
public sealed class ServeTemplateStartupTests : IClassFixture<ServingFixture>
{
    private readonly ServingFixture _fx;

    public ServeTemplateStartupTests(ServingFixture fx) => _fx = fx;

    [Theory]
    [InlineData("{{ 'abcd' * 2305843009280802816 }}", "TemplateBudget.MaxValueLength")]
    [InlineData("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "TemplateBudget.MaxSteps")]
    [InlineData("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}", "TemplateBudget.MaxDepth")]
    [InlineData("{{ raise_exception('this template serves nobody') }}", "this template serves nobody")]
    [InlineData("{% for m in messages %}{{ m.content.upper(1) }}{% endfor %}", "str.upper()")]
    public void Load_RefusesATemplateThatFailsItsTrialRender(string template, string reason)
    {
        string file = Path.Combine(_fx.Root, $"bad-{Guid.NewGuid():N}.jinja");
        File.WriteAllText(file, template);
        try
        {
            var e = Assert.Throws<UserInputException>(() => ServedModel.Load(new ServingOptions { ModelDir = _fx.ModelDir, ChatTemplate = file }, new RuntimeOptions()).Dispose());
            Assert.Contains("trial render", e.Message);
            Assert.Contains("'tiny-chat'", e.Message);
            // 2 million steps take about a second alone; on a loaded 2-core machine the 5 s render-time budget can stop the
            // loop first. Either budget refusing it is what this test is about (the step budget itself: TemplateBudgetTests).
            if (reason == "TemplateBudget.MaxSteps") Assert.Matches("TemplateBudget\\.(MaxSteps|MaxRenderTime)", e.Message);
            else Assert.Contains(reason, e.Message);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public void Load_AcceptsATemplateThatRefusesOnlyTheSystemRole()
    {
        string file = Path.Combine(_fx.Root, $"nosystem-{Guid.NewGuid():N}.jinja");
        File.WriteAllText(file, "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
            + "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}");
        try
        {
            ServedModel.Load(new ServingOptions { ModelDir = _fx.ModelDir, ChatTemplate = file }, new RuntimeOptions()).Dispose();
        }
        finally
        {
            File.Delete(file);
        }
    }
}
