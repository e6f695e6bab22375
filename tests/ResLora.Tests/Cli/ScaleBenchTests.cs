using ResLora.Bench;
using ResLora.Models;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.Cli;

/// <summary>One configuration of <c>bench scale</c> runs end to end on a tiny folder (speed is never asserted).</summary>
public sealed class ScaleBenchTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-scale-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Run_PackedBaseWithCheckpointing_TrainsAndReportsMemory()
    {
        var c = TinyModels.Config();
        using (var m = TinyModels.Build(c))
            ModelFolder.Save(_dir, c, m.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)));
        var r = ScaleBench.Run(_dir, new ScaleConfig { Label = "8-bit", BaseBits = "8", GradCheckpoint = true, Batch = 2, SeqLen = 16, Steps = 1, GenTokens = 0 });
        Assert.True(double.IsFinite(r.FirstLoss) && double.IsFinite(r.LastLoss));
        Assert.True(r.TokensPerSecond > 0);
        Assert.Equal(ModelPresets.ParameterCount(c), r.Parameters);
        // The kernel updates VmHWM lazily (per-CPU RSS counters), so it may trail an earlier VmRSS reading by a little.
        const long Slack = 16L << 20;
        Assert.InRange(r.PeakRssAfterLoad, r.RssBeforeLoad - Slack, r.PeakRss);
    }
}

/// <summary><c>bench scale</c>'s own input checks, before any child process starts.</summary>
[Collection("console")]
public sealed class ScaleBenchCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-scale-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void MissingModelFolder_IsOneLineErrorNamingTheFlag()
    {
        string missing = Path.Combine(_dir, "nope");
        var (rc, _, err) = CliHarness.Run("bench", "scale", "--model", missing, "--quick");
        Assert.Equal(2, rc);
        Assert.Contains($"--model {missing}: no such folder", err);
        Assert.DoesNotContain("internal error", err);
        (rc, _, err) = CliHarness.Run("bench", "scale", "--model", _dir, "--quick");
        Assert.Equal(2, rc);
        Assert.Contains("no config.json in this folder", err);
    }
}
