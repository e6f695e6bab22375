using ResLora.Tests.Infrastructure;

namespace ResLora.Tests.Cli;

/// <summary>A hub id given as --model and a folder given as --data: one-line errors that say what is wrong and the fix.</summary>
[Collection("console")]
public sealed class InputPathsCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-paths-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Theory]
    [InlineData("inspect")]
    [InlineData("tokenize")]
    public void HubIdAsModel_SaysNotFound_NeverDownloads_AndHowToDownload(string verb)
    {
        Assert.False(Directory.Exists("TinyLlama/TinyLlama-1.1B-Chat-v1.0")); // relative to the test's working directory
        {
            var args = verb == "tokenize"
                ? new[] { verb, "--model", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "--text", "hi" }
                : new[] { verb, "--model", "TinyLlama/TinyLlama-1.1B-Chat-v1.0" };
            var (rc, _, err) = CliHarness.Run(args);
            Assert.Equal(2, rc);
            Assert.Contains("--model TinyLlama/TinyLlama-1.1B-Chat-v1.0: no such folder", err);
            Assert.Contains("never downloads", err);
            Assert.Contains("huggingface-cli download TinyLlama/TinyLlama-1.1B-Chat-v1.0 --local-dir DIR", err);
            Assert.Contains("--model DIR", err);
            Assert.Single(err.Trim().Split('\n'));
        }
    }

    [Fact]
    public void MissingLocalModelFolder_GetsNoHubHint()
    {
        var (rc, _, err) = CliHarness.Run("inspect", "--model", Path.Combine(_dir, "nope"));
        Assert.Equal(2, rc);
        Assert.Contains("no such folder", err);
        Assert.DoesNotContain("huggingface-cli", err);
    }

    [Fact]
    public void DirectoryAsData_SaysItIsADirectory_AndAFileIsExpected()
    {
        string model = CliHarness.ModelFolder(Path.Combine(_dir, "model"));
        string dataDir = Directory.CreateDirectory(Path.Combine(_dir, "data")).FullName;
        var (rc, _, err) = CliHarness.Run("tokenize", "--model", model, "--data", dataDir);
        Assert.Equal(2, rc);
        Assert.Contains($"{dataDir}: is a directory", err);
        Assert.Contains("JSONL", err);
        Assert.DoesNotContain("not found", err);

        var train = CliHarness.Run("train", "--model", model, "--data", dataDir, "--out", Path.Combine(_dir, "out"), "--steps", "1");
        Assert.Equal(2, train.Rc);
        Assert.Contains("is a directory", train.Err);
    }

    [Fact]
    public void DirectoryAsData_ForClassification_SaysItIsADirectory()
    {
        var (model, _, _) = TinyEncoders.WriteFolder(Path.Combine(_dir, "bert"));
        string dataDir = Directory.CreateDirectory(Path.Combine(_dir, "data")).FullName;
        var (rc, _, err) = CliHarness.Run("train", "--model", model, "--task", "classify", "--data", dataDir, "--out", Path.Combine(_dir, "out"), "--steps", "1");
        Assert.Equal(2, rc);
        Assert.Contains("is a directory", err);
        Assert.Contains(".tsv", err);
    }
}
