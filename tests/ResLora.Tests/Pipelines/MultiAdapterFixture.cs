using ResLora.Adapters;
using ResLora.Demo;
using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.Pipelines;

/// <summary>
/// A tiny base model folder (with the demo tokenizer) and adapter folders trained-looking (non-zero B, perturbed DoRA
/// magnitudes): lora (all-linear, r 4), rslora (q/v, r 8, use_rslora), dora (all-linear, r 4), lora8 (q/v, r 8),
/// exported (a ResLoRA bs adapter exported as LoRA: per-module ranks in rank_pattern), reslora (the ResLoRA folder
/// itself) and loha. Built once per test class; tests only read them.
/// </summary>
public sealed class MultiAdapterFixture : IDisposable
{
    public MultiAdapterFixture()
    {
        Root = Directory.CreateTempSubdirectory("reslora-multi-").FullName;
        Config = TinyModels.Config(vocab: DemoTokenizerFiles.VocabSize);
        ModelDir = Path.Combine(Root, "model");
        using (var m = TinyModels.Build(Config, seed: 4))
            ModelFolder.Save(ModelDir, Config, m.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)));
        DemoTokenizerFiles.Write(ModelDir);

        Save("lora", new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ModuleTargets.AllLinear }, 10);
        Save("rslora", new LoraConfig { R = 8, LoraAlpha = 4, UseRslora = true, TargetModules = ModuleTargets.List("q_proj", "v_proj") }, 11);
        Save("dora", new LoraConfig { R = 4, LoraAlpha = 6, UseDora = true, TargetModules = ModuleTargets.AllLinear }, 12);
        Save("lora8", new LoraConfig { R = 8, LoraAlpha = 8, TargetModules = ModuleTargets.List("q_proj", "v_proj") }, 13);
        Save("loha", new LoHaConfig { R = 2, Alpha = 2, TargetModules = ModuleTargets.List("q_proj") }, 14);
        Save("reslora", new ResLoraConfig { R = 2, LoraAlpha = 4, Structure = "bs", PreNum = 1, TargetModules = ModuleTargets.List("q_proj", "v_proj") }, 15);
        ExportPipeline.AsLora(ModelDir, Dir("reslora"), Dir("exported"), new RuntimeOptions(), new ExportOptions());
    }

    public string Root { get; }
    public string ModelDir { get; }
    public ModelConfig Config { get; }

    public string Dir(string name) => Path.Combine(Root, name);

    /// <summary>An adapter folder with random non-zero B (and DoRA magnitudes moved off their init), as after training.</summary>
    private void Save(string name, AdapterConfigBase cfg, long seed) => SaveTrainedLooking(ModelDir, Dir(name), cfg, seed, 0.2);

    /// <summary>
    /// Writes an adapter folder for the model in <paramref name="modelDir"/> whose trainable tensors are their init plus
    /// noise of standard deviation <paramref name="std"/> (non-zero B, DoRA magnitudes off their init), as after training.
    /// </summary>
    public static void SaveTrainedLooking(string modelDir, string outDir, AdapterConfigBase cfg, long seed, double std)
    {
        using var gen = new torch.Generator((ulong)seed);
        var plan = new AdapterPlan(cfg, gen);
        using var model = ModelSessions.LoadBase(modelDir, new RuntimeOptions(), plan);
        AdapterModel.OnBaseWeightsLoaded(model);
        using (torch.no_grad())
            foreach (var (_, a) in AdapterModel.FindAdapters(model))
                foreach (var p in a.TrainableParameters)
                {
                    using var n = torch.randn(p.shape, generator: gen).mul(std);
                    p.add_(n);
                }
        AdapterFolder.Save(outDir, cfg, model);
    }

    public void Dispose() => Directory.Delete(Root, recursive: true);
}
