using ResLora.Adapters;
using ResLora.Models;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.Adapters.ResLora;

/// <summary>ResLoRA inside a real (tiny) LLaMA: spec §8 case 14, chains over layers, generation, parameter counts.</summary>
public sealed class ResLoraModelTests
{
    private static LlamaForCausalLM Build(AdapterConfigBase cfg, ulong seed = 3)
    {
        using var gen = new torch.Generator(seed);
        var model = TinyModels.Build(TinyModels.Config() with { NumHiddenLayers = 3 }, seed: 9, factory: new AdapterPlan(cfg, gen));
        using (torch.no_grad())
            foreach (var a in AdapterModel.ByModulePath(model).Values)
                ((ILowRankPair)a).LoraB.normal_(0, 0.3, gen);
        return model;
    }

    private static ResLoraConfig Cfg(string structure, int preNum = -1, string merge = "bi") =>
        new() { R = 4, LoraAlpha = 8, Structure = structure, PreNum = preNum, Merge = merge, TargetModules = ModuleTargets.List("q_proj", "v_proj") };

    [Fact]
    public void BlockShortcut_MergedEqualsUnmerged_OnAModel()
    {
        using var model = Build(Cfg("bs"));
        model.eval();
        using var ids = TinyModels.RandomIds(2, 10, 64, 4);
        using var before = model.forward(ids);
        Assert.Equal(6, AdapterModel.MergeAll(model));
        using var after = model.forward(ids);
        double scale = before.abs().max().item<float>();
        Assert.True((after - before).abs().max().item<float>() <= 1e-5 * Math.Max(1, scale));
        AdapterModel.UnmergeAll(model);
        using var again = model.forward(ids);
        Assert.True((again - before).abs().max().item<float>() < 1e-5);
    }

    [Theory]
    [InlineData("is", "bi")]
    [InlineData("is", "bw")]
    [InlineData("ms", "bi")]
    [InlineData("ms", "a")]
    public void ApproximateMerges_ChangeTheOutput_ButStayCloserThanDroppingThePaths(string structure, string merge)
    {
        using var model = Build(Cfg(structure, merge: merge));
        using var ids = TinyModels.RandomIds(2, 10, 64, 4);
        model.train(); // fill the windows (no dropout configured, so outputs are the eval ones)
        using (torch.no_grad()) model.forward(ids).Dispose();
        model.eval();
        using var unmerged = model.forward(ids);
        AdapterModel.MergeAll(model);
        using var merged = model.forward(ids);
        AdapterModel.UnmergeAll(model);
        double diff = (merged - unmerged).abs().max().item<float>();
        Assert.True(diff > 1e-6, "is/ms merges are approximations on real inputs (spec §4.5)");
        Assert.True(double.IsFinite(diff));
    }

    [Fact]
    public void Shortcuts_SendGradientToEarlierBlocks_AndParameterCountEqualsLora()
    {
        using var res = Build(Cfg("is"));
        using var lora = Build(new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ModuleTargets.List("q_proj", "v_proj") });
        AdapterModel.FreezeAllButAdapters(res);
        AdapterModel.FreezeAllButAdapters(lora);
        Assert.Equal(AdapterModel.CountParameters(lora), AdapterModel.CountParameters(res));
        var chains = ((ResLoraLayerBuilder)((AdapterPlan)res.Factory).Builder).Chains;
        Assert.Equal(3, chains["q_proj"].Count);
        Assert.Same(chains["q_proj"][0], chains["q_proj"][1].Previous);
        using var ids = TinyModels.RandomIds(1, 6, 64, 2);
        res.train();
        res.forward(ids).sum().backward();
        Assert.All(AdapterModel.ByModulePath(res).Values, a => Assert.True(((ILowRankPair)a).LoraA.grad!.abs().sum().item<float>() > 0));
    }

    [Theory]
    [InlineData("is")]
    [InlineData("ms")]
    public void KvCachedGeneration_WithUnmergedShortcuts_MatchesUncached(string structure)
    {
        using var model = Build(Cfg(structure));
        var o = new GenerationOptions { MaxNewTokens = 8 };
        var prompt = new[] { 1, 5, 9, 12 };
        Assert.Equal(TextGenerator.Generate(model, prompt, o with { UseKvCache = false }), TextGenerator.Generate(model, prompt, o));
    }
}
