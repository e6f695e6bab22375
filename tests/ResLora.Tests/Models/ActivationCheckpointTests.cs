using ResLora.Adapters;
using ResLora.Models;
using ResLora.Quantization;
using ResLora.Tests.Infrastructure;
using ResLora.Training;
using TorchSharp;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>Tests whose dropout masks come from libtorch's process-wide generator between a forward and its backward: run alone.</summary>
[CollectionDefinition("global torch generator", DisableParallelization = true)]
public sealed class GlobalGeneratorCollection
{
}

/// <summary>--grad-checkpoint: recomputing each decoder layer in backward gives the gradients of the plain run, bit for bit.</summary>
[Collection("global torch generator")]
public sealed class ActivationCheckpointTests
{
    private static AdapterConfigBase Config(string method, double dropout) =>
        AdapterMethods.Build(new MethodSpec { Method = method, Rank = 4, Alpha = 8, Dropout = dropout, Targets = ModuleTargets.AllLinear, TotalSteps = 10 }).Config;

    /// <summary>A model with the method on every decoder linear, its adapter perturbed so that every factor gets a gradient.</summary>
    private static CausalLM Build(CausalLM reference, string method, double dropout, bool checkpoint, IPackedWeightFormat? packed = null)
    {
        var m = AdaptedCopy(reference, Config(method, dropout), packed);
        m.GradientCheckpointing = checkpoint;
        return m;
    }

    /// <summary>
    /// One forward/backward under seed 5; the loss, the gradients by name, the next draw of the global generator, and how
    /// often layer 0's q_proj ran (twice per step when its layer is recomputed).
    /// </summary>
    private static (float Loss, Dictionary<string, Tensor?> Grads, float NextDraw, int QProjCalls) Step(CausalLM m, Tensor ids)
    {
        var q = (nn.Module<Tensor, Tensor>)m.named_modules().Single(x => x.name == "model.layers.0.self_attn.q_proj").module;
        int calls = 0;
        var hook = q.register_forward_hook((_, _, y) => { calls++; return y; });
        torch.manual_seed(5);
        using var scope = torch.NewDisposeScope();
        var (loss, _) = Trainer.CausalLmLoss(m.forward(ids), ids);
        loss.backward();
        hook.remove();
        var grads = m.named_parameters().Where(p => p.parameter.requires_grad)
            .ToDictionary(p => p.name, p => p.parameter.grad?.clone().DetachFromDisposeScope());
        float next = torch.rand(1).item<float>();
        return (loss.item<float>(), grads, next, calls);
    }

    /// <summary>LoRA and DoRA without and with dropout, and every other method that allows checkpointing, with dropout.</summary>
    public static TheoryData<string, double> Cases()
    {
        var d = new TheoryData<string, double> { { "lora", 0.0 }, { "dora", 0.0 } };
        foreach (var c in AdapterMethods.Contenders(rank: 4))
            if (new AdapterPlan(Config(c.Label, 0.2)).CheckpointRefusal is null) d.Add(c.Label, 0.2);
        return d;
    }

    [Theory, MemberData(nameof(Cases))]
    public void Checkpointed_Gradients_EqualThePlainRunExactly(string method, double dropout)
    {
        var c = TinyModels.Config();
        using var reference = TinyModels.Build(c, seed: 6);
        using var ids = TinyModels.RandomIds(3, 20, c.VocabSize, seed: 8);
        using var plain = Build(reference, method, dropout, checkpoint: false);
        using var ckpt = Build(reference, method, dropout, checkpoint: true);
        var a = Step(plain, ids);
        var b = Step(ckpt, ids);
        Assert.Equal((1, 2), (a.QProjCalls, b.QProjCalls)); // the checkpointed layer really was recomputed
        Assert.Equal(a.Loss, b.Loss);
        Assert.Equal(a.Grads.Keys.OrderBy(k => k), b.Grads.Keys.OrderBy(k => k));
        // LoHa/LoKr's --dropout is module dropout: a skipped module gets no gradient, in both runs alike.
        Assert.True(a.Grads.Values.Count(g => g is not null && g.abs().sum().item<float>() > 0) >= a.Grads.Count / 2, $"{method}: most parameters must get a gradient");
        foreach (var (name, g) in a.Grads)
        {
            var h = b.Grads[name];
            Assert.Equal(g is null, h is null);
            if (g is null) continue;
            Assert.True(g.equal(h!).all().item<bool>(), $"{method} dropout {dropout}: {name} differs by {(g - h!).abs().max().item<float>()}");
        }
        // The recompute replayed the saved generator state and restored the run's: the next draw is the plain run's.
        Assert.Equal(a.NextDraw, b.NextDraw);
        // ResLoRA's norm windows count graph-building forwards only: one push per step either way.
        var stats = (CausalLM m) => AdapterModel.FindAdapters(m).Select(x => x.Adapter).OfType<ResLoraLinear>().Select(l => (l.WindowCount, l.InputNormMean)).ToList();
        Assert.Equal(stats(plain), stats(ckpt));
        if (method.StartsWith("reslora", StringComparison.Ordinal)) Assert.All(stats(ckpt), s => Assert.Equal(1, s.WindowCount));
        foreach (var g in a.Grads.Values.Concat(b.Grads.Values)) g?.Dispose();
    }

    [Fact]
    public void Checkpointed_OnAnNf4Base_EqualsThePlainRunExactly()
    {
        var c = TinyModels.Config();
        using var reference = TinyModels.Build(c, seed: 6);
        using var ids = TinyModels.RandomIds(3, 20, c.VocabSize, seed: 8);
        using var plain = Build(reference, "lora", 0.1, checkpoint: false, PackedFormats.Nf4);
        using var ckpt = Build(reference, "lora", 0.1, checkpoint: true, PackedFormats.Nf4);
        var a = Step(plain, ids);
        var b = Step(ckpt, ids);
        Assert.Equal(a.Loss, b.Loss);
        foreach (var (name, g) in a.Grads)
            Assert.True(g!.equal(b.Grads[name]!).all().item<bool>(), $"{name} differs");
    }

    [Fact]
    public void Checkpointing_OnlyWhileTrainingWithGradients()
    {
        var c = TinyModels.Config();
        using var reference = TinyModels.Build(c, seed: 6);
        using var ids = TinyModels.RandomIds(2, 10, c.VocabSize, seed: 8);
        using var plain = Build(reference, "lora", 0.0, checkpoint: false);
        using var ckpt = Build(reference, "lora", 0.0, checkpoint: true);
        plain.eval();
        ckpt.eval();
        using var _ = torch.no_grad();
        using var y1 = plain.forward(ids);
        using var y2 = ckpt.forward(ids);
        Assert.True(y1.equal(y2).all().item<bool>());
    }

    [Theory]
    [InlineData("reslora-is", "is")]
    [InlineData("reslora-ms", "ms")]
    public void ResLora_IsAndMs_RefuseCheckpointing_WithTheReason(string method, string structure)
    {
        var c = TinyModels.Config();
        using var m = ModelFamilies.CreateCausalLM(c, new AdapterPlan(Config(method, 0)), ScalarType.Float32, CPU);
        var e = Assert.Throws<UserInputException>(() => m.GradientCheckpointing = true);
        Assert.StartsWith("--grad-checkpoint: ResLoRA's " + structure + " structure passes live tensors", e.Message);
        Assert.Contains("spec §7.3", e.Message);
        Assert.Contains("--structure bs", e.Message);
        Assert.False(m.GradientCheckpointing);
    }
}
