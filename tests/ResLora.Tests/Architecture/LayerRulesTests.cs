using ArchUnitNET.Domain;
using ArchUnitNET.Fluent;
using ArchUnitNET.Loader;
using static ArchUnitNET.Fluent.ArchRuleDefinition;

namespace ResLora.Tests.Architecture;

/// <summary>
/// The one-way layers of the library (docs/architecture.md): IO ← Text ← Models ← Quantization ← Adapters ← Training ←
/// Pipelines ← applications (CLI, demo, bench, plots). A layer may use the layers before it, never one after it.
/// </summary>
public sealed class LayerRulesTests
{
    /// <summary>The layers in dependency order, as namespaces under a root.</summary>
    public static readonly string[] Layers = { "IO", "Text", "Models", "Quantization", "Adapters", "Training", "Pipelines" };

    /// <summary>The applications: allowed to use every layer, never used by one.</summary>
    public static readonly string[] Applications = { "Cli", "Demo", "Bench", "Plots" };

    private static readonly Lazy<ArchUnitNET.Domain.Architecture> Product = new(() =>
        new ArchLoader().LoadAssemblies(typeof(ResLora.Models.ModelConfig).Assembly, typeof(ResLora.Cli.CliApp).Assembly).Build());

    private static readonly Lazy<ArchUnitNET.Domain.Architecture> Fixture = new(() =>
        new ArchLoader().LoadAssemblies(typeof(LayerRulesTests).Assembly).Build());

    /// <summary>"ROOT.Layer" and its sub-namespaces.</summary>
    private static string In(string root, string layer) => "^" + System.Text.RegularExpressions.Regex.Escape(root + "." + layer) + @"(\..*)?$";

    /// <summary>One rule per layer: its types depend on no later layer and no application.</summary>
    public static IEnumerable<(string Layer, IArchRule Rule)> Rules(string root)
    {
        for (int i = 0; i < Layers.Length; i++)
        {
            var forbidden = Layers.Skip(i + 1).Concat(Applications).ToArray();
            string pattern = "^" + System.Text.RegularExpressions.Regex.Escape(root + ".") + "(" + string.Join("|", forbidden) + @")(\..*)?$";
            var rule = Types().That().ResideInNamespaceMatching(In(root, Layers[i]))
                .Should().NotDependOnAny(Types().That().ResideInNamespaceMatching(pattern))
                .Because($"{root}.{Layers[i]} comes before {string.Join(", ", forbidden)} in the one-way layers");
            yield return (Layers[i], rule);
        }
    }

    public static TheoryData<string> LayerNames()
    {
        var d = new TheoryData<string>();
        foreach (var l in Layers) d.Add(l);
        return d;
    }

    [Theory, MemberData(nameof(LayerNames))]
    public void Layer_DependsOnlyOnEarlierLayers(string layer)
    {
        Assert.NotEmpty(Types().That().ResideInNamespaceMatching(In("ResLora", layer)).GetObjects(Product.Value)); // not vacuous
        var rule = Rules("ResLora").Single(r => r.Layer == layer).Rule;
        Assert.True(rule.HasNoViolations(Product.Value), string.Join("\n", rule.Evaluate(Product.Value).Where(r => !r.Passed).Select(r => r.Description).Take(20)));
    }

    [Fact]
    public void RootTypes_DependOnNoLayer()
    {
        // RuntimeOptions and UserInputException sit under every layer.
        var rule = Types().That().ResideInNamespaceMatching(@"^ResLora$")
            .Should().NotDependOnAny(Types().That().ResideInNamespaceMatching(@"^ResLora\..*"));
        Assert.True(rule.HasNoViolations(Product.Value), string.Join("\n", rule.Evaluate(Product.Value).Where(r => !r.Passed).Select(r => r.Description)));
    }

    [Fact]
    public void CoreLibrary_UsesNoConsoleOrPlottingPackage()
    {
        var core = Types().That().ResideInAssembly(typeof(ResLora.Models.ModelConfig).Assembly);
        var rule = core.Should().NotDependOnAny(Types().That().ResideInNamespaceMatching(@"^(ScottPlot|Spectre\.Console|System\.CommandLine)(\..*)?$"));
        Assert.True(rule.HasNoViolations(Product.Value));
    }

    /// <summary>Assemblies the core library must not reference: the ONNX importer's packages and the applications' UI/CLI ones.</summary>
    public static readonly string[] ForbiddenInCore = { "OnnxSharp", "Google.Protobuf", "System.CommandLine", "Spectre.Console", "ScottPlot" };

    /// <summary>The names in <paramref name="forbidden"/> (or starting with one of them and a dot) that <paramref name="assembly"/> references.</summary>
    public static IReadOnlyList<string> ForbiddenReferences(System.Reflection.Assembly assembly, IEnumerable<string> forbidden) =>
        assembly.GetReferencedAssemblies().Select(a => a.Name ?? "")
            .Where(n => forbidden.Any(f => n.Equals(f, StringComparison.OrdinalIgnoreCase) || n.StartsWith(f + ".", StringComparison.OrdinalIgnoreCase)))
            .ToList();

    [Fact]
    public void CoreAssembly_ReferencesNoOnnxOrUiPackage()
    {
        var core = typeof(ResLora.Models.ModelConfig).Assembly;
        Assert.Empty(ForbiddenReferences(core, ForbiddenInCore));
        // The check can fail: the importer and the CLI do reference what the core must not.
        Assert.Contains("OnnxSharp", ForbiddenReferences(typeof(ResLora.Onnx.OnnxConversion).Assembly, ForbiddenInCore));
        Assert.Contains("System.CommandLine", ForbiddenReferences(typeof(ResLora.Cli.CliApp).Assembly, ForbiddenInCore));
    }

    [Fact]
    public void TemplateEngine_ReferencesNoResLoraAssembly()
    {
        var engine = typeof(ResLora.Templates.TemplateBudget).Assembly;
        Assert.Equal("ResLora.Templates", engine.GetName().Name);
        Assert.Empty(ForbiddenReferences(engine, new[] { "ResLora" }));
        // The check can fail: the core references ResLora.Templates, which the same rule flags.
        Assert.Contains("ResLora.Templates", ForbiddenReferences(typeof(ResLora.Models.ModelConfig).Assembly, new[] { "ResLora" }));
    }

    [Fact]
    public void Rules_CatchAForbiddenReference()
    {
        // The fixture below has an IO type that uses a Models type: the same rules must flag exactly that layer.
        var results = Rules("ResLora.Tests.Architecture.Fixture").ToDictionary(r => r.Layer, r => r.Rule.HasNoViolations(Fixture.Value));
        Assert.False(results["IO"]);
        Assert.True(results["Models"]);
        // And the product's Models layer does use IO, so the reverse rule would catch a real edge too.
        var reverse = Types().That().ResideInNamespaceMatching(In("ResLora", "Models")).Should()
            .NotDependOnAny(Types().That().ResideInNamespaceMatching(In("ResLora", "IO")));
        Assert.False(reverse.HasNoViolations(Product.Value));
    }
}
