using ResLora.Adapters;
using ResLora.Training;
using static ResLora.Tests.Infrastructure.CliHarness;

namespace ResLora.Tests.Pipelines;

/// <summary>What train does with the --out folder it is given: never overwrites silently, works in ".", leaves no debris.</summary>
[Collection("console")]
public sealed class OutFolderTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-out-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string[] Train(string model, string data, string outDir, params string[] more) =>
        new[] { "train", "--model", model, "--data", data, "--steps", "2", "--batch-size", "4", "--eval-fraction", "0", "--out", outDir }.Concat(Templates).Concat(more).ToArray();

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
}
