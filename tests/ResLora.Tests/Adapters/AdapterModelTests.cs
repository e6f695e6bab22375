using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters;

public sealed class AdapterModelTests
{
    /// <summary>A two-projection stand-in for the decoder: everything built through the factory, as the model does.</summary>
    private sealed class Tiny : nn.Module<Tensor, Tensor>
    {
#pragma warning disable IDE1006
        private readonly ModuleList<nn.Module<Tensor, Tensor>> layers;
        private readonly nn.Module<Tensor, Tensor> lm_head;
#pragma warning restore IDE1006
        private readonly ILinearFactory _factory;

        public Tiny(ILinearFactory f) : base("tiny")
        {
            _factory = f;
            layers = new ModuleList<nn.Module<Tensor, Tensor>>(
                f.Create(Spec(0, "self_attn", "q_proj", 6, 6), ScalarType.Float32, CPU),
                f.Create(Spec(0, "self_attn", "v_proj", 6, 6, bias: true), ScalarType.Float32, CPU));
            lm_head = f.Create(new LinearSpec("lm_head", "lm_head", -1, 6, 4, false), ScalarType.Float32, CPU);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            using var life = (_factory as IForwardLifecycle)?.BeginForward();
            using var scope = torch.NewDisposeScope();
            Tensor h = x;
            foreach (var l in layers) h = l.call(h).tanh();
            return scope.MoveToOuter(lm_head.call(h));
        }
    }

    private sealed class Hooked : nn.Module<Tensor, Tensor>, IExtraLossTerm, IOptimizerStepHook
    {
        public Hooked() : base("hooked") { RegisterComponents(); }
        public override Tensor forward(Tensor x) => x.alias();
        public Tensor ExtraLoss() => torch.zeros(1);
        public void BeforeOptimizerStep(OptimizerStepContext c) { }
        public void AfterOptimizerStep(OptimizerStepContext c) { }
    }

    private static readonly LoraConfig Cfg = new() { R = 2, LoraAlpha = 4, TargetModules = ModuleTargets.List("q_proj", "v_proj") };

    [Fact]
    public void AdapterModel_WholeTree_FindsFreezesCountsAndMerges()
    {
        var plan = new AdapterPlan(Cfg, new Generator(1));
        using var m = new Tiny(plan);
        plan.EnsureAllPatternsMatched();
        var found = AdapterModel.FindAdapters(m);
        Assert.Equal(new[] { "layers.0", "layers.1" }, found.Select(f => f.Name));
        Assert.Equal(new[] { "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj" }, AdapterModel.ByModulePath(m).Keys);

        foreach (var p in m.parameters()) p.requires_grad = true;
        long trainable = AdapterModel.FreezeAllButAdapters(m);
        // each adapter: A (2×6) + B (6×2) = 24; base: 36 + 36 + 6 (bias) + 24 (lm_head) = 102
        Assert.Equal(48, trainable);
        Assert.Equal((48L, 150L), AdapterModel.CountParameters(m));

        foreach (var (_, a) in found) Perturb(a, 2);
        using var x = torch.randn(new long[] { 3, 6 }, generator: new Generator(3));
        using var y0 = m.call(x);
        Assert.Equal(2, AdapterModel.MergeAll(m));
        using var y1 = m.call(x);
        Assert.True(MaxAbsDiff(y0, y1) < 1e-5);
        Assert.Throws<InvalidOperationException>(() => AdapterModel.MergeAll(m));
        Assert.Equal(2, AdapterModel.UnmergeAll(m));
        Assert.Throws<InvalidOperationException>(() => AdapterModel.UnmergeAll(m));
    }

    [Fact]
    public void SaveAndLoad_WholeModel_RoundTripsThroughAFolder()
    {
        var plan = new AdapterPlan(Cfg, new Generator(4));
        using var m = new Tiny(plan);
        foreach (var (_, a) in AdapterModel.FindAdapters(m)) Perturb(a, 5);
        string dir = Path.Combine(TempDir(), "a");
        AdapterFolder.Save(dir, Cfg, m);

        using var m2 = new Tiny(new AdapterPlan(Cfg, new Generator(6)));
        m2.load_state_dict(m.state_dict().Where(kv => !kv.Key.Contains("lora_")).ToDictionary(kv => kv.Key, kv => kv.Value), strict: false);
        Assert.Empty(AdapterFolder.LoadInto(dir, m2));
        using var x = torch.randn(new long[] { 2, 6 }, generator: new Generator(7));
        using var y1 = m.call(x);
        using var y2 = m2.call(x);
        Assert.Equal(0.0, MaxAbsDiff(y1, y2));
    }

    [Fact]
    public void StateDict_AdaptedModules_UseHuggingFaceAndPeftKeys()
    {
        var spec = Spec(0, "self_attn", "q_proj", 4, 3, bias: true);
        using var l = new LoraLinear(spec, new LoraLayerOptions(2, 2), ScalarType.Float32, CPU);
        Assert.Equal(new[] { "bias", "lora_A.weight", "lora_B.weight", "weight" }, l.state_dict().Keys.OrderBy(k => k, StringComparer.Ordinal));
        using var d = new DoraLinear(spec with { HasBias = false }, new LoraLayerOptions(2, 2), ScalarType.Float32, CPU);
        Assert.Equal(new[] { "lora_A.weight", "lora_B.weight", "lora_magnitude_vector", "weight" }, d.state_dict().Keys.OrderBy(k => k, StringComparer.Ordinal));
    }

    [Fact]
    public void CollectCapabilities_HooksAndExtras_FindsEachObjectOnce()
    {
        var plan = new AdapterPlan(Cfg);
        using var m = new Tiny(plan);
        using var h = new Hooked();
        var caps = AdapterModel.CollectCapabilities(m, h, h, null);
        Assert.Same(h, Assert.Single(caps.ExtraLossTerms));
        Assert.Same(h, Assert.Single(caps.StepHooks));
        Assert.Empty(AdapterModel.CollectCapabilities(m).StepHooks);
    }
}
