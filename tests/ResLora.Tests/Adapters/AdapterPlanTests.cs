using System.Text.Json.Serialization;
using ResLora.Adapters;
using ResLora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters;

public sealed class AdapterPlanTests
{
    private static AdapterPlan Plan(LoraConfig c) => new(c, new Generator(1));

    private static List<string> Adapted(AdapterPlan plan) =>
        TinyLlamaSpecs().Select(plan.Decide).Where(d => d.Adapted).Select(d => d.Spec.Name).ToList();

    [Fact]
    public void TargetList_Entry_MatchesThePathOrADotSuffixOnly()
    {
        var plan = Plan(new LoraConfig { TargetModules = ModuleTargets.List("q_proj", "layers.1.mlp.down_proj", "_proj") });
        Assert.Equal(new[] { "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj" }, Adapted(plan));
    }

    [Fact]
    public void TargetString_Regex_MustMatchTheWholePath()
    {
        var plan = Plan(new LoraConfig { TargetModules = ModuleTargets.Regex(@".*\.layers\.0\..*(q|v)_proj") });
        Assert.Equal(new[] { "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj" }, Adapted(plan));
        Assert.Empty(Adapted(Plan(new LoraConfig { TargetModules = ModuleTargets.Regex("q_proj") }))); // fullmatch, not search
    }

    [Fact]
    public void AllLinear_WithExclusions_TakesEveryDecoderProjectionButNeverLmHead()
    {
        var all = Adapted(Plan(new LoraConfig { TargetModules = ModuleTargets.AllLinear }));
        Assert.Equal(14, all.Count);
        Assert.DoesNotContain("lm_head", all);

        var excl = Adapted(Plan(new LoraConfig { TargetModules = ModuleTargets.AllLinear, ExcludeModules = ModuleTargets.List("down_proj", "layers.0.self_attn.k_proj") }));
        Assert.Equal(11, excl.Count);
        Assert.DoesNotContain("model.layers.0.mlp.down_proj", excl);
        Assert.DoesNotContain("model.layers.0.self_attn.k_proj", excl);
        Assert.Contains("model.layers.1.self_attn.k_proj", excl);

        var rx = Adapted(Plan(new LoraConfig { TargetModules = ModuleTargets.AllLinear, ExcludeModules = ModuleTargets.Regex(@"model\.layers\.1\..*") }));
        Assert.Equal(7, rx.Count);
        Assert.All(rx, n => Assert.StartsWith("model.layers.0.", n));

        var layers = Adapted(Plan(new LoraConfig { TargetModules = ModuleTargets.List("q_proj"), LayersToTransform = new[] { 1 } }));
        Assert.Equal(new[] { "model.layers.1.self_attn.q_proj" }, layers);
    }

    [Fact]
    public void RankAndAlphaPatterns_SeveralKeys_FirstDotSuffixMatchWins()
    {
        var c = new LoraConfig
        {
            R = 8,
            LoraAlpha = 16,
            TargetModules = ModuleTargets.List("q_proj", "v_proj"),
            RankPattern = new() { ["model.layers.1.self_attn.q_proj"] = 2, ["v_proj"] = 4, [@"layers\.1\..*"] = 6 },
            AlphaPattern = new() { [@"layers\.0\.self_attn\.q_proj"] = 32 },
        };
        var plan = Plan(c);
        var byName = TinyLlamaSpecs().Select(plan.Decide).Where(d => d.Adapted).ToDictionary(d => d.Spec.Name);
        Assert.Equal((8, 32.0), (byName["model.layers.0.self_attn.q_proj"].R, byName["model.layers.0.self_attn.q_proj"].Alpha));
        Assert.Equal((2, 16.0), (byName["model.layers.1.self_attn.q_proj"].R, byName["model.layers.1.self_attn.q_proj"].Alpha));
        Assert.Equal(4, byName["model.layers.0.self_attn.v_proj"].R);
        Assert.Equal(4, byName["model.layers.1.self_attn.v_proj"].R); // "v_proj" comes before layers\.1\..* in the dict
        Assert.Null(AdapterPlan.PatternKey(new[] { "proj" }, "model.layers.0.self_attn.q_proj")); // not a whole segment

        var m = Assert.IsType<LoraLinear>(plan.Create(TinyLlamaSpecs().Single(s => s.Name == "model.layers.1.self_attn.q_proj"), ScalarType.Float32, CPU));
        Assert.Equal(new long[] { 2, 8 }, m.LoraA.shape);
        Assert.Equal(16.0 / 2, m.Scaling);
    }

    [Fact]
    public void Create_TargetsAndOthers_WrapsTargetsFreezesOthersAndRecordsDecisions()
    {
        var plan = Plan(new LoraConfig { R = 2, LoraAlpha = 4, TargetModules = ModuleTargets.List("v_proj"), UseDora = true });
        var specs = TinyLlamaSpecs();
        var modules = specs.Select(s => plan.Create(s, ScalarType.Float32, CPU)).ToList();
        Assert.Equal(2, modules.OfType<DoraLinear>().Count());
        var plain = modules.OfType<Linear>().ToList();
        Assert.Equal(13, plain.Count);
        Assert.All(plain, l => Assert.All(l.parameters(), p => Assert.False(p.requires_grad)));
        Assert.Equal(15, plan.Decisions.Count);
        Assert.Equal("model.layers.0.self_attn.v_proj → dora r=2 alpha=4", plan.Decisions[2].ToString());
        Assert.Equal("lm_head → frozen (not in target_modules)", plan.Decisions[14].ToString());
        plan.EnsureAllPatternsMatched();
        var report = plan.DryRunReport(specs.Take(3));
        Assert.Equal(new[]
        {
            "model.layers.0.self_attn.q_proj → frozen (not in target_modules)",
            "model.layers.0.self_attn.k_proj → frozen (not in target_modules)",
            "model.layers.0.self_attn.v_proj → dora r=2 alpha=4",
        }, report);
    }

    [Fact]
    public void EnsureAllPatternsMatched_UnmatchedPattern_NamesItAndListsModuleTypes()
    {
        var plan = Plan(new LoraConfig { TargetModules = ModuleTargets.List("q_proj", "query"), RankPattern = new() { ["dense"] = 4 } });
        foreach (var s in TinyLlamaSpecs()) plan.Create(s, ScalarType.Float32, CPU);
        var e = Assert.Throws<UserInputException>(plan.EnsureAllPatternsMatched);
        Assert.Contains("target_modules entry 'query' matched no module", e.Message);
        Assert.Contains("rank_pattern key 'dense' matched no module", e.Message);
        Assert.Contains("down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj", e.Message);
        Assert.DoesNotContain("'q_proj' matched", e.Message);

        var rx = Plan(new LoraConfig { TargetModules = ModuleTargets.Regex("q_proj") });
        foreach (var s in TinyLlamaSpecs()) rx.Create(s, ScalarType.Float32, CPU);
        Assert.Contains("target_modules entry 'q_proj' matched no module", Assert.Throws<UserInputException>(rx.EnsureAllPatternsMatched).Message);

        var allExcluded = Plan(new LoraConfig { TargetModules = ModuleTargets.List("q_proj"), ExcludeModules = ModuleTargets.List("self_attn.q_proj") });
        foreach (var s in TinyLlamaSpecs()) allExcluded.Create(s, ScalarType.Float32, CPU);
        Assert.Contains("no module was adapted", Assert.Throws<UserInputException>(allExcluded.EnsureAllPatternsMatched).Message);
    }

    [Fact]
    public void Plan_InvalidConfig_IsRefusedNamingTheField()
    {
        Assert.Contains("'r'", Assert.Throws<UserInputException>(() => Plan(new LoraConfig { R = 0, TargetModules = ModuleTargets.List("q_proj") })).Message);
        Assert.Contains("'fan_in_fan_out'", Assert.Throws<UserInputException>(() => AdapterConfigJson.Parse("""{"peft_type":"LORA","target_modules":["q_proj"],"fan_in_fan_out":true}""")).Message);
        Assert.Contains("'target_modules'", Assert.Throws<UserInputException>(() => Plan(new LoraConfig())).Message);
        Assert.Contains("'target_modules'", Assert.Throws<UserInputException>(() => Plan(new LoraConfig { TargetModules = ModuleTargets.Regex("(q_proj") })).Message);
        Assert.Contains("'bias'", Assert.Throws<UserInputException>(() => AdapterConfigJson.Parse("""{"peft_type":"LORA","target_modules":["q_proj"],"bias":"all"}""")).Message);
        Assert.Contains("'lora_bias'", Assert.Throws<UserInputException>(() => AdapterConfigJson.Parse("""{"peft_type":"LORA","target_modules":["q_proj"],"lora_bias":true}""")).Message);
        // modules_to_save is read (a SEQ_CLS head); its tensors are refused where they cannot be applied (AdapterFolder.Apply).
        Assert.Equal(new[] { "lm_head" }, AdapterConfigJson.Parse("""{"peft_type":"LORA","target_modules":["q_proj"],"modules_to_save":["lm_head"]}""").Config.ModulesToSave);
    }

    // A registered method whose builder has a per-forward context (like ResLoRA): the plan must forward BeginForward.
    private sealed record LifecycleConfig : LowRankConfigBase
    {
        [JsonPropertyName("peft_type")] public override string PeftType => "TEST_LIFECYCLE";
        [JsonIgnore] public override string Method => "lora";
    }

    private sealed class LifecycleBuilder : IAdapterLayerBuilder, IForwardLifecycle
    {
        public int Begun;
        public int Ended;
        public nn.Module<Tensor, Tensor> Build(AdapterTarget t, ScalarType dtype, Device device) =>
            new LoraLinear(t.Spec, new LoraLayerOptions(t.R, t.Alpha), dtype, device);
        public IDisposable BeginForward() { Begun++; return new End(this); }
        private sealed class End(LifecycleBuilder b) : IDisposable { public void Dispose() => b.Ended++; }
    }

    [Fact]
    public void Plan_ForwardsBeginForward_ToABuilderWithAContext()
    {
        var built = new LifecycleBuilder();
        var plan = new AdapterPlan(new LifecycleConfig { TargetModules = ModuleTargets.List("q_proj") }, built);
        Assert.Same(built, plan.Builder);
        using (plan.BeginForward()) Assert.Equal(1, built!.Begun);
        Assert.Equal(1, built.Ended);
        Assert.IsType<LoraLinear>(plan.Create(Spec(0, "self_attn", "q_proj"), ScalarType.Float32, CPU));

        var plain = Plan(new LoraConfig { TargetModules = ModuleTargets.List("q_proj") });
        using (plain.BeginForward()) { } // LoRA has no per-forward context: a no-op, not an error
    }
}
