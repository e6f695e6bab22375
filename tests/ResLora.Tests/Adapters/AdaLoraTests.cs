using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters;

public sealed class AdaLoraTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-adalora-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static AdaLoraConfig Cfg(int total = 100) => new()
    {
        InitR = 6,
        TargetR = 2,
        TotalStep = total,
        TInit = 10,
        TFinal = 20,
        DeltaT = 5,
        LoraAlpha = 6,
        TargetModules = ModuleTargets.List("q_proj", "v_proj"),
    };

    [Fact]
    public void Budget_FollowsTheCubicSchedule()
    {
        var c = Cfg();
        // 4 modules: b0 = 24, bT = 8; decay over steps 10..80.
        Assert.Equal(24, c.Budget(5, 4));
        Assert.Equal(24, c.Budget(10, 4));
        Assert.Equal((int)Math.Floor(16 * Math.Pow(1 - 35.0 / 70, 3) + 8), c.Budget(45, 4)); // 10
        Assert.Equal(8, c.Budget(80, 4));
        Assert.Equal(8, c.Budget(81, 4));
    }

    [Fact]
    public void OrthogonalityPenalty_ByHand()
    {
        var b = new AdaLoraLayerBuilder(Cfg() with { OrthRegWeight = 1.0 }, null);
        var l = (AdaLoraLinear)b.Build(new AdapterTarget(new LinearSpec("m.q_proj", "q_proj", 0, 3, 2, false), 8, 6), ScalarType.Float32, CPU);
        using (torch.no_grad())
        {
            l.Q.zero_(); // QQᵀ − I = −I (6×6): ‖·‖_F = √6
            l.P.zero_(); // PᵀP − I = −I: √6
        }
        using var pen = b.ExtraLoss();
        Assert.Equal(Math.Sqrt(6), pen.item<float>(), 4); // (√6 + √6)/2
    }

    [Fact]
    public void Training_ReachesTheTargetBudget_AndSavesPrunedTensorsThatReload()
    {
        var cfg = Cfg(total: 40) with { TInit = 4, TFinal = 8, DeltaT = 2 };
        using var gen = new torch.Generator(3);
        var plan = new AdapterPlan(cfg, gen);
        using var model = TinyModels.Build(TinyModels.Config(), seed: 2, factory: plan);
        AdapterModel.FreezeAllButAdapters(model);
        var builder = (AdaLoraLayerBuilder)plan.Builder;
        var trainer = new global::ResLora.Training.Trainer(model, new global::ResLora.Training.TrainOptions { Steps = 40, LearningRate = 1e-2, BatchSize = 4 }, new object[] { builder });
        using var opt = trainer.CreateOptimizer();
        var data = new global::ResLora.Training.ShuffledBatchSource(Enumerable.Range(0, 16).Select(i => new global::ResLora.Training.TokenizedExample(new[] { 1, 3 + i, 5 + i, 7 }, new[] { -100, 3 + i, 5 + i, 7 })).ToList(), 4, 0, 1);
        for (int s = 1; s <= 40; s++) trainer.Step(opt, data, s, 40);
        int kept = builder.Layers.Sum(l => l.Keep.Count(k => k));
        Assert.Equal(2 * builder.Layers.Count, kept);
        foreach (var l in builder.Layers)
            for (int i = 0; i < l.Keep.Length; i++)
                if (!l.Keep[i]) Assert.Equal(0f, l.Lambda[i, 0].item<float>());
        using var x = TinyModels.RandomIds(1, 5, 64, 9);
        model.eval();
        using var before = model.forward(x);

        string dir = Path.Combine(_dir, "adapter");
        AdapterFolder.Save(dir, builder.SnapshotConfig(), model);
        string json = File.ReadAllText(Path.Combine(dir, "adapter_config.json"));
        Assert.Contains("\"rank_pattern\"", json);
        Assert.Contains(".lora_E\"", json);
        using (var f = SafetensorsFile.Open(Path.Combine(dir, "adapter_model.safetensors")))
        {
            // The budget is global: each module keeps its own number of triplets, and the saved tensors are pruned to it.
            int q0 = builder.Layers.First(l => l.Spec.Name == "model.layers.0.self_attn.q_proj").Keep.Count(k => k);
            Assert.Equal(new long[] { q0, 32 }, f.GetEntry("base_model.model.model.layers.0.self_attn.q_proj.lora_A").Shape);
        }

        var (loaded, _) = AdapterConfigJson.Parse(json);
        using var model2 = TinyModels.Build(TinyModels.Config(), seed: 2, factory: new AdapterPlan(loaded));
        AdapterFolder.LoadInto(dir, model2);
        model2.eval();
        using var after = model2.forward(x);
        Assert.True((after - before).abs().max().item<float>() < 1e-5);
    }
}
