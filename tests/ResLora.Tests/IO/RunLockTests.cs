using ResLora.Adapters;
using ResLora.IO;
using ResLora.Pipelines;

namespace ResLora.Tests.IO;

/// <summary>One run per folder: a second run on a locked --out is refused at once, naming the holder.</summary>
public sealed class RunLockTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-lock-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Acquire_WhileHeld_IsRefusedNamingTheHolder_AndFreeAgainAfterwards()
    {
        string outDir = Path.Combine(_dir, "run");
        using (RunLock.Acquire(outDir))
        {
            var e = Assert.Throws<UserInputException>(() => RunLock.Acquire(outDir));
            Assert.Contains("is in use by another run", e.Message);
            Assert.Contains($"pid {Environment.ProcessId}", e.Message);
        }
        Assert.False(Directory.Exists(outDir)); // nothing left behind: the folder the lock created is gone again
        using (RunLock.Acquire(outDir)) { }
    }

    [Fact]
    public void Train_IntoALockedFolder_IsRefusedBeforeLoadingAnything()
    {
        string outDir = Path.Combine(_dir, "run");
        string data = Path.Combine(_dir, "d.jsonl");
        File.WriteAllText(data, "{\"text\": \"hello\"}\n");
        using var held = RunLock.Acquire(outDir);
        var e = Assert.Throws<UserInputException>(() => FineTuning.Run(new FineTuneRequest
        {
            ModelDir = Path.Combine(_dir, "no-model-needed"),
            DataPath = data,
            Method = new MethodSpec { Method = "lora" },
            OutDir = outDir,
        }));
        Assert.Contains("is in use by another run", e.Message);
    }
}
