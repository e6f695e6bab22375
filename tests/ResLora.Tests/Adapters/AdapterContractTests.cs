using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using TorchSharp;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters;

/// <summary>
/// One contract every adapter kind must satisfy. To add a method, add ONE line to <see cref="Kinds"/>: its config
/// (built through the registry like the model does) and the PEFT tensor suffixes it must save.
/// </summary>
public sealed class AdapterContractTests
{
    private sealed record Kind(AdapterConfigBase Config, string[] SavedSuffixes);

    private static readonly Dictionary<string, Kind> Kinds = new()
    {
        ["lora"] = new(new LoraConfig { R = 3, LoraAlpha = 6, TargetModules = ModuleTargets.List("q_proj") }, new[] { "lora_A.weight", "lora_B.weight" }),
        ["lora-rslora"] = new(new LoraConfig { R = 4, LoraAlpha = 6, UseRslora = true, TargetModules = ModuleTargets.List("q_proj") }, new[] { "lora_A.weight", "lora_B.weight" }),
        ["lora-gaussian"] = new(new LoraConfig { R = 2, LoraAlpha = 4, InitLoraWeights = LoraInit.Gaussian, TargetModules = ModuleTargets.List("q_proj") }, new[] { "lora_A.weight", "lora_B.weight" }),
        ["dora"] = new(new LoraConfig { R = 3, LoraAlpha = 5, UseDora = true, TargetModules = ModuleTargets.List("q_proj") }, new[] { "lora_A.weight", "lora_B.weight", "lora_magnitude_vector" }),
        ["reflora"] = new(new RefLoraConfig { R = 3, LoraAlpha = 6, TargetModules = ModuleTargets.List("q_proj") }, new[] { "lora_A.weight", "lora_B.weight" }),
        ["loha"] = new(new LoHaConfig { R = 3, Alpha = 6, TargetModules = ModuleTargets.List("q_proj") }, new[] { "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b" }),
        ["lokr"] = new(new LoKrConfig { R = 2, Alpha = 4, TargetModules = ModuleTargets.List("q_proj") }, new[] { "lokr_w1", "lokr_w2_a", "lokr_w2_b" }),
        ["adalora"] = new(new AdaLoraConfig { InitR = 4, TargetR = 2, TotalStep = 10, LoraAlpha = 4, TargetModules = ModuleTargets.List("q_proj") }, new[] { "lora_A", "lora_B", "lora_E" }),
        // A standalone ResLoRA block is a chain start: is merges exactly with α = 1 (W + 2sBA), ms with α = 0, bs exactly.
        ["reslora-is"] = new(new ResLoraConfig { R = 3, LoraAlpha = 6, Structure = "is", TargetModules = ModuleTargets.List("q_proj") }, new[] { "lora_A.weight", "lora_B.weight" }),
        ["reslora-bs"] = new(new ResLoraConfig { R = 3, LoraAlpha = 6, Structure = "bs", PreNum = -1, TargetModules = ModuleTargets.List("q_proj") }, new[] { "lora_A.weight", "lora_B.weight" }),
        ["reslora-ms"] = new(new ResLoraConfig { R = 2, LoraAlpha = 6, Structure = "ms", PreNum = -1, TargetModules = ModuleTargets.List("q_proj") }, new[] { "lora_A.weight", "lora_B.weight" }),
    };

    public static TheoryData<string> KindNames()
    {
        var d = new TheoryData<string>();
        foreach (var k in Kinds.Keys) d.Add(k);
        return d;
    }

    private static readonly LinearSpec TheSpec = new("model.layers.0.self_attn.q_proj", "q_proj", 0, 7, 5, true);

    private static (nn.Module<Tensor, Tensor> Module, IAdapter Adapter) Build(string kind, ulong seed = 11)
    {
        var plan = new AdapterPlan(Kinds[kind].Config, new Generator(seed));
        var m = plan.Create(TheSpec, ScalarType.Float32, CPU);
        var a = Assert.IsAssignableFrom<IAdapter>(m);
        // RefLoRA trains plain LoRA layers (the method is its step hook), so its layers report "lora".
        Assert.Equal(Kinds[kind].Config.LayerMethod, a.Method);
        return (m, a);
    }

    private static Tensor Input(ulong seed = 5) => torch.randn(new long[] { 3, 4, 7 }, generator: new Generator(seed));

    private static Tensor BaseOut(IAdapter a, Tensor x) => nn.functional.linear(x, a.Weight, a.Bias);

    [Theory, MemberData(nameof(KindNames))]
    public void ZeroInit_leaves_output_equal_to_the_base(string kind)
    {
        var (m, a) = Build(kind);
        using var x = Input();
        using var y = m.call(x);
        using var b = BaseOut(a, x);
        Assert.Equal(new long[] { 3, 4, 5 }, y.shape);
        Assert.True(MaxAbsDiff(y, b) < 1e-6, $"{kind}: |y - base| = {MaxAbsDiff(y, b)}");
        using var d = a.DeltaWeight();
        Assert.True(d.abs().max().item<float>() < 1e-6f);
    }

    [Theory, MemberData(nameof(KindNames))]
    public void Merged_forward_equals_unmerged_and_unmerge_restores_the_base(string kind)
    {
        var (m, a) = Build(kind);
        m.eval();
        using var w0 = a.Weight.detach().clone();
        Perturb(a, 3);
        using var x = Input();
        using var yUnmerged = m.call(x);
        using var yBase = BaseOut(a, x);
        Assert.True(MaxAbsDiff(yUnmerged, yBase) > 1e-2, "perturbing the adapter must change the output");
        using var delta = a.DeltaWeight();

        a.Merge();
        Assert.True(a.IsMerged);
        Assert.True(MaxAbsDiff(a.Weight.sub(w0), delta) < 1e-5, "merged W - W0 must equal DeltaWeight()");
        using var yMerged = m.call(x);
        Assert.True(MaxAbsDiff(yMerged, yUnmerged) < 1e-5, $"{kind}: merged vs unmerged {MaxAbsDiff(yMerged, yUnmerged)}");
        using var deltaWhileMerged = a.DeltaWeight();
        Assert.True(MaxAbsDiff(deltaWhileMerged, delta) < 1e-5);

        Assert.Throws<InvalidOperationException>(() => a.Merge());
        a.Unmerge();
        Assert.False(a.IsMerged);
        Assert.True(MaxAbsDiff(a.Weight, w0) < 1e-6, $"{kind}: unmerge error {MaxAbsDiff(a.Weight, w0)}");
        Assert.Throws<InvalidOperationException>(() => a.Unmerge());
        using var yAgain = m.call(x);
        Assert.True(MaxAbsDiff(yAgain, yUnmerged) < 1e-5);
    }

    [Theory, MemberData(nameof(KindNames))]
    public void Only_adapter_parameters_receive_gradients(string kind)
    {
        var (m, a) = Build(kind);
        Perturb(a, 4);
        m.train();
        using var x = Input();
        using var loss = m.call(x).square().sum();
        loss.backward();
        var trainable = a.TrainableParameters.Select(p => p.Handle).ToHashSet();
        int withGrad = 0;
        foreach (var (name, p) in m.named_parameters())
        {
            if (trainable.Contains(p.Handle))
            {
                Assert.True(p.requires_grad, $"{kind}: {name} must be trainable");
                using var g = p.grad;
                Assert.NotNull(g);
                Assert.True(g!.abs().sum().item<float>() > 0, $"{kind}: {name} got a zero gradient");
                withGrad++;
            }
            else
            {
                Assert.False(p.requires_grad, $"{kind}: {name} must be frozen");
                Assert.Null(p.grad);
            }
        }
        Assert.Equal(a.TrainableParameters.Count, withGrad);
        Assert.Null(a.Weight.grad);
    }

    [Theory, MemberData(nameof(KindNames))]
    public void SaveThenLoad_AnyKind_IsExactWithPeftKeysAndTheSavedConfig(string kind)
    {
        var (m, a) = Build(kind, seed: 21);
        Perturb(a, 6);
        string dir = Path.Combine(TempDir(), "adapter");
        // Non-empty patterns (for modules this test does not build, so the adapter is unchanged) so that dropping or
        // mangling them on load shows. AdaLoRA's rank_pattern is its own (a mask per module), so only alpha_pattern there.
        var saved = Kinds[kind].Config with
        {
            AlphaPattern = new() { ["model.layers.1.self_attn.q_proj"] = 5.5 },
            RankPattern = kind == "adalora" ? new() : new() { ["model.layers.1.self_attn.q_proj"] = 2 },
        };
        AdapterFolder.Save(dir, saved, new Dictionary<string, IAdapter> { [TheSpec.Name] = a });

        using (var f = SafetensorsFile.Open(Path.Combine(dir, AdapterFolder.WeightsFileName)))
        {
            var expected = Kinds[kind].SavedSuffixes.Select(s => "base_model.model.model.layers.0.self_attn.q_proj." + s).OrderBy(s => s, StringComparer.Ordinal);
            Assert.Equal(expected, f.Entries.Select(e => e.Name).OrderBy(s => s, StringComparer.Ordinal));
            Assert.All(f.Entries, e => Assert.Equal("F32", e.Dtype));
            Assert.Equal("pt", f.Metadata["format"]);
        }

        var (m2, a2) = Build(kind, seed: 99); // different init
        using (var _ = torch.no_grad())
        {
            a2.Weight.copy_(a.Weight);
            a2.Bias!.copy_(a.Bias!);
        }
        using var contents = AdapterFolder.Load(dir);
        // What was loaded, field by field: collections by content (records compare them by reference), then every field
        // through the PEFT serialization of both.
        var want = saved with { InferenceMode = true };
        var loaded = contents.Config;
        Assert.Equal(want.GetType(), loaded.GetType());
        Assert.True(loaded.InferenceMode);
        Assert.Equal(want.RankPattern, loaded.RankPattern);
        Assert.Equal(want.AlphaPattern, loaded.AlphaPattern);
        Assert.Equal(want.TargetModules!.Names, loaded.TargetModules!.Names);
        Assert.Equal(want.TargetModules.Pattern, loaded.TargetModules.Pattern);
        Assert.Equal((want.R, want.LoraAlpha, want.InitLoraWeights, want.UseRslora), (loaded.R, loaded.LoraAlpha, loaded.InitLoraWeights, loaded.UseRslora));
        Assert.Equal(AdapterConfigJson.Serialize(want), AdapterConfigJson.Serialize(loaded));
        Assert.Empty(contents.Warnings);
        AdapterFolder.Apply(contents, new Dictionary<string, IAdapter> { [TheSpec.Name] = a2 });
        var s1 = a.GetAdapterState();
        var s2 = a2.GetAdapterState();
        foreach (var k in s1.Keys)
            Assert.Equal(0.0, MaxAbsDiff(s1[k], s2[k]));
        using var x = Input();
        m.eval(); m2.eval();
        using var y1 = m.call(x);
        using var y2 = m2.call(x);
        Assert.Equal(0.0, MaxAbsDiff(y1, y2));
    }
}
