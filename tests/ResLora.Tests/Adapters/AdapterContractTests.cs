using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using TorchSharp;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters;

/// <summary>
/// One contract every adapter kind must satisfy. The kinds are every contender of every registered method
/// (<see cref="AdapterMethods.Contenders"/>, so a new method is covered by adding it to the registry), plus a few
/// extra configurations of the LoRA family.
/// </summary>
public sealed class AdapterContractTests
{
    private static readonly ModuleTargets Q = ModuleTargets.List("q_proj");

    private static readonly Dictionary<string, AdapterConfigBase> Kinds = BuildKinds();

    private static Dictionary<string, AdapterConfigBase> BuildKinds()
    {
        var d = new Dictionary<string, AdapterConfigBase>(StringComparer.Ordinal);
        // A standalone ResLoRA block is a chain start: is merges exactly with α = 1 (W + 2sBA), ms with α = 0, bs exactly.
        foreach (var c in AdapterMethods.Contenders(rank: 3))
            d[c.Label] = AdapterMethods.Build(c.Spec with { Alpha = 6, Targets = Q, TotalSteps = 10 }).Config;
        d["lora-rslora"] = new LoraConfig { R = 4, LoraAlpha = 6, UseRslora = true, TargetModules = Q };
        d["lora-gaussian"] = new LoraConfig { R = 2, LoraAlpha = 4, InitLoraWeights = LoraInit.Gaussian, TargetModules = Q };
        return d;
    }

    /// <summary>PEFT's tensor names, pinned for the methods whose format PEFT defines (a new method is checked against its prefixes).</summary>
    private static readonly Dictionary<string, string[]> PeftSuffixes = new()
    {
        ["LORA"] = new[] { "lora_A.weight", "lora_B.weight" },
        ["LORA+dora"] = new[] { "lora_A.weight", "lora_B.weight", "lora_magnitude_vector" },
        ["LOHA"] = new[] { "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b" },
        ["LOKR"] = new[] { "lokr_w1", "lokr_w2_a", "lokr_w2_b" },
        ["ADALORA"] = new[] { "lora_A", "lora_B", "lora_E" },
        ["RESLORA"] = new[] { "lora_A.weight", "lora_B.weight" },
        ["REFLORA"] = new[] { "lora_A.weight", "lora_B.weight" },
        ["ROLORA"] = new[] { "lora_A.weight", "lora_B.weight" },
        ["VERA"] = new[] { "vera_lambda_b", "vera_lambda_d" },
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
        var plan = new AdapterPlan(Kinds[kind], new Generator(seed));
        var m = plan.Create(TheSpec, ScalarType.Float32, CPU);
        var a = Assert.IsAssignableFrom<IAdapter>(m);
        return (m, a);
    }

    private static Tensor Input(ulong seed = 5) => torch.randn(new long[] { 3, 4, 7 }, generator: new Generator(seed));

    private static Tensor BaseOut(IAdapter a, Tensor x) => nn.functional.linear(x, a.Weight, a.Bias);

    [Theory, MemberData(nameof(KindNames))]
    public void ZeroInit_LeavesOutputEqualToTheBase(string kind)
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
    public void Merge_EqualsUnmergedForward_IsRefusedTwice_AndUnmergeRestoresBitExactly(string kind)
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

        using var wMerged = a.Weight.detach().clone();
        Assert.Contains("already merged", Assert.Throws<InvalidOperationException>(() => a.Merge()).Message);
        Assert.True(a.Weight.eq(wMerged).all().item<bool>(), "a refused second merge must not touch the weight");
        a.Unmerge();
        Assert.False(a.IsMerged);
        Assert.True(a.Weight.eq(w0).all().item<bool>(), $"{kind}: unmerge must restore W0 bit for bit (max |Δ| {MaxAbsDiff(a.Weight, w0)})");
        Assert.Throws<InvalidOperationException>(() => a.Unmerge());
        using var yAgain = m.call(x);
        Assert.True(MaxAbsDiff(yAgain, yUnmerged) < 1e-5);
    }

    [Theory, MemberData(nameof(KindNames))]
    public void Backward_GivesGradientsOnlyToAdapterParameters(string kind)
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
    public void SaveThenLoad_IsExact_WithPeftKeyNames(string kind)
    {
        var (m, a) = Build(kind, seed: 21);
        Perturb(a, 6);
        string dir = Path.Combine(TempDir(), "adapter");
        // Non-empty patterns (for a module this test does not build) so that dropping one on the way is visible.
        var config = Kinds[kind];
        if (config is LowRankConfigBase lowRank)
        {
            lowRank = lowRank with { AlphaPattern = new() { ["k_proj"] = 5 } };
            config = lowRank is AdaLoraConfig ? lowRank : lowRank with { RankPattern = new() { ["k_proj"] = 2 } };
        }
        AdapterFolder.Save(dir, config, new Dictionary<string, IAdapter> { [TheSpec.Name] = a });

        using (var f = SafetensorsFile.Open(Path.Combine(dir, AdapterFolder.WeightsFileName)))
        {
            string peftKind = config.PeftType + (config is LoraConfig { UseDora: true } ? "+dora" : "");
            var suffixes = PeftSuffixes.TryGetValue(peftKind, out var pinned) ? pinned : a.GetAdapterState().Keys.ToArray();
            var shared = (a as ISharedAdapterState)?.GetSharedState().Keys ?? Enumerable.Empty<string>(); // VeRA: base_model.vera_A / vera_B
            var expected = suffixes.Select(s => "base_model.model.model.layers.0.self_attn.q_proj." + s).Concat(shared).OrderBy(s => s, StringComparer.Ordinal);
            Assert.Equal(expected, f.Entries.Select(e => e.Name).OrderBy(s => s, StringComparer.Ordinal));
            var prefixes = AdapterMethods.For(config).ParameterPrefixes;
            Assert.All(suffixes, s => Assert.Contains(prefixes, p => s.StartsWith(p, StringComparison.Ordinal)));
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
        // What was loaded is what was saved (inference_mode set, as PEFT does), compared field by field through JSON.
        Assert.Equal(AdapterConfigJson.Serialize(config with { InferenceMode = true }), AdapterConfigJson.Serialize(contents.Config));
        Assert.Equal(config.GetType(), contents.Config.GetType());
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
