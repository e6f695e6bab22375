using ResLora.Adapters;
using ResLora.Models;
using ResLora.Quantization;
using ResLora.Tests.Infrastructure;
using ResLora.Training;
using TorchSharp;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>
/// The chunked LM head + cross-entropy (<see cref="LmHeadLoss"/>): the same loss and gradients as the logits of the whole
/// batch scored at once, for a frozen head (gradient taken in forward) and a trainable one (recomputed in backward).
/// </summary>
[Collection("global torch generator")]
public sealed class LmHeadLossTests
{
    private static CausalLM Build(CausalLM reference, string targets, double dropout, IPackedWeightFormat? packed = null, ScalarType dtype = ScalarType.Float32) =>
        AdaptedCopy(reference, AdapterMethods.Build(new MethodSpec { Method = "lora", Rank = 4, Alpha = 8, Dropout = dropout, Targets = ModuleTargets.List(targets.Split(',')), TotalSteps = 10 }).Config, packed, dtype);

    /// <summary>Labels: the ids with a prompt-like masked prefix on row 0 and padding-like masked tail on row 1.</summary>
    private static Tensor Labels(Tensor ids)
    {
        var labels = ids.clone();
        labels[0, ..5] = -100;
        labels[1, ^4..] = -100;
        return labels;
    }

    private static (double Loss, long Tokens, Dictionary<string, Tensor> Grads) Run(CausalLM m, Tensor ids, Tensor labels, bool chunked, double scale = 1.0)
    {
        m.zero_grad();
        using var scope = torch.NewDisposeScope();
        var (loss, n) = chunked ? m.CausalLmLoss(m.HiddenStates(ids), labels) : Trainer.CausalLmLoss(m.forward(ids), labels);
        (loss * scale).backward();
        var grads = m.named_parameters().Where(p => p.parameter.requires_grad)
            .ToDictionary(p => p.name, p => p.parameter.grad!.clone().DetachFromDisposeScope());
        return (loss.item<float>(), n, grads);
    }

    private static void AssertClose(Dictionary<string, Tensor> expected, Dictionary<string, Tensor> actual, double rtol, double atol)
    {
        Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
        foreach (var (name, e) in expected)
        {
            Assert.True(e.abs().max().item<float>() > 1e-6, $"{name}: the reference gradient is zero, so the comparison proves nothing");
            Assert.True(e.allclose(actual[name], rtol, atol), $"{name}: max |Δ| {(e - actual[name]).abs().max().item<float>():g}, max |g| {e.abs().max().item<float>():g}");
        }
    }

    [Theory]
    [InlineData(false, 3)]  // own lm_head, 3 rows per chunk (many chunks, a ragged last one)
    [InlineData(true, 7)]   // tied embeddings as the head
    [InlineData(false, 10_000)] // one chunk
    public void FrozenHead_LossAndGradients_EqualTheWholeBatchLogits(bool tied, int rowsPerChunk)
    {
        var c = TinyModels.Config(tied: tied);
        using var reference = TinyModels.Build(c, seed: 6);
        using var m = Build(reference, "q_proj,v_proj,down_proj", dropout: 0);
        using var ids = TinyModels.RandomIds(3, 16, c.VocabSize, seed: 8);
        using var labels = Labels(ids);
        var whole = Run(m, ids, labels, chunked: false);
        m.LossChunkElements = (long)rowsPerChunk * c.VocabSize;
        var chunked = Run(m, ids, labels, chunked: true);
        Assert.Equal(3 * 15 - 4 - 4, chunked.Tokens); // row 0's first label is never predicted, so its mask hides 4
        Assert.Equal(whole.Tokens, chunked.Tokens);
        Assert.Equal(whole.Loss, chunked.Loss, 5);
        AssertClose(whole.Grads, chunked.Grads, rtol: 1e-4, atol: 1e-7);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)] // tied embeddings as the head
    public void FrozenBf16Head_LossAndGradients_EqualTheWholeBatchLogits(bool tied)
    {
        // A bf16 base with float32 adapters: both paths score the same bf16 logits in float32 and round the mean's gradient
        // to bf16 once. Bit-equal here; a chunked loss that rounded the sum's gradient and then scaled it by 1/n in bf16
        // was 1 % off (‖Δ‖/‖g‖ at layer 0's lora_A), so the bound of 1e-3 tells the two apart.
        var c = TinyModels.Config(tied: tied);
        using var reference = TinyModels.Build(c, seed: 6);
        using var m = Build(reference, "q_proj,v_proj", dropout: 0, dtype: ScalarType.BFloat16);
        Assert.Equal(ScalarType.BFloat16, m.named_parameters().First(p => p.name.EndsWith("embed_tokens.weight", StringComparison.Ordinal)).parameter.dtype);
        using var ids = TinyModels.RandomIds(3, 16, c.VocabSize, seed: 8);
        using var labels = Labels(ids);
        var whole = Run(m, ids, labels, chunked: false);
        m.LossChunkElements = 4L * c.VocabSize;
        var chunked = Run(m, ids, labels, chunked: true);
        Assert.Equal(whole.Tokens, chunked.Tokens);
        Assert.Equal(whole.Loss, chunked.Loss, 4);
        Assert.Equal(whole.Grads.Keys.Order(), chunked.Grads.Keys.Order());
        foreach (var (name, e) in whole.Grads)
        {
            double rel = (e - chunked.Grads[name]).norm().item<float>() / e.norm().item<float>();
            Assert.True(rel < 1e-3, $"{name}: ‖Δ‖/‖g‖ = {rel:g}");
        }
    }

    [Fact]
    public void FrozenHead_GradientScalesWithTheIncomingGradient()
    {
        // Gradient accumulation and data-parallel weighting scale the loss; the gradient kept from forward must follow.
        var c = TinyModels.Config();
        using var reference = TinyModels.Build(c, seed: 6);
        using var m = Build(reference, "q_proj,v_proj", dropout: 0);
        using var ids = TinyModels.RandomIds(2, 12, c.VocabSize, seed: 9);
        m.LossChunkElements = 5L * c.VocabSize;
        var one = Run(m, ids, ids, chunked: true);
        var scaled = Run(m, ids, ids, chunked: true, scale: 0.37);
        foreach (var (name, g) in one.Grads)
            Assert.True((g * 0.37).allclose(scaled.Grads[name], 1e-4, 1e-7), $"{name}: {(g * 0.37).abs().max().item<float>():g} vs {scaled.Grads[name].abs().max().item<float>():g}");
    }

    [Fact]
    public void TrainableHead_RecomputedInBackward_EqualsTheWholeBatchLogits()
    {
        var c = TinyModels.Config();
        using var reference = TinyModels.Build(c, seed: 6);
        using var m = Build(reference, "lm_head,q_proj", dropout: 0);
        Assert.Contains(m.named_parameters(), p => p.name.StartsWith("lm_head.", StringComparison.Ordinal) && p.parameter.requires_grad);
        using var ids = TinyModels.RandomIds(3, 16, c.VocabSize, seed: 8);
        using var labels = Labels(ids);
        var whole = Run(m, ids, labels, chunked: false, scale: 0.5);
        m.LossChunkElements = 4L * c.VocabSize;
        var chunked = Run(m, ids, labels, chunked: true, scale: 0.5);
        Assert.Equal(whole.Loss, chunked.Loss, 5);
        AssertClose(whole.Grads, chunked.Grads, rtol: 1e-4, atol: 1e-7);
    }

    [Fact]
    public void TrainableHead_WithDropout_ReplaysTheForwardMasksInBackward()
    {
        // Reference: the same chunks through the head with an ordinary graph under the same seed. If backward drew new
        // dropout masks, the lm_head adapter's gradients would differ (dropout 0.5 changes half the inputs).
        var c = TinyModels.Config();
        using var reference = TinyModels.Build(c, seed: 6);
        using var m = Build(reference, "lm_head", dropout: 0.5);
        using var ids = TinyModels.RandomIds(2, 16, c.VocabSize, seed: 8);
        long rows = 4;
        m.LossChunkElements = rows * c.VocabSize;

        m.zero_grad();
        torch.manual_seed(11);
        Dictionary<string, Tensor> expected;
        float expectedLoss;
        using (var scope = torch.NewDisposeScope())
        {
            var h = m.HiddenStates(ids)[.., ..^1, ..].reshape(-1, c.HiddenSize);
            var y = ids[.., 1..].reshape(-1);
            var sum = torch.zeros(Array.Empty<long>());
            for (long s = 0; s < h.shape[0]; s += rows)
            {
                long len = Math.Min(rows, h.shape[0] - s);
                sum = sum + nn.functional.cross_entropy(m.Logits(h.narrow(0, s, len)), y.narrow(0, s, len), reduction: nn.Reduction.Sum);
            }
            var loss = sum / h.shape[0];
            loss.backward();
            expectedLoss = loss.item<float>();
            expected = m.named_parameters().Where(p => p.parameter.requires_grad).ToDictionary(p => p.name, p => p.parameter.grad!.clone().DetachFromDisposeScope());
        }
        torch.manual_seed(11);
        var chunked = Run(m, ids, ids, chunked: true);
        Assert.Equal(expectedLoss, chunked.Loss, 5);
        AssertClose(expected, chunked.Grads, rtol: 1e-4, atol: 1e-7);
    }

    [Fact]
    public void PackedBase_FourBitHead_LossAndGradientsEqualTheWholeBatchLogits()
    {
        var c = TinyModels.Config(vocab: 96);
        using var reference = TinyModels.Build(c, seed: 6);
        using var m = Build(reference, "q_proj,o_proj", dropout: 0, packed: PackedFormats.Nf4);
        using var ids = TinyModels.RandomIds(2, 16, c.VocabSize, seed: 8);
        using var labels = Labels(ids);
        var whole = Run(m, ids, labels, chunked: false);
        m.LossChunkElements = 6L * c.VocabSize;
        var chunked = Run(m, ids, labels, chunked: true);
        Assert.Equal(whole.Loss, chunked.Loss, 5);
        AssertClose(whole.Grads, chunked.Grads, rtol: 1e-4, atol: 1e-7);
    }

    [Fact]
    public void NoLossTokens_GivesZeroThatBackpropagates()
    {
        var c = TinyModels.Config();
        using var reference = TinyModels.Build(c, seed: 6);
        using var m = Build(reference, "q_proj", dropout: 0);
        using var ids = TinyModels.RandomIds(2, 8, c.VocabSize, seed: 8);
        using var labels = torch.full_like(ids, -100);
        var (loss, n) = m.CausalLmLoss(m.HiddenStates(ids), labels);
        Assert.Equal(0, n);
        Assert.Equal(0f, loss.item<float>());
        loss.backward(); // reaches the graph: no "does not require grad" error
        Assert.All(m.parameters().Where(p => p.requires_grad), p => Assert.Equal(0f, p.grad!.abs().sum().item<float>()));
    }

    [Fact]
    public void WithoutGradients_ChunkedLossEqualsTheWholeBatchLoss()
    {
        var c = TinyModels.Config();
        using var m = TinyModels.Build(c, seed: 6);
        m.eval();
        using var ids = TinyModels.RandomIds(3, 16, c.VocabSize, seed: 8);
        using var labels = Labels(ids);
        using var noGrad = torch.no_grad();
        var (whole, _) = Trainer.CausalLmLoss(m.forward(ids), labels);
        m.LossChunkElements = 5L * c.VocabSize;
        var (chunked, n) = m.CausalLmLoss(m.HiddenStates(ids), labels);
        Assert.Equal(37, n);
        Assert.False(chunked.requires_grad);
        Assert.Equal(whole.item<float>(), chunked.item<float>(), 5);
    }
}
