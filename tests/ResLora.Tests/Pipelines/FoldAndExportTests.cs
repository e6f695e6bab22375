using ResLora.Adapters;
using ResLora.Demo;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Pipelines;

/// <summary>
/// Merges that keep the model and exports as plain LoRA, end to end on a tiny model trained here: the ls fold against
/// the norm-window merge on held-out text, distillation, bs exported exactly, SVD exports, the refusals.
/// </summary>
public sealed class FoldAndExportTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-fold-").FullName;
    private static readonly RuntimeOptions Runtime = new();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string ModelFolder()
    {
        string dir = Path.Combine(_dir, "model");
        if (Directory.Exists(dir)) return dir;
        var c = TinyModels.Config(vocab: DemoTokenizerFiles.VocabSize);
        using var m = TinyModels.Build(c, seed: 2);
        ResLora.Models.ModelFolder.Save(dir, c, m.BaseParameters().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)));
        DemoTokenizerFiles.Write(dir);
        return dir;
    }

    /// <summary>Trains an adapter for a few steps with a high learning rate (so every factor moves) and returns its folder.</summary>
    private string Train(string name, MethodSpec method, int steps = 30)
    {
        var (train, _) = DemoCorpus.FinetuneTask(160, 1, 5);
        string data = Path.Combine(_dir, "train.jsonl");
        if (!File.Exists(data)) File.WriteAllLines(data, train.Select(e => System.Text.Json.JsonSerializer.Serialize(new { prompt = e.Prompt, completion = " " + e.Completion })));
        string outDir = Path.Combine(_dir, name);
        FineTuning.Run(new FineTuneRequest
        {
            ModelDir = ModelFolder(),
            DataPath = data,
            EvalFraction = 0.25,
            Method = method with { Targets = ModuleTargets.AllLinear, Rank = 4, Alpha = 8 },
            OutDir = outDir,
            SeqLen = 64,
            Train = new TrainOptions { Steps = steps, BatchSize = 8, LearningRate = 2e-2, LogEvery = 10, SaveEvery = 0, EvalGenerateExamples = 0, Seed = 3 },
        });
        return outDir;
    }

    private static Tensor Probe() => torch.tensor(new long[] { 1, 5, 9, 13, 17, 21, 25 }).unsqueeze(0);

    [Theory]
    [InlineData("reslora-is")]
    [InlineData("reslora-ms")]
    public void MergeLs_OnHeldOutText_IsCloserThanTheNormWindowMerge(string method)
    {
        string adapter = Train(method, new MethodSpec { Method = method });
        using var probe = Probe();
        var bi = MergePipeline.MergeToFolder(ModelFolder(), adapter, Path.Combine(_dir, "bi"), Runtime, probe, new MergeOptions { MergeKind = "bi" });
        var ls = MergePipeline.MergeToFolder(ModelFolder(), adapter, Path.Combine(_dir, "ls"), Runtime, probe, new MergeOptions { MergeKind = "ls" });
        Assert.NotNull(bi.HeldOut);
        Assert.NotNull(ls.HeldOut);
        Assert.Contains("evaluation split", ls.HeldOutSource); // held-out text is not the calibration text
        Assert.Contains("training split", ls.CalibrationSource);
        Assert.True(ls.HeldOut!.MeanKl < bi.HeldOut!.MeanKl, $"ls KL {ls.HeldOut.MeanKl} vs bi {bi.HeldOut.MeanKl}");
        Assert.True(ls.HeldOut.MeanKl > 0, "an approximate fold on real inputs is not exact");
        Assert.True(File.Exists(Path.Combine(_dir, "ls", MergeReport.FileName)));

        // The merged folder is a plain model that gives the reported held-out numbers.
        using var reference = ModelSessions.LoadWithAdapter(ModelFolder(), adapter, Runtime);
        using var merged = ModelSessions.LoadBase(Path.Combine(_dir, "ls"), Runtime);
        var texts = FoldingTexts.Resolve(adapter, new FoldingTextOptions(), needCalibration: false);
        var again = ModelComparison.Compare(reference, merged, Tokenizers(), texts.HeldOut);
        Assert.Equal(ls.HeldOut.MeanKl, again.MeanKl, 6);
    }

    private ResLora.Text.ITextTokenizer Tokenizers() => ResLora.Text.TokenizerLoader.Load(ModelFolder());

    [Fact]
    public void Distillation_FromTheLsFold_LowersHeldOutKl()
    {
        string adapter = Train("is", new MethodSpec { Method = "reslora-is" });
        using var probe = Probe();
        var ls = MergePipeline.MergeToFolder(ModelFolder(), adapter, Path.Combine(_dir, "ls"), Runtime, probe, new MergeOptions { MergeKind = "ls" });
        var distilled = MergePipeline.MergeToFolder(ModelFolder(), adapter, Path.Combine(_dir, "ls-d"), Runtime, probe, new MergeOptions { MergeKind = "ls", DistillSteps = 40 });
        var fold = distilled.Candidates.Single().Fold!;
        Assert.Equal("ls+distill", fold.Kind);
        Assert.True(fold.DistillLastKl < fold.DistillFirstKl, $"calibration KL {fold.DistillFirstKl} → {fold.DistillLastKl}");
        Assert.True(distilled.HeldOut!.MeanKl < ls.HeldOut!.MeanKl, $"held-out KL: ls {ls.HeldOut.MeanKl}, ls+distill {distilled.HeldOut.MeanKl}");
    }

    [Fact]
    public void MergeAuto_ChoosesTheCandidateWithTheSmallestHeldOutKl()
    {
        string adapter = Train("ms", new MethodSpec { Method = "reslora-ms" });
        using var probe = Probe();
        var auto = MergePipeline.MergeToFolder(ModelFolder(), adapter, Path.Combine(_dir, "auto"), Runtime, probe, new MergeOptions { MergeKind = "auto" });
        Assert.Equal(new[] { "bi", "a", "ls" }, auto.Candidates.Select(c => c.Label));
        var best = auto.Candidates.MinBy(c => c.HeldOut!.MeanKl)!;
        Assert.Contains($"(merge {best.Label})", auto.Method);
        Assert.Equal(best.HeldOut!.MeanKl, auto.HeldOut!.MeanKl);
    }

    [Fact]
    public void ExportBlockShortcut_AsConcatenatedLora_IsExact()
    {
        string adapter = Train("bs", new MethodSpec { Method = "reslora-bs" }, steps: 20);
        var report = ExportPipeline.AsLora(ModelFolder(), adapter, Path.Combine(_dir, "bs-lora"), Runtime, new ExportOptions());
        Assert.Equal(("exact", "concat"), (report.Mode, report.Route));
        Assert.True(report.HeldOut!.MeanKl < 1e-8, $"KL {report.HeldOut.MeanKl}");
        Assert.True(report.HeldOut.MaxAbsLogitDiff < 1e-3);
        Assert.Equal(1.0, report.HeldOut.GreedyAgreement);
        var (cfg, _) = AdapterConfigJson.Parse(File.ReadAllText(Path.Combine(_dir, "bs-lora", AdapterFolder.ConfigFileName)));
        var lora = Assert.IsType<LoraConfig>(cfg);
        Assert.False(lora.UseDora);
        // Block n's pair has rank r·(number of blocks it sums): 4 at a chain start, up to 4 · layers further on.
        Assert.Equal(8, lora.R);
    }

    [Fact]
    public void ExportLs_ReloadsAsLora_AndGivesTheReportedNumbers()
    {
        string adapter = Train("is", new MethodSpec { Method = "reslora-is" });
        string outDir = Path.Combine(_dir, "is-lora");
        var report = ExportPipeline.AsLora(ModelFolder(), adapter, outDir, Runtime, new ExportOptions());
        Assert.Equal(("approximate", "ls"), (report.Mode, report.Route));
        using var reference = ModelSessions.LoadWithAdapter(ModelFolder(), adapter, Runtime);
        using var exported = ModelSessions.LoadWithAdapter(ModelFolder(), outDir, Runtime);
        Assert.All(AdapterModel.FindAdapters(exported), a => Assert.IsType<LoraLinear>(a.Adapter));
        var texts = FoldingTexts.Resolve(adapter, new FoldingTextOptions(), needCalibration: false);
        var again = ModelComparison.Compare(reference, exported, Tokenizers(), texts.HeldOut);
        Assert.Equal(report.HeldOut!.MeanKl, again.MeanKl, 6);
        Assert.Equal(report.HeldOut.GreedyAgreement, again.GreedyAgreement);
    }

    [Theory]
    [InlineData("dora")]
    [InlineData("loha")]
    public void ExportSvd_AtFullRank_KeepsTheModel(string method)
    {
        string adapter = Train(method, new MethodSpec { Method = method }, steps: 15);
        var report = ExportPipeline.AsLora(ModelFolder(), adapter, Path.Combine(_dir, method + "-lora"), Runtime, new ExportOptions { Rank = 64 });
        Assert.Equal(("approximate", "svd"), (report.Mode, report.Route));
        Assert.True(report.MinEnergyKept > 0.999999);
        Assert.True(report.HeldOut!.MeanKl < 1e-7, $"KL {report.HeldOut.MeanKl}");
    }

    [Fact]
    public void BadRequests_AreOneLineErrorsNamingTheFix()
    {
        using var probe = Probe();
        string lora = Train("lora", new MethodSpec { Method = "lora" }, steps: 2);
        Assert.Contains("ResLoRA", Assert.Throws<UserInputException>(() => MergePipeline.MergeToFolder(ModelFolder(), lora, Path.Combine(_dir, "x"), Runtime, probe, new MergeOptions { MergeKind = "ls" })).Message);
        // "auto" is the method's best merge: for LoRA, its only one.
        Assert.Equal("lora", MergePipeline.Measure(ModelFolder(), lora, Runtime, probe, new MergeOptions { MergeKind = "auto" }).Method);
        string bs = Train("bs", new MethodSpec { Method = "reslora-bs" }, steps: 2);
        Assert.Contains("nothing to fit", Assert.Throws<UserInputException>(() => MergePipeline.MergeToFolder(ModelFolder(), bs, Path.Combine(_dir, "y"), Runtime, probe, new MergeOptions { MergeKind = "ls" })).Message);
        string rolora = Train("rolora", new MethodSpec { Method = "rolora" }, steps: 2);
        Assert.Contains("merged model", Assert.Throws<UserInputException>(() => ExportPipeline.AsLora(Path.Combine(rolora, RoLoraMethod.RotatedBaseFolder), rolora, Path.Combine(_dir, "z"), Runtime, new ExportOptions())).Message);
        // Calibration text shorter than the rank.
        string tiny = Path.Combine(_dir, "tiny.jsonl");
        File.WriteAllText(tiny, "{\"text\": \"a\"}\n");
        string isAdapter = Train("is", new MethodSpec { Method = "reslora-is" }, steps: 2);
        Assert.Contains("fewer than the rank", Assert.Throws<UserInputException>(() => MergePipeline.MergeToFolder(ModelFolder(), isAdapter, Path.Combine(_dir, "w"), Runtime, probe, new MergeOptions { MergeKind = "ls", Texts = new FoldingTextOptions { CalibrationPath = tiny } })).Message);
        // No record and no --calib.
        File.Delete(Path.Combine(isAdapter, TrainingDataRecord.FileName));
        Assert.Contains("--calib FILE", Assert.Throws<UserInputException>(() => MergePipeline.MergeToFolder(ModelFolder(), isAdapter, Path.Combine(_dir, "v"), Runtime, probe, new MergeOptions { MergeKind = "ls" })).Message);
    }
}
