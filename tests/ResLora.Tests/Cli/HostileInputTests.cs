using static ResLora.Tests.Infrastructure.CliHarness;

namespace ResLora.Tests.Cli;

/// <summary>Inputs a hostile but fair user tries: devices as files, unwritable outputs. Each is one line naming the path.</summary>
[Collection("console")]
public sealed class HostileInputTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-hostile-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Theory]
    [InlineData("model.safetensors")]
    [InlineData("config.json")]
    [InlineData("tokenizer.json")]
    public void DevZeroAsAModelFile_IsOneLineNamingIt(string file)
    {
        if (!File.Exists("/dev/zero")) return;
        string model = ModelFolder(Path.Combine(_dir, "model"));
        string path = Path.Combine(model, file);
        File.Delete(path);
        File.CreateSymbolicLink(path, "/dev/zero"); // config.json and tokenizer.json were read whole: out of memory
        var r = Run("generate", "--model", model, "--prompt", "hi", "--max-new-tokens", "2");
        Assert.Equal(2, r.Rc);
        Assert.StartsWith($"error: {path}: ", r.Err);
        Assert.Single(r.Err.Trim().Split('\n'));
    }

    [Fact]
    public void MergeIntoAnUnwritablePlace_IsRefusedBeforeMergingNamingTheFlag()
    {
        if (!Directory.Exists("/proc/self")) return;
        string model = ModelFolder(Path.Combine(_dir, "model"));
        var r = Run("merge", "--model", model, "--adapter", Path.Combine(_dir, "no-adapter-needed"), "--out", "/proc/foo");
        Assert.Equal(2, r.Rc);
        Assert.StartsWith("error: --out /proc/foo: cannot write there", r.Err);
        Assert.Single(r.Err.Trim().Split('\n'));
    }

    [Fact]
    public void Version_PrintsTheLibtorchVersion()
    {
        var r = Run("version");
        Assert.True(r.Rc == 0, r.Err);
        Assert.Matches(@"(?m)^TorchSharp \d+\.\d+\.\d+", r.Out);
        Assert.Matches(@"(?m)^libtorch \d+\.\d+\.\d+", r.Out);
    }
}
