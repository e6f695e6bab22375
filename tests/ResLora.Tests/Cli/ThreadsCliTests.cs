using ResLora.Tests.Infrastructure;

namespace ResLora.Tests.Cli;

/// <summary><c>reslora train</c> says in its first line which thread count it chose and why (stderr when redirected).</summary>
[Collection("console")]
public sealed class ThreadsCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-threads-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private (int Rc, string Out, string Err) Train(params string[] extra)
    {
        string model = Path.Combine(_dir, "model");
        if (!Directory.Exists(model)) CliHarness.ModelFolder(model);
        string data = Path.Combine(_dir, "train.jsonl");
        if (!File.Exists(data)) CliHarness.Data(data, 8, 1);
        return CliHarness.Run(new[] { "train", "--model", model, "--data", data, "--steps", "1", "--batch-size", "4", "--eval-fraction", "0", "--eval-generate", "0", "--out", Path.Combine(_dir, "out"), "--overwrite" }
            .Concat(CliHarness.Templates).Concat(extra).ToArray());
    }

    [Fact]
    public void Train_WithoutThreads_TakesResloraThreadsAndSaysSoFirst()
    {
        // The test setup sets RESLORA_THREADS=1 (Infrastructure/TestSetup.cs), which stands in for the machine probe.
        var (rc, _, err) = Train();
        Assert.True(rc == 0, err);
        Assert.StartsWith("[train lora] threads: 1 (RESLORA_THREADS=1; --threads N to override)", err, StringComparison.Ordinal);
    }

    [Fact]
    public void Train_ExplicitThreads_WinsOverResloraThreads()
    {
        var (rc, _, err) = Train("--threads", "1");
        Assert.True(rc == 0, err);
        Assert.StartsWith("[train lora] threads: 1 (--threads)", err, StringComparison.Ordinal);
    }

    [Fact]
    public void Train_NegativeThreads_IsOneLineNamingTheFlag()
    {
        var (rc, _, err) = Train("--threads", "-2");
        Assert.NotEqual(0, rc);
        Assert.Contains("--threads must be 0 (libtorch's default) or more, got -2", err, StringComparison.Ordinal);
    }

    [Fact]
    public void Train_RefusedBeforeItStarts_PrintsOnlyTheError()
    {
        // The thread line comes when the run starts, so a refused run's one-line error stays the whole output.
        var (rc, _, err) = Train("--targets", "q_prj");
        Assert.Equal(2, rc);
        Assert.StartsWith("error: ", err, StringComparison.Ordinal);
        Assert.DoesNotContain("threads:", err, StringComparison.Ordinal);
    }
}
