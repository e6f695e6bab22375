using ResLora.Adapters;
using ResLora.Models;
using ResLora.Quantization;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>
/// The custom autograd functions (packed matmul, layer checkpoint, chunked LM loss) free their incoming and returned
/// gradients during backward instead of leaving them to the training step's dispose scope: otherwise every packed
/// projection of every layer kept two activation-sized tensors alive until the step ended.
/// </summary>
[Collection("global torch generator")]
public sealed class CustomGradientsTests
{
    private static CausalLM Build(int layers, bool checkpoint)
    {
        var c = TinyModels.Config() with { NumHiddenLayers = layers };
        using var reference = TinyModels.Build(c, seed: 6);
        var spec = new MethodSpec { Method = "lora", Rank = 4, Alpha = 8, Targets = ModuleTargets.List("q_proj", "v_proj"), TotalSteps = 10 };
        var m = AdaptedCopy(reference, AdapterMethods.Build(spec).Config, PackedFormats.Int8);
        m.GradientCheckpointing = checkpoint;
        return m;
    }

    /// <summary>Managed tensors still alive on this thread after backward, beyond those alive before it.</summary>
    private static long LiveAfterBackward(int layers, bool checkpoint)
    {
        using var m = Build(layers, checkpoint);
        using var ids = TinyModels.RandomIds(2, 12, m.Config.VocabSize, seed: 8);
        using var scope = torch.NewDisposeScope();
        var (loss, _) = m.CausalLmLoss(m.HiddenStates(ids), ids);
        long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        loss.backward();
        long after = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Assert.All(m.parameters().Where(p => p.requires_grad), p => Assert.True(p.grad!.abs().sum().item<float>() > 0));
        return after - before;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Backward_LeavesNoGradientPerLayerAlive(bool checkpoint)
    {
        // 7 packed projections per layer: kept, each call's two gradients would add 14 live tensors per layer.
        long two = LiveAfterBackward(2, checkpoint);
        long six = LiveAfterBackward(6, checkpoint);
        Assert.True(six - two <= 2, $"live tensors after backward: {two} with 2 layers, {six} with 6");
        Assert.True(six <= 8, $"{six} tensors left alive by backward with 6 layers");
    }
}
