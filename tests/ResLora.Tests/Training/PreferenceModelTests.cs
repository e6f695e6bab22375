using ResLora.Adapters;
using ResLora.Models;
using ResLora.Tests.Infrastructure;
using ResLora.Training;
using ResLora.Training.Preference;
using TorchSharp;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Training;

/// <summary>
/// The model side of preference tuning: adapters switched off give the base model's output for every method, the chunked
/// per-sequence log-probabilities equal a full log-softmax with the same gradients, and the objective wiring passes the
/// summed or length-averaged values each loss defines.
/// </summary>
[Collection("global torch generator")]
public sealed class PreferenceModelTests
{
    private static AdapterConfigBase Config(string method) =>
        AdapterMethods.Build(new MethodSpec { Method = method, Rank = 4, Alpha = 8, Targets = ModuleTargets.AllLinear, TotalSteps = 10 }).Config;

    [Theory]
    [InlineData("lora")]
    [InlineData("dora")]
    [InlineData("reslora-is")]
    [InlineData("reslora-bs")]
    [InlineData("reslora-ms")]
    [InlineData("adalora")]
    [InlineData("loha")]
    [InlineData("lokr")]
    [InlineData("ia3")]
    [InlineData("vera")]
    public void AdaptersSwitchedOff_GiveTheSeparatelyBuiltBaseModelsLogits(string method)
    {
        using var reference = TinyModels.Build(TinyModels.Config(), seed: 4);
        using var adapted = AdaptedCopy(reference, Config(method));
        adapted.eval();
        reference.eval();
        using var ids = TinyModels.RandomIds(2, 7, 64, seed: 9);
        using var _ = torch.no_grad();
        using var expected = reference.forward(ids);
        using var on = adapted.forward(ids);
        Assert.True(MaxAbsDiff(on, expected) > 1e-4, $"{method}: the perturbed adapters must change the output for this test to mean anything");
        Tensor off;
        using (AdapterSwitch.Off(adapted)) off = adapted.forward(ids);
        using (off)
        {
            // LoRA-family layers return the same linear op as the base model: bit for bit. DoRA adds the bias apart.
            if (method is "lora" or "reslora-is" or "reslora-bs" or "reslora-ms" or "ia3" or "vera") Assert.True(off.allclose(expected, 0, 0), $"{method}: max diff {MaxAbsDiff(off, expected)}");
            else Assert.True(MaxAbsDiff(off, expected) < 1e-6, $"{method}: max diff {MaxAbsDiff(off, expected)}");
        }
        Assert.False(AdapterSwitch.IsOff);
        using var again = adapted.forward(ids);
        Assert.True(again.allclose(on, 0, 0), "leaving the scope restores the adapted model exactly");
    }

    [Fact]
    public void AdaptersSwitchedOff_RefusedWhileMerged()
    {
        using var reference = TinyModels.Build(TinyModels.Config(), seed: 4);
        using var adapted = AdaptedCopy(reference, Config("lora"));
        AdapterModel.MergeAll(adapted);
        Assert.Contains("unmerge", Assert.Throws<InvalidOperationException>(() => AdapterSwitch.Off(adapted)).Message);
        Assert.False(AdapterSwitch.IsOff);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ChunkedSequenceLogps_EqualFullLogSoftmax_WithTheSameGradients(bool trainableHead)
    {
        using var reference = TinyModels.Build(TinyModels.Config(), seed: 4);
        using var m = AdaptedCopy(reference, Config("lora"));
        if (trainableHead) m.named_parameters().Single(p => p.name == "lm_head.weight").parameter.requires_grad = true;
        m.eval();
        using var ids = TinyModels.RandomIds(4, 9, 64, seed: 3);
        using var labels = ids.clone();
        labels[0, ..3] = torch.tensor(-100L); // a prompt
        labels[2, ..6] = torch.tensor(-100L);
        labels[3, 7..] = torch.tensor(-100L); // padding at the end
        var weights = torch.tensor(new float[] { 0.3f, -1.2f, 2f, 0.7f });
        var trainable = m.parameters().Where(p => p.requires_grad).ToList();

        m.LossChunkElements = 64 * 5; // chunks of 5 rows: several per batch
        var (sum, tokens) = m.SequenceLogps(m.HiddenStates(ids, null), labels);
        (sum * weights).sum().backward();
        var chunked = trainable.Select(p => p.grad!.clone()).ToList();
        foreach (var p in trainable) p.grad!.zero_();

        var (full, _, fullTokens) = PreferenceLosses.SequenceLogps(m.forward(ids, null), labels);
        (full * weights).sum().backward();
        Assert.True(MaxAbsDiff(sum, full) < 1e-5, $"sums differ by {MaxAbsDiff(sum, full)}");
        Assert.Equal(fullTokens.data<long>().ToArray(), tokens.data<long>().ToArray());
        Assert.Equal(new long[] { 6, 8, 3, 6 }, tokens.data<long>().ToArray());
        // float32 summation order differs (per-row gradients scaled, then reduced): 1e-5 relative to the largest entry.
        for (int i = 0; i < trainable.Count; i++)
        {
            double scale = trainable[i].grad!.abs().max().item<float>();
            Assert.True(scale > 0 && MaxAbsDiff(chunked[i], trainable[i].grad!) < 1e-5 * scale, $"gradient {i} differs by {MaxAbsDiff(chunked[i], trainable[i].grad!)} (largest {scale})");
        }
    }

    [Fact]
    public void AdapterOffReference_EqualsTheBaseModelsLogpsExactly_AndInitialWeightsReferenceIgnoresLaterUpdates()
    {
        using var reference = TinyModels.Build(TinyModels.Config(), seed: 4);
        using var m = AdaptedCopy(reference, Config("lora"));
        var pairs = new[]
        {
            new PreferencePair(new[] { 1, 2 }, new[] { 1, 2, 5, 6 }, new[] { -100, -100, 5, 6 }, new[] { 1, 2, 7 }, new[] { -100, -100, 7 }),
            new PreferencePair(new[] { 3 }, new[] { 3, 9, 9, 9 }, new[] { -100, 9, 9, 9 }, new[] { 3, 4, 4 }, new[] { -100, 4, 4 }),
        };
        using var batch = PreferenceData.Collate(pairs, padId: 0);
        using var off = PreferenceReference.AdapterOff(m);
        using var got = off.SequenceLogps(batch);
        reference.eval();
        Tensor expected;
        using (torch.no_grad()) expected = reference.SequenceLogps(reference.HiddenStates(batch.InputIds, batch.AttentionMask), batch.Labels).Sum;
        Assert.True(got.allclose(expected, 0, 0), $"max diff {MaxAbsDiff(got, expected)}");

        using var initial = PreferenceReference.InitialWeights(m, "test");
        using var before = initial.SequenceLogps(batch);
        using (torch.no_grad())
            foreach (var p in m.parameters().Where(p => p.requires_grad)) p.add_(0.05);
        using var after = initial.SequenceLogps(batch);
        Assert.True(after.allclose(before, 0, 0), "the initial-weights reference must not see later updates");
        m.eval();
        Tensor now;
        using (torch.no_grad()) now = m.SequenceLogps(m.HiddenStates(batch.InputIds, batch.AttentionMask), batch.Labels).Sum;
        Assert.True(MaxAbsDiff(now, before) > 1e-4, "the updated policy differs from its reference");
    }

    [Fact]
    public void Objective_PassesSumsToDpo_AndLengthAveragesToIpoOrpoSimpo()
    {
        // Rows: chosen0, rejected0, chosen1, rejected1.
        var sum = torch.tensor(new float[] { -4f, -9f, -2f, -3f });
        var tokens = torch.tensor(new long[] { 2, 3, 1, 2 });
        var refSum = torch.tensor(new float[] { -5f, -8f, -2.5f, -2f });
        PreferenceTask Task(PreferenceOptions o) => new(TinyModels.Build(TinyModels.Config(), seed: 1), Array.Empty<PreferencePair>(), Array.Empty<PreferencePair>(), 0, o,
            o.NeedsReference ? PreferenceReference.AdapterOff(TinyModels.Build(TinyModels.Config(), seed: 1)) : null);

        // DPO, β 0.1: x = (π_c − π_r) − (ref_c − ref_r) per pair: (5 − 3) = 2 and (1 − (−0.5)) = 1.5.
        double Dpo(double x) => -Math.Log(1 / (1 + Math.Exp(-0.1 * x)));
        var dpo = Task(new PreferenceOptions()).Objective(sum, tokens, refSum);
        Assert.Equal((Dpo(2) + Dpo(1.5)) / 2, dpo.Loss.item<float>(), 6);
        Assert.Equal((0.1 * 1 + 0.1 * 0.5) / 2, dpo.Metrics.RewardsChosen, 6);

        // IPO, β 0.5 over averages: policy −2, −3, −2, −1.5; reference −2.5, −8/3, −2.5, −1: x = 1 − (1/6) and 0.5 − (−1.5).
        var ipo = Task(new PreferenceOptions { Objective = PreferenceObjective.Ipo, Beta = 0.5 }).Objective(sum, tokens, refSum);
        double x1 = 1 - (-2.5 + 8.0 / 3), x2 = -0.5 - (-1.5);
        Assert.Equal((Math.Pow(x1 - 1, 2) + Math.Pow(x2 - 1, 2)) / 2, ipo.Loss.item<float>(), 5);

        // SimPO, β 2, γ 0.5 over averages: z = 2·(a − b) − 0.5: a − b = 1 and −0.5.
        double Sig(double z) => -Math.Log(1 / (1 + Math.Exp(-z)));
        var simpo = Task(new PreferenceOptions { Objective = PreferenceObjective.SimPo }).Objective(sum, tokens, null);
        Assert.Equal((Sig(2 * 1 - 0.5) + Sig(2 * -0.5 - 0.5)) / 2, simpo.Loss.item<float>(), 5);

        // ORPO: the NLL term is the chosen tokens' mean: (4 + 2) / 3.
        var orpo = Task(new PreferenceOptions { Objective = PreferenceObjective.Orpo }).Objective(sum, tokens, null);
        Assert.Equal(2.0, orpo.Metrics.NllLoss!.Value, 5);
    }
}
