using System.Text.Json;

namespace ResLora.Models;

/// <summary>
/// Shapes of public checkpoints as data: each preset is the <c>config.json</c> of the model it names (embedded
/// <c>Models/Presets/*.json</c>), so a random-init model of the real size can be built for benchmarks without the
/// weights. Adding a preset is adding one JSON file.
/// </summary>
public static class ModelPresets
{
    private const string Prefix = "ResLora.Presets.";

    /// <summary>The preset names (file names without <c>.json</c>), sorted.</summary>
    public static IReadOnlyList<string> Names { get; } = typeof(ModelPresets).Assembly.GetManifestResourceNames()
        .Where(n => n.StartsWith(Prefix, StringComparison.Ordinal) && n.EndsWith(".json", StringComparison.Ordinal))
        .Select(n => n[Prefix.Length..^".json".Length])
        .OrderBy(n => n, StringComparer.Ordinal)
        .ToList();

    /// <summary>The config of preset <paramref name="name"/> (case-insensitive), validated; an unknown name lists the known ones.</summary>
    public static ModelConfig Get(string name)
    {
        string? found = Names.FirstOrDefault(n => string.Equals(n, name.Trim(), StringComparison.OrdinalIgnoreCase))
            ?? throw new UserInputException($"--preset '{name}' is not known; presets: {string.Join(", ", Names)}.");
        using var stream = typeof(ModelPresets).Assembly.GetManifestResourceStream(Prefix + found + ".json")!;
        var config = JsonSerializer.Deserialize<ModelConfig>(stream, ModelConfig.JsonOptions)
            ?? throw new InvalidOperationException($"preset {found} is empty.");
        config.Validate($"preset {found}");
        return config;
    }

    /// <summary>Parameters of a model of this config (every base weight once; a tied lm_head counts once).</summary>
    public static long ParameterCount(ModelConfig config) =>
        ModelFamilies.ExpectedWeights(config).Values.Sum(s => s.Aggregate(1L, (a, b) => a * b));
}
