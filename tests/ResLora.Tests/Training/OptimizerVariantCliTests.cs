using System.Text.Json;
using ResLora.Tests.Infrastructure;
using ResLora.Training;
using static ResLora.Tests.Infrastructure.CliHarness;

namespace ResLora.Tests.Training;

/// <summary>train --loraplus-lr-ratio / --precondition from the command line: runs, refusals, and resumes that change them.</summary>
[Collection("console")]
public sealed class OptimizerVariantCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-optim-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string[] Train(string model, string data, string outDir, params string[] more) => TrainFor(3, model, data, outDir, more);

    private static string[] TrainFor(int steps, string model, string data, string outDir, params string[] more) =>
        new[] { "train", "--model", model, "--data", data, "--steps", steps.ToString(System.Globalization.CultureInfo.InvariantCulture), "--batch-size", "4", "--eval-fraction", "0", "--out", outDir }.Concat(CliHarness.Templates).Concat(more).ToArray();

    [Fact]
    public void Resume_WithChangedRatioOrPreconditioner_IsRefusedNamingTheFlag()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "d.jsonl"), 16, 1);
        string outDir = Path.Combine(_dir, "run");
        var first = Run(Train(model, data, outDir, "--loraplus-lr-ratio", "16", "--precondition", "riemannian", "--save-every", "1"));
        Assert.True(first.Rc == 0, first.Err);
        var recipe = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, ResLora.Pipelines.FineTuning.RecipeFile))).RootElement;
        Assert.Equal(16, recipe.GetProperty("loraplus-lr-ratio").GetDouble());
        Assert.Equal("riemannian", recipe.GetProperty("precondition").GetString());
        var ratio = Run(Train(model, data, outDir, "--loraplus-lr-ratio", "8", "--precondition", "riemannian", "--resume"));
        Assert.Equal(2, ratio.Rc);
        Assert.Contains("this resume changes --loraplus-lr-ratio 8 (the checkpoint was trained with 16)", ratio.Err);
        var off = Run(Train(model, data, outDir, "--precondition", "riemannian", "--resume"));
        Assert.Contains("--loraplus-lr-ratio off (the checkpoint was trained with 16)", off.Err);
        var plain = Run(Train(model, data, outDir, "--loraplus-lr-ratio", "16", "--resume"));
        Assert.Contains("--precondition none (the checkpoint was trained with riemannian)", plain.Err);
        var delta = Run(Train(model, data, outDir, "--loraplus-lr-ratio", "16", "--precondition", "riemannian", "--precondition-delta", "0.1", "--resume"));
        Assert.Contains("--precondition-delta 0.1 (the checkpoint was trained with 0.01)", delta.Err);
        var same = Run(Train(model, data, outDir, "--loraplus-lr-ratio", "16", "--precondition", "riemannian", "--resume"));
        Assert.True(same.Rc == 0, same.Err);
    }

    [Fact]
    public void Precondition_WithLohaOrRefLora_IsRefusedInOneLine()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "d.jsonl"), 16, 1);
        var loha = Run(Train(model, data, Path.Combine(_dir, "loha"), "--method", "loha", "--precondition", "riemannian"));
        Assert.Equal(2, loha.Rc);
        Assert.Contains("error: --precondition riemannian scales the gradients of low-rank (A, B) pairs", loha.Err);
        var error = Assert.Single(loha.Err.Split('\n'), l => l.StartsWith("error:", StringComparison.Ordinal));
        Assert.EndsWith("use it with --method lora, dora, reslora or rolora, or drop --precondition.", error.TrimEnd());
        var reflora = Run(Train(model, data, Path.Combine(_dir, "reflora"), "--method", "reflora", "--precondition", "riemannian"));
        Assert.Equal(2, reflora.Rc);
        Assert.Contains("both rewrite the gradients of the same (A, B) pairs", reflora.Err);
        var bad = Run(Train(model, data, Path.Combine(_dir, "bad"), "--loraplus-lr-ratio", "0"));
        Assert.Equal(2, bad.Rc);
        Assert.Contains("--loraplus-lr-ratio must be a positive number", bad.Err);
    }

    /// <summary>A 30-step run of each variant on the demo task from the CLI: the last logged loss is below the first.</summary>
    [Theory]
    [InlineData("--loraplus-lr-ratio", "16")]
    [InlineData("--precondition", "riemannian")]
    public void ShortCliRun_LowersTheLoss(string flag, string value)
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "d.jsonl"), 48, 1);
        string outDir = Path.Combine(_dir, "run");
        var r = Run(TrainFor(30, model, data, outDir, "--lr", "3e-3", "--log-every", "5", "--eval-generate", "0", flag, value));
        Assert.True(r.Rc == 0, r.Err);
        var losses = File.ReadLines(Path.Combine(outDir, TrainLoop.MetricsFile))
            .Select(l => JsonDocument.Parse(l).RootElement)
            .Where(e => e.TryGetProperty("loss", out _))
            .Select(e => e.GetProperty("loss").GetDouble()).ToList();
        Assert.True(losses.Count >= 2, $"metrics: {losses.Count} train losses");
        Assert.True(losses[^1] < 0.9 * losses[0], $"{flag} {value}: {string.Join(", ", losses)}");
    }
}
