using ResLora.Adapters;
using ResLora.Models;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters;

/// <summary>
/// An adapter whose init changed the base (PiSSA, OLoRA) is saved as PEFT's rank-2r LoRA of the ORIGINAL base
/// (A' = [A; A₀], B' = [B, −B₀], r' = 2r, α' = 2α, init_lora_weights = true): loaded on a model with the original
/// weights it gives the outputs of the trained model over the residual base, to 1e-5 (float32).
/// </summary>
public sealed class LoraInitConversionTests : IDisposable
{
    private readonly string _dir = TempDir();

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }

    public static TheoryData<string, bool, bool> Cases() => new()
    {
        { "pissa", false, false },
        { "pissa_niter_2", false, false },
        { "olora", false, false },
        { "pissa", true, false },  // DoRA: V = W_res + s·BA is the same in both forms, so is the magnitude
        { "olora", false, true },  // rsLoRA: α' = √2·α keeps s
    };

    [Theory, MemberData(nameof(Cases))]
    public void SavedForTheOriginalBase_GivesTheTrainedOutputs(string init, bool dora, bool rslora)
    {
        var config = new LoraConfig
        {
            R = 3,
            LoraAlpha = 6,
            UseDora = dora,
            UseRslora = rslora,
            InitLoraWeights = LoraInit.Parse(init)!.Value,
            TargetModules = ModuleTargets.List("q_proj", "v_proj", "down_proj"),
        };
        using var trained = TinyModels.Build(TinyModels.Config(), seed: 4, factory: new AdapterPlan(config, new Generator(5)));
        using var original = TinyModels.Build(TinyModels.Config(), seed: 4); // the same base weights, no adapter
        using var ids = TinyModels.RandomIds(2, 7, 64, 8);
        original.eval();
        using var yOriginal = original.forward(ids);
        Assert.Equal(6, AdapterModel.OnBaseWeightsLoaded(trained));
        trained.eval();
        using (var y0 = trained.forward(ids))
            Assert.True(MaxAbsDiff(y0, yOriginal) < 1e-4, $"{init}: at step 0 the model is its base ({MaxAbsDiff(y0, yOriginal)})");
        long seed = 11;
        foreach (var (_, a) in AdapterModel.FindAdapters(trained)) Perturb(a, seed++); // "training"
        using var yTrained = trained.forward(ids);

        Assert.True(MutatedInitConversion.Applies(trained));
        MutatedInitConversion.Save(_dir, config, trained);
        var (saved, _) = AdapterConfigJson.Parse(File.ReadAllText(Path.Combine(_dir, AdapterFolder.ConfigFileName)));
        var s = Assert.IsType<LoraConfig>(saved);
        Assert.Equal((6, LoraInit.Default, dora), (s.R, s.InitLoraWeights, s.UseDora));
        Assert.Equal(rslora ? 6 * Math.Sqrt(2) : 12, s.LoraAlpha, 12);
        Assert.Contains("\"init_lora_weights\": true", File.ReadAllText(Path.Combine(_dir, AdapterFolder.ConfigFileName)));

        using var reloaded = TinyModels.Build(TinyModels.Config(), seed: 4, factory: new AdapterPlan(saved));
        AdapterFolder.LoadInto(_dir, reloaded);
        Assert.False(MutatedInitConversion.Applies(reloaded));
        reloaded.eval();
        using var yReloaded = reloaded.forward(ids);
        Assert.True(MaxAbsDiff(yReloaded, yTrained) < 1e-5, $"{init}: converted LoRA on the original base vs the trained model: {MaxAbsDiff(yReloaded, yTrained)}");

        // Merged into the original weights, as `reslora merge` does, it is the same model.
        AdapterModel.MergeAll(reloaded);
        using var yMerged = reloaded.forward(ids);
        Assert.True(MaxAbsDiff(yMerged, yTrained) < 1e-4, $"{init}: merged {MaxAbsDiff(yMerged, yTrained)}");
    }

    [Fact]
    public void ConvertedConfig_DoublesRankAndAlphaPatterns_AsPeftDoes()
    {
        var c = new LoraConfig
        {
            R = 4,
            LoraAlpha = 8,
            InitLoraWeights = LoraInit.Olora,
            TargetModules = ModuleTargets.AllLinear,
            RankPattern = new() { ["q_proj"] = 2 },
            AlphaPattern = new() { ["q_proj"] = 3 },
        };
        var converted = Assert.IsType<LoraConfig>(MutatedInitConversion.ConvertConfig(c));
        Assert.Equal((8, 16.0, 4, 6.0, LoraInit.Default), (converted.R, converted.LoraAlpha, converted.RankPattern["q_proj"], converted.AlphaPattern["q_proj"], converted.InitLoraWeights));
        var plain = c with { InitLoraWeights = LoraInit.Gaussian };
        Assert.Same(plain, MutatedInitConversion.ConvertConfig(plain));
    }

    [Fact]
    public void RsloraWithPatterns_IsRefusedBeforeTraining()
    {
        var c = new LoraConfig { R = 4, InitLoraWeights = LoraInit.Pissa, UseRslora = true, RankPattern = new() { ["q_proj"] = 2 }, TargetModules = ModuleTargets.AllLinear };
        var e = Assert.Throws<UserInputException>(c.Validate);
        Assert.Contains("--rslora", e.Message);
    }
}
