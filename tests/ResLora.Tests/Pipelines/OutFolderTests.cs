using ResLora.Adapters;
using ResLora.Training;
using ResLora.Tests.Infrastructure;
using static ResLora.Tests.Infrastructure.CliHarness;

namespace ResLora.Tests.Pipelines;

/// <summary>What train does with the --out folder it is given: never overwrites silently, works in ".", leaves no debris.</summary>
[Collection("console")]
public sealed class OutFolderTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-out-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string[] Train(string model, string data, string outDir, params string[] more) =>
        new[] { "train", "--model", model, "--data", data, "--steps", "2", "--batch-size", "4", "--eval-fraction", "0", "--out", outDir }.Concat(CliHarness.Templates).Concat(more).ToArray();

    [Fact]
    public void Resume_WithAnotherAlphaOrDropout_IsRefusedNamingTheField()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "d.jsonl"), 16, 1);
        string outDir = Path.Combine(_dir, "run");
        Assert.Equal(0, Run(Train(model, data, outDir, "--alpha", "16")).Rc);
        var alpha = Run(Train(model, data, outDir, "--alpha", "32", "--resume"));
        Assert.Equal(2, alpha.Rc);
        Assert.Contains("this resume changes adapter_config.json lora_alpha 32 (the checkpoint was trained with 16)", alpha.Err);
        var dropout = Run(Train(model, data, outDir, "--alpha", "16", "--dropout", "0.1", "--resume"));
        Assert.Equal(2, dropout.Rc);
        Assert.Contains("adapter_config.json lora_dropout 0.1 (the checkpoint was trained with 0)", dropout.Err);
        var same = Run(Train(model, data, outDir, "--alpha", "16", "--resume"));
        Assert.True(same.Rc == 0, same.Err);
    }

    [Fact]
    public void Train_IntoAnAdapterFolderWithoutARun_IsRefusedUnlessOverwrite()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "d.jsonl"), 16, 1);
        // A downloaded PEFT adapter: config and weights, no checkpoint/.
        string peft = Path.Combine(_dir, "peft");
        Assert.Equal(0, Run(Train(model, data, peft)).Rc);
        Directory.Delete(Path.Combine(peft, TrainCheckpoint.FolderName), recursive: true);
        byte[] before = File.ReadAllBytes(Path.Combine(peft, AdapterFolder.WeightsFileName));

        var refused = Run(Train(model, data, peft, "--seed", "7"));
        Assert.Equal(2, refused.Rc);
        Assert.Contains($"--out {peft} holds an adapter (adapter_config.json) but no training run", refused.Err);
        Assert.Contains("--overwrite", refused.Err);
        Assert.Equal(before, File.ReadAllBytes(Path.Combine(peft, AdapterFolder.WeightsFileName)));

        var replaced = Run(Train(model, data, peft, "--seed", "7", "--overwrite"));
        Assert.True(replaced.Rc == 0, replaced.Err);
        Assert.NotEqual(before, File.ReadAllBytes(Path.Combine(peft, AdapterFolder.WeightsFileName)));

        // A finished run is continued only with --resume; --overwrite starts it again (a fresh checkpoint and metrics).
        Assert.Contains("--overwrite to start it again", Run(Train(model, data, peft)).Err);
        byte[] seven = File.ReadAllBytes(Path.Combine(peft, AdapterFolder.WeightsFileName));
        var again = Run(Train(model, data, peft, "--overwrite", "--seed", "9"));
        Assert.True(again.Rc == 0, again.Err);
        Assert.NotEqual(seven, File.ReadAllBytes(Path.Combine(peft, AdapterFolder.WeightsFileName)));
        Assert.Single(File.ReadAllLines(Path.Combine(peft, TrainLoop.MetricsFile)));
        Assert.Equal(2, Run(Train(model, data, peft, "--overwrite", "--resume")).Rc);
    }

    [Theory]
    [InlineData("metrics.jsonl")]
    [InlineData("loss.png")]
    [InlineData("train_summary.json")]
    [InlineData("reslora_data.json")]
    [InlineData("events.out.tfevents.1700000000.host.1.0")]
    [InlineData("adapter_model.safetensors")]
    public void Train_IntoAFolderHoldingAnEarlierRunsFile_IsRefusedUnlessOverwrite(string file)
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "d.jsonl"), 16, 1);
        string outDir = Path.Combine(_dir, "held");
        Directory.CreateDirectory(outDir);
        File.WriteAllText(Path.Combine(outDir, file), "keep");
        var refused = Run(Train(model, data, outDir));
        Assert.Equal(2, refused.Rc);
        // An adapter file keeps the message it had (a downloaded PEFT adapter); every other run file is named as such.
        Assert.StartsWith(file.StartsWith("adapter_") ? $"error: --out {outDir} holds an adapter ({file})" : $"error: --out {outDir} holds {file} from an earlier run", refused.Err);
        Assert.Contains("--overwrite", refused.Err);
        Assert.Equal("keep", File.ReadAllText(Path.Combine(outDir, file)));
        if (file != "metrics.jsonl") return;
        var replaced = Run(Train(model, data, outDir, "--overwrite"));
        Assert.True(replaced.Rc == 0, replaced.Err);
    }

    [Fact]
    public void ClassifyTrain_IntoAFolderHoldingAnEarlierRunsFile_IsRefusedUnlessOverwrite()
    {
        var (model, _, _) = ResLora.Tests.Infrastructure.TinyEncoders.WriteFolder(Path.Combine(_dir, "bert"), seed: 4);
        string data = Path.Combine(_dir, "cls.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 8).Select(i => $"{{\"text\":\"the movie was {(i % 2 == 0 ? "good" : "bad")} .\",\"label\":{i % 2}}}"));
        string outDir = Path.Combine(_dir, "cls-held");
        Directory.CreateDirectory(outDir);
        File.WriteAllText(Path.Combine(outDir, "metrics.jsonl"), "keep");
        var args = new[] { "train", "--task", "classify", "--model", model, "--data", data, "--steps", "1", "--batch-size", "4", "--eval-fraction", "0", "--out", outDir };
        var refused = Run(args);
        Assert.Equal(2, refused.Rc);
        Assert.StartsWith($"error: --out {outDir} holds metrics.jsonl", refused.Err);
        var inside = Run(args.Select(a => a == outDir ? Path.Combine(model, "run") : a).ToArray());
        Assert.Equal(2, inside.Rc);
        Assert.StartsWith($"error: --out {Path.Combine(model, "run")} is inside the model folder", inside.Err);
    }

    [Fact]
    public void Train_OutAtTheRootInOrInsideTheModelFolderOrAFile_IsRefusedNamingOut()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "d.jsonl"), 16, 1);
        // The root is checked before the data is read (a missing data file here keeps the old code from writing into /).
        var root = Run(Train(model, Path.Combine(_dir, "missing.jsonl"), "/"));
        Assert.Equal(2, root.Rc);
        Assert.StartsWith("error: --out /: cannot write into a filesystem root", root.Err);

        var same = Run(Train(model, data, model));
        Assert.Equal(2, same.Rc);
        Assert.StartsWith($"error: --out {model} is the model folder", same.Err);
        string inside = Path.Combine(model, "run");
        var under = Run(Train(model, data, inside));
        Assert.Equal(2, under.Rc);
        Assert.StartsWith($"error: --out {inside} is inside the model folder", under.Err);
        Assert.False(Directory.Exists(inside));

        string file = Path.Combine(_dir, "a-file");
        File.WriteAllText(file, "x");
        var onFile = Run(Train(model, data, file));
        Assert.Equal(2, onFile.Rc);
        Assert.StartsWith($"error: --out {file} is a file, not a folder", onFile.Err);
    }

    [Fact]
    public void Train_IntoAFolderAnotherRunHolds_SaysItIsInUse_EvenWithACheckpoint()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "d.jsonl"), 16, 1);
        string outDir = Path.Combine(_dir, "busy");
        Assert.Equal(0, Run(Train(model, data, outDir)).Rc);
        using var held = ResLora.IO.RunLock.Acquire(outDir); // another run, still going
        var r = Run(Train(model, data, outDir));
        Assert.Equal(2, r.Rc);
        Assert.StartsWith($"error: --out {outDir} is in use by another run", r.Err);
        Assert.Contains("choose another --out folder", r.Err);
    }

    [Fact]
    public void Train_WithOutDot_WritesIntoTheWorkingFolder_AndResumesThere()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "d.jsonl"), 16, 1);
        string work = Directory.CreateDirectory(Path.Combine(_dir, "work")).FullName;
        File.WriteAllText(Path.Combine(work, "notes.txt"), "the user's own file");
        string cwd = Environment.CurrentDirectory;
        try
        {
            Environment.CurrentDirectory = work;
            var r = Run(Train(model, data, "."));
            Assert.True(r.Rc == 0, r.Err);
            foreach (var f in new[] { AdapterFolder.ConfigFileName, AdapterFolder.WeightsFileName, TrainLoop.MetricsFile, TrainLoop.SummaryFile })
                Assert.True(File.Exists(Path.Combine(work, f)), f);
            Assert.NotNull(TrainCheckpoint.Find(work));
            var resumed = Run(Train(model, data, ".", "--resume"));
            Assert.True(resumed.Rc == 0, resumed.Err);
        }
        finally
        {
            Environment.CurrentDirectory = cwd;
        }
        Assert.Equal("the user's own file", File.ReadAllText(Path.Combine(work, "notes.txt")));
    }

    [Theory]
    [InlineData("--targets", "q_prj")] // found after the model is loaded
    [InlineData("--seq-len", "4096")] // longer than the model's max_position_embeddings: known after loading
    [InlineData("--lr", "-1")]
    [InlineData("--eval-fraction", "1.5")]
    [InlineData("--eval-fraction", "-0.1")] // was read as 0 while 1.5 was refused
    [InlineData("--data", "missing.jsonl")]
    [InlineData("--model", "no-model")]
    public void Train_WithABadFlagOrData_LeavesNoOutFolder(string flag, string value)
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "d.jsonl"), 16, 1), outDir = Path.Combine(_dir, "new", "run");
        var args = Train(model, data, outDir).ToList();
        int at = args.IndexOf(flag);
        if (flag is "--data" or "--model") value = Path.Combine(_dir, value);
        if (at >= 0) args[at + 1] = value;
        else args.AddRange(new[] { flag, value });
        var r = Run(args.ToArray());
        Assert.True(r.Rc == 2, r.Err);
        Assert.False(Directory.Exists(outDir), $"{flag} {value} left {outDir} behind");
    }

    [Theory]
    [InlineData(".checkpoint.tmp-0123456789abcdef0123456789abcdef", true)]
    [InlineData(".adapter_model.safetensors.tmp-0123456789abcdef0123456789abcdef", true)]
    [InlineData(".adapter_config.json.old-0123456789abcdef0123456789abcdef", true)]
    [InlineData(".loss.tmp-0123456789abcdef0123456789abcdef.png", true)]
    [InlineData(".adapter_model.safetensors.89abcdef.tmp", true)]
    [InlineData(".write-test-0123456789abcdef0123456789abcdef", true)]
    [InlineData(".notes.tmp", false)]
    [InlineData("adapter_model.safetensors.tmp-0123456789abcdef0123456789abcdef", false)]
    [InlineData(".data.tmp-123", false)]
    [InlineData(".reslora.lock", false)]
    [InlineData("checkpoint.prev", false)]
    public void IsLeftover_MatchesOnlyTheAtomicWritersTemporaryNames(string name, bool leftover) =>
        Assert.Equal(leftover, ResLora.IO.AtomicFile.IsLeftover(name));

    [Fact]
    public void Resume_RemovesTheLeftoversOfAKilledRun_AndNothingElse()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "d.jsonl"), 16, 1), outDir = Path.Combine(_dir, "run");
        Assert.Equal(0, Run(Train(model, data, outDir)).Rc);
        string guid = Guid.NewGuid().ToString("N");
        string[] leftovers = { $".checkpoint.tmp-{guid}", $".adapter_model.safetensors.tmp-{guid}", $".adapter_config.json.old-{guid}", $".loss.tmp-{guid}.png", ".adapter_model.safetensors.0badf00d.tmp" };
        Directory.CreateDirectory(Path.Combine(outDir, leftovers[0], "adapter"));
        File.WriteAllText(Path.Combine(outDir, leftovers[0], "adapter", "x"), "half a checkpoint");
        foreach (var f in leftovers.Skip(1)) File.WriteAllText(Path.Combine(outDir, f), "torn");
        File.WriteAllText(Path.Combine(outDir, ".notes.tmp"), "the user's");
        var r = Run(Train(model, data, outDir, "--resume"));
        Assert.True(r.Rc == 0, r.Err);
        foreach (var f in leftovers) Assert.False(Path.Exists(Path.Combine(outDir, f)), f);
        Assert.True(File.Exists(Path.Combine(outDir, ".notes.tmp")));
        Assert.DoesNotContain(Directory.EnumerateFileSystemEntries(outDir), p => ResLora.IO.AtomicFile.IsLeftover(Path.GetFileName(p)));
    }
}
