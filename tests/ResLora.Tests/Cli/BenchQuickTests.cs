using ResLora.Cli;

namespace ResLora.Tests.Cli;

/// <summary>`bench --quick` runs end to end and writes its machine-readable results (speed is never asserted).</summary>
[Collection("console")]
public sealed class BenchQuickTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-bench-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void BenchQuick_WritesJsonAndMarkdown_WithEveryContender()
    {
        var (so, se) = (Console.Out, Console.Error);
        Console.SetOut(TextWriter.Null);
        Console.SetError(TextWriter.Null);
        int rc;
        try
        {
            rc = CliApp.Run(new[] { "bench", "--quick", "--out", _dir, "--methods", "lora,reslora-bs,adalora,full" });
        }
        finally
        {
            Console.SetOut(so);
            Console.SetError(se);
        }
        Assert.Equal(0, rc);
        string md = File.ReadAllText(Path.Combine(_dir, "bench.md"));
        foreach (var m in new[] { "| lora |", "| reslora-bs |", "| adalora |", "| full |", "| lora merged |" }) Assert.Contains(m, md);
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, "bench.json")));
        Assert.True(doc.RootElement.GetProperty("matmul_ceiling_gflops").GetDouble() > 0);
    }

    [Fact]
    public void BenchAdaptersQuick_WritesEveryServingMode()
    {
        var (so, se) = (Console.Out, Console.Error);
        Console.SetOut(TextWriter.Null);
        Console.SetError(TextWriter.Null);
        int rc;
        try
        {
            rc = CliApp.Run(new[] { "bench", "adapters", "--quick", "--batch", "8", "--out", _dir });
        }
        finally
        {
            Console.SetOut(so);
            Console.SetError(se);
        }
        Assert.Equal(0, rc);
        string md = File.ReadAllText(Path.Combine(_dir, "adapters.md"));
        foreach (var m in new[] { "| mixed batch |", "| per adapter |", "| one at a time |", "| base batch |" }) Assert.Contains(m, md);
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, "adapters.json")));
        Assert.All(doc.RootElement.GetProperty("results").EnumerateArray(), r => Assert.True(r.GetProperty("TokensPerSecond").GetDouble() > 0));
    }
}
