using ResLora.Cli;

namespace ResLora.Tests.Cli;

/// <summary>End to end through the CLI: `demo --quick` pre-trains, fine-tunes, compares, merges and generates.</summary>
public sealed class DemoQuickTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-demo-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void DemoQuick_ProducesTheTable_ReportPlot_AndAMergedModel()
    {
        string outDir = Path.Combine(_dir, "out");
        int rc = CliApp.Run(new[] { "demo", "--quick", "--out", outDir, "--cache", Path.Combine(_dir, "cache"), "--threads", "1" });
        Assert.Equal(0, rc);
        string report = File.ReadAllText(Path.Combine(outDir, "report.md"));
        Assert.Contains("| lora |", report);
        Assert.True(new FileInfo(Path.Combine(outDir, "loss.png")).Length > 1000);
        Assert.True(File.Exists(Path.Combine(outDir, "merged", "model.safetensors")));
        Assert.True(File.Exists(Path.Combine(outDir, "merged", "tokenizer.json")));
        Assert.True(File.Exists(Path.Combine(outDir, "runs", "lora", "lr3e-3_alpha16", "adapter_model.safetensors")));
        var results = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "results.json")));
        foreach (var row in results.RootElement.EnumerateArray())
            Assert.True(row.GetProperty("merge_max_abs_diff").GetDouble() < 1e-3, row.ToString());
    }
}
