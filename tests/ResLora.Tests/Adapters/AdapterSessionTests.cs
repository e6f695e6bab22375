using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.Adapters;

public sealed class AdapterSessionTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-session-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>A base folder and an adapter folder with non-zero B (as after training).</summary>
    private (string Model, string Adapter, ModelConfig Config) Prepare(bool dora)
    {
        var c = TinyModels.Config();
        string modelDir = Path.Combine(_dir, "model"), adapterDir = Path.Combine(_dir, "adapter");
        using (var m = TinyModels.Build(c, seed: 4))
            ModelFolder.Save(modelDir, c, m.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)));
        File.WriteAllText(Path.Combine(modelDir, "tokenizer.json"), "{}");
        var cfg = new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ModuleTargets.AllLinear, UseDora = dora };
        using var gen = new torch.Generator(5);
        using var model = ModelSessions.LoadBase(modelDir, new RuntimeOptions(), new AdapterPlan(cfg, gen));
        AdapterModel.OnBaseWeightsLoaded(model);
        using (torch.no_grad())
            foreach (var (name, p) in model.named_parameters())
                if (name.Contains("lora_B", StringComparison.Ordinal)) p.normal_(0, 0.2, gen);
        AdapterFolder.Save(adapterDir, cfg, model);
        return (modelDir, adapterDir, c);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void MergeToFolder_WritesAModelThatMatchesTheUnmergedAdapter(bool dora)
    {
        var (modelDir, adapterDir, c) = Prepare(dora);
        using var ids = TinyModels.RandomIds(2, 9, c.VocabSize, 8);
        torch.Tensor unmerged;
        using (var m = ModelSessions.LoadWithAdapter(modelDir, adapterDir, new RuntimeOptions()))
            unmerged = m.forward(ids).detach();
        using var baseModel = ModelSessions.LoadBase(modelDir, new RuntimeOptions());
        using var baseLogits = baseModel.forward(ids);
        Assert.True((unmerged - baseLogits).abs().max().item<float>() > 1e-2, "the adapter must change the output");

        string outDir = Path.Combine(_dir, "merged");
        var report = MergePipeline.MergeToFolder(modelDir, adapterDir, outDir, new RuntimeOptions(), ids);
        Assert.Equal(14, report.MergedModules);
        Assert.True(report.MaxAbsDiff < 1e-4, $"merged vs unmerged {report.MaxAbsDiff}");
        Assert.True(File.Exists(Path.Combine(outDir, "tokenizer.json")));
        using var merged = ModelSessions.LoadBase(outDir, new RuntimeOptions());
        using var mergedLogits = merged.forward(ids);
        Assert.True((mergedLogits - unmerged).abs().max().item<float>() < 1e-4);
        unmerged.Dispose();
        Assert.Contains("not empty", Assert.Throws<IOException>(() => MergePipeline.MergeToFolder(modelDir, adapterDir, outDir, new RuntimeOptions(), ids)).Message);
    }
}
