using ArchUnitNET.Loader;
using ResLora.Models;
using static ArchUnitNET.Fluent.ArchRuleDefinition;

namespace ResLora.Tests.Architecture;

/// <summary>
/// Model families are folders behind the <see cref="CausalLM"/> abstraction (docs/architecture.md, "One family = one
/// folder + one descriptor"): outside the family folders only the registry (<see cref="ModelFamilies"/>) names a
/// family's types, so a new family never edits the rest of the library.
/// </summary>
public sealed class FamilyRulesTests
{
    private static readonly Lazy<ArchUnitNET.Domain.Architecture> Product = new(() =>
        new ArchLoader().LoadAssemblies(typeof(ModelConfig).Assembly, typeof(ResLora.Cli.CliApp).Assembly).Build());

    /// <summary>The namespaces of the causal-LM family folders, from the registry itself (each descriptor's namespace).</summary>
    public static string FamilyNamespacePattern() =>
        "^(" + string.Join("|", ModelFamilies.All.OfType<ICausalLMFamily>().Select(f => System.Text.RegularExpressions.Regex.Escape(f.GetType().Namespace!)).Distinct()) + @")(\..*)?$";

    [Fact]
    public void OnlyFamilyFoldersAndTheRegistry_NameAFamilysTypes()
    {
        string families = FamilyNamespacePattern();
        Assert.Contains("ResLora\\.Models\\.Qwen3", families);
        var rule = Types().That().DoNotResideInNamespaceMatching(families).And().AreNot(typeof(ModelFamilies))
            .Should().NotDependOnAny(Types().That().ResideInNamespaceMatching(families))
            .Because("the library takes CausalLM and builds through ModelFamilies; a concrete model class is named only in its family folder");
        Assert.True(rule.HasNoViolations(Product.Value), string.Join("\n", rule.Evaluate(Product.Value).Where(r => !r.Passed).Select(r => r.Description).Take(20)));
    }

    [Fact]
    public void TheRule_WouldCatchAReference()
    {
        // The registry does name the families: the same rule without its exemption must fail, so the rule is not vacuous.
        string families = FamilyNamespacePattern();
        var rule = Types().That().DoNotResideInNamespaceMatching(families)
            .Should().NotDependOnAny(Types().That().ResideInNamespaceMatching(families));
        Assert.False(rule.HasNoViolations(Product.Value));
    }
}
