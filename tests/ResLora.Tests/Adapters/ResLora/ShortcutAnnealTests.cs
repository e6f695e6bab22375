using ResLora.Adapters;
using ResLora.Models;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.Adapters.ResLora;

/// <summary>Shortcut annealing (issue 31): the schedule's values, and that weight 0 leaves exactly a plain LoRA.</summary>
public sealed class ShortcutAnnealTests
{
    [Fact]
    public void Linear_IsOneBeforeTheWindow_ThenTMinusSOverK_ZeroAtTheLastStep()
    {
        // T = 10, K = 4: the window is steps 7..10; step 6 (= T − K) is the last at full weight.
        var expected = new Dictionary<int, double> { [1] = 1, [6] = 1, [7] = 0.75, [8] = 0.5, [9] = 0.25, [10] = 0 };
        foreach (var (s, w) in expected) Assert.Equal(w, ShortcutAnneal.Weight(s, 10, 4, "linear"));
        Assert.Equal(0.0, ShortcutAnneal.Weight(11, 10, 4, "linear")); // past the end (never trained) stays 0
        // K = T: the whole run anneals; the first step already has (K − 1)/K.
        Assert.Equal(4.0 / 5, ShortcutAnneal.Weight(1, 5, 5, "linear"));
        Assert.Equal(0.0, ShortcutAnneal.Weight(5, 5, 5, "linear"));
        // K = 1: only the last step drops its shortcuts.
        Assert.Equal(1.0, ShortcutAnneal.Weight(4, 5, 1, "linear"));
        Assert.Equal(0.0, ShortcutAnneal.Weight(5, 5, 1, "linear"));
    }

    [Fact]
    public void Cosine_IsHalfOnePlusCosPiProgress_ZeroAtTheLastStep()
    {
        const int total = 10, k = 4, start = total - k;
        Assert.Equal(1.0, ShortcutAnneal.Weight(start, total, k, "cosine"));
        for (int s = start + 1; s < total; s++)
            Assert.Equal(0.5 * (1 + Math.Cos(Math.PI * (s - start) / k)), ShortcutAnneal.Weight(s, total, k, "cosine"));
        Assert.Equal(0.5 * (1 + Math.Cos(Math.PI / 4)), ShortcutAnneal.Weight(7, total, k, "cosine"), 15); // first step of the window
        Assert.Equal(0.5, ShortcutAnneal.Weight(8, total, k, "cosine"), 15);
        Assert.Equal(0.0, ShortcutAnneal.Weight(total, total, k, "cosine"));
    }

    private static readonly ModuleTargets Targets = ModuleTargets.List("q_proj", "v_proj");

    private static CausalLM Build(AdapterConfigBase cfg, out AdapterPlan plan)
    {
        using var gen = new torch.Generator(3);
        plan = new AdapterPlan(cfg, gen);
        var model = TinyModels.Build(TinyModels.Config() with { NumHiddenLayers = 3 }, seed: 9, factory: plan);
        using (torch.no_grad())
            foreach (var a in AdapterModel.ByModulePath(model).Values)
                ((ILowRankPair)a).LoraB.normal_(0, 0.3, gen);
        model.eval();
        return model;
    }

    private static ResLoraConfig Annealed(string structure, double finalWeight) =>
        new() { R = 4, LoraAlpha = 8, Structure = structure, PreNum = -1, TargetModules = Targets, Anneal = new ResLoraAnneal { Steps = 5, Schedule = "linear", FinalWeight = finalWeight } };

    [Theory]
    [InlineData("is")]
    [InlineData("bs")]
    [InlineData("ms")]
    public void AtWeightZero_LogitsEqualAPlainLoraWithTheSameFactors_AndTheMergeIsExact(string structure)
    {
        using var res = Build(Annealed(structure, 0), out var plan);
        Assert.Equal(0.0, ((ResLoraLayerBuilder)plan.Builder).ShortcutWeight);
        using var lora = Build(new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = Targets }, out _);
        var src = AdapterModel.ByModulePath(res);
        using (torch.no_grad())
            foreach (var (path, a) in AdapterModel.ByModulePath(lora))
            {
                var (to, from) = ((ILowRankPair)a, (ILowRankPair)src[path]);
                to.LoraA.copy_(from.LoraA);
                to.LoraB.copy_(from.LoraB);
            }
        using var ids = TinyModels.RandomIds(2, 10, 64, 4);
        using var expected = lora.forward(ids);
        using var got = res.forward(ids);
        Assert.True((got - expected).abs().max().item<float>() <= 1e-6, $"{(got - expected).abs().max().item<float>()}");

        // With the shortcuts at full weight the same factors give another model (the paths are live).
        ((ResLoraLayerBuilder)plan.Builder).ShortcutWeight = 1;
        using (var live = res.forward(ids)) Assert.True((live - expected).abs().max().item<float>() > 1e-3);
        ((ResLoraLayerBuilder)plan.Builder).ShortcutWeight = 0;

        AdapterModel.MergeAll(res);
        using var merged = res.forward(ids);
        Assert.True((merged - got).abs().max().item<float>() <= 1e-5);
    }

    [Fact]
    public void BlockShortcut_AtAPartialWeight_StillMergesExactly()
    {
        using var model = Build(Annealed("bs", 0.4), out var plan);
        Assert.Equal(0.4, ((ResLoraLayerBuilder)plan.Builder).ShortcutWeight);
        using var ids = TinyModels.RandomIds(2, 10, 64, 4);
        using var before = model.forward(ids);
        ((ResLoraLayerBuilder)plan.Builder).ShortcutWeight = 1;
        using (var full = model.forward(ids)) Assert.True((full - before).abs().max().item<float>() > 1e-3);
        ((ResLoraLayerBuilder)plan.Builder).ShortcutWeight = 0.4;
        AdapterModel.MergeAll(model);
        using var after = model.forward(ids);
        Assert.True((after - before).abs().max().item<float>() <= 1e-5);
    }

    [Fact]
    public void TheBuilderFollowsTheStep_AndTheSnapshotRecordsTheWeight()
    {
        var builder = new ResLoraLayerBuilder(Annealed("is", 1) with { Anneal = new ResLoraAnneal { Steps = 3, Schedule = "linear" } });
        builder.BeginOptimizerStep(7, 10);
        Assert.Equal(1.0, builder.ShortcutWeight);
        builder.BeginOptimizerStep(9, 10);
        Assert.Equal(1.0 / 3, builder.ShortcutWeight);
        Assert.Equal(1.0 / 3, builder.ConfigWithStatistics().Anneal!.FinalWeight);
        builder.BeginOptimizerStep(10, 10);
        Assert.True(builder.ConfigWithStatistics().AnnealedToZero);
        Assert.Throws<UserInputException>(() => builder.BeginOptimizerStep(1, 2)); // a window longer than the run
    }
}
