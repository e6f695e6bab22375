using System.Text.Json;
using ResLora.Adapters;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Tests.Pipelines;

namespace ResLora.Tests.Cli;

/// <summary>
/// export --as lora names the fold it actually used, and calls an export "exact" only when it is (issue 27: a ResLoRA-is
/// export printed a stray "ls", "folded ... with the 'bi' merge", and wrote mode "exact" beside 83.6 % agreement).
/// </summary>
[Collection("console")]
public sealed class ExportModeCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-exportmode-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private (string Model, string Text) Prepare()
    {
        string model = CliHarness.ModelFolder(Path.Combine(_dir, "model"));
        string text = Path.Combine(_dir, "text.jsonl");
        File.WriteAllLines(text, Enumerable.Range(0, 12).Select(i => JsonSerializer.Serialize(new { text = $"What is {i} plus {i + 3}? Answer: {2 * i + 3}." })));
        return (model, text);
    }

    [Fact]
    public void ExportResLoraIs_NamesTheLeastSquaresFold_AndIsApproximate()
    {
        var (model, text) = Prepare();
        string adapter = Path.Combine(_dir, "is");
        MultiAdapterFixture.SaveTrainedLooking(model, adapter, new ResLoraConfig { R = 2, LoraAlpha = 4, Structure = "is", TargetModules = ModuleTargets.List("q_proj", "v_proj") }, 15, 0.3);
        string outDir = Path.Combine(_dir, "is-lora");
        var (rc, output, err) = CliHarness.Run("export", "--model", model, "--adapter", adapter, "--as", "lora", "--calib", text, "--heldout", text, "--out", outDir, "--threads", "1");
        Assert.True(rc == 0, err);
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.DoesNotContain("ls", lines); // no stray line
        Assert.Contains(lines, l => l.StartsWith("exported reslora as LoRA into", StringComparison.Ordinal) && l.Contains(": approximate (", StringComparison.Ordinal) && l.Contains("least-squares", StringComparison.Ordinal));
        Assert.DoesNotContain("with the 'bi' merge", output + err);
        Assert.Contains("least-squares", output);
        Assert.Contains("greedy agreement", output);

        using var exportReport = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, LoraExport.ReportFileName)));
        Assert.Equal("approximate", exportReport.RootElement.GetProperty("mode").GetString());
        Assert.Equal("ls", exportReport.RootElement.GetProperty("route").GetString());
        var held = exportReport.RootElement.GetProperty("held_out");
        Assert.True(held.GetProperty("greedy_agreement").GetDouble() is >= 0 and <= 1);
        Assert.True(held.GetProperty("mean_kl").GetDouble() >= 0);
        Assert.DoesNotContain(exportReport.RootElement.GetProperty("notes").EnumerateArray(), n => n.GetString()!.Contains("'bi' merge", StringComparison.Ordinal));

        using var heldReport = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, ExportReport.FileName)));
        Assert.Equal("approximate", heldReport.RootElement.GetProperty("mode").GetString());
        Assert.Equal("ls", heldReport.RootElement.GetProperty("route").GetString());
    }

    [Fact]
    public void ExportResLoraBs_IsExact()
    {
        var (model, text) = Prepare();
        string adapter = Path.Combine(_dir, "bs");
        MultiAdapterFixture.SaveTrainedLooking(model, adapter, new ResLoraConfig { R = 2, LoraAlpha = 4, Structure = "bs", PreNum = 1, TargetModules = ModuleTargets.List("q_proj", "v_proj") }, 16, 0.3);
        string outDir = Path.Combine(_dir, "bs-lora");
        var (rc, output, err) = CliHarness.Run("export", "--model", model, "--adapter", adapter, "--as", "lora", "--heldout", text, "--out", outDir, "--threads", "1");
        Assert.True(rc == 0, err);
        Assert.Contains(": exact (ResLoRA bs", output);
        using var exportReport = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, LoraExport.ReportFileName)));
        Assert.Equal("exact", exportReport.RootElement.GetProperty("mode").GetString());
        Assert.Equal("concat", exportReport.RootElement.GetProperty("route").GetString());
        Assert.DoesNotContain("merge", output);
    }
}
