using System.Text.Json;
using ResLora.Training.Preference;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Training;

public sealed class PreferenceLossesTests
{
    private static Tensor V(params float[] values) => torch.tensor(values);

    private static double Item(Tensor t) => t.to_type(ScalarType.Float64).item<double>();

    // ---- DPO ----

    [Fact]
    public void Dpo_HandWorkedPair_MatchesFormulaAndTrlMetrics()
    {
        // π_c = −10, π_r = −12, ref_c = ref_r = −11: x = (−10 + 12) − 0 = 2; β = 0.1 → βx = 0.2;
        // −log σ(0.2) = log(1 + e^−0.2) = log(1.8187308) = 0.5981389.
        var r = PreferenceLosses.Dpo(V(-10), V(-12), V(-11), V(-11), beta: 0.1);
        Assert.Equal(0.5981389, Item(r.Loss), 6);
        Assert.Equal(0.1, r.Metrics.RewardsChosen, 6);     // β(π_c − ref_c) = 0.1·1
        Assert.Equal(-0.1, r.Metrics.RewardsRejected, 6);  // β(π_r − ref_r) = 0.1·(−1)
        Assert.Equal(0.2, r.Metrics.RewardsMargins, 6);
        Assert.Equal(1.0, r.Metrics.RewardsAccuracies);
        Assert.Equal(-10.0, r.Metrics.LogpsChosen, 6);
        Assert.Equal(-12.0, r.Metrics.LogpsRejected, 6);
        Assert.Null(r.Metrics.NllLoss);
    }

    [Fact]
    public void Dpo_LabelSmoothing_AddsEpsilonTimesBetaX()
    {
        // −log σ(−z) = −log σ(z) + z, so with ε = 0.1 and z = βx = 0.2:
        // 0.9·0.5981389 + 0.1·0.7981389 = 0.5981389 + 0.1·0.2 = 0.6181389.
        var r = PreferenceLosses.Dpo(V(-10), V(-12), V(-11), V(-11), beta: 0.1, labelSmoothing: 0.1);
        Assert.Equal(0.6181389, Item(r.Loss), 6);
    }

    [Fact]
    public void Dpo_Batch_AveragesLossAndCountsAccuracy()
    {
        // Pair 1 as above (x = 2 → 0.5981389); pair 2 flipped (x = −2 → −log σ(−0.2) = 0.7981389); mean 0.6981389.
        var r = PreferenceLosses.Dpo(V(-10, -12), V(-12, -10), V(-11, -11), V(-11, -11), beta: 0.1);
        Assert.Equal(0.6981389, Item(r.Loss), 6);
        Assert.Equal(0.5, r.Metrics.RewardsAccuracies);
        Assert.Equal(0.0, r.Metrics.RewardsMargins, 6);
        Assert.Equal(0.0, r.Metrics.RewardsChosen, 6);  // (0.1 + (−0.1)) / 2
    }

    [Fact]
    public void Dpo_Gradient_RaisingChosenLowersTheLoss()
    {
        // d/dπ_c of −log σ(βx) = −β·σ(−βx) = −0.1·σ(−0.2) = −0.1·0.4501660 = −0.0450166; the reference gets none.
        var pc = V(-10).requires_grad_();
        var rc = V(-11);
        var r = PreferenceLosses.Dpo(pc, V(-12), rc, V(-11), beta: 0.1);
        r.Loss.backward();
        double g = Item(pc.grad!);
        Assert.True(g < 0);
        Assert.Equal(-0.0450166, g, 6);
    }

    [Fact]
    public void Metrics_ToDictionary_UsesTrlNames()
    {
        var r = PreferenceLosses.Dpo(V(-10), V(-12), V(-11), V(-11), beta: 0.1);
        var d = r.Metrics.ToDictionary();
        Assert.Equal(new[] { "logps/chosen", "logps/rejected", "rewards/accuracies", "rewards/chosen", "rewards/margins", "rewards/rejected" },
            d.Keys.OrderBy(k => k, StringComparer.Ordinal));
        Assert.Equal(0.2, d["rewards/margins"], 6);
    }

    // ---- IPO ----

    [Fact]
    public void Ipo_IsZeroAtItsOptimumAndSquaredElsewhere()
    {
        // β = 0.5 → target 1/(2β) = 1. Pair 1: x = (−1 − (−2)) − 0 = 1 → 0; pair 2: x = 3 → (3 − 1)² = 4; mean 2.
        var atOptimum = PreferenceLosses.Ipo(V(-1), V(-2), V(-3), V(-3), beta: 0.5);
        Assert.Equal(0.0, Item(atOptimum.Loss), 7);
        var r = PreferenceLosses.Ipo(V(-1, -1), V(-2, -4), V(-3, -3), V(-3, -3), beta: 0.5);
        Assert.Equal(2.0, Item(r.Loss), 6);
        Assert.Equal(1.0, r.Metrics.RewardsChosen, 6);          // 0.5·(−1 + 3)
        Assert.Equal(0.0, r.Metrics.RewardsRejected, 6); // (0.5·(−2 + 3) + 0.5·(−4 + 3)) / 2 = (0.5 − 0.5) / 2
        Assert.Equal(1.0, r.Metrics.RewardsAccuracies); // chosen rewards 1, 1 exceed rejected 0.5, −0.5
    }

    // ---- ORPO ----

    [Fact]
    public void Orpo_HandWorkedPair_LogOddsOfOneHalfOverOneQuarterIsLn3()
    {
        // a = ln 0.5, b = ln 0.25: odds 1 and 1/3, log OR = ln 3 = 1.0986123; log σ(ln 3) = ln(3/4) = −0.2876821.
        // NLL 0.7, λ = 0.1: loss = 0.7 + 0.1·0.2876821 = 0.7287682. Rewards λ·a = −0.0693147, λ·b = −0.1386294.
        var r = PreferenceLosses.Orpo(V(MathF.Log(0.5f)), V(MathF.Log(0.25f)), torch.tensor(0.7f), lambda: 0.1);
        Assert.Equal(0.7287682, Item(r.Loss), 6);
        Assert.Equal(1.0986123, r.Metrics.LogOddsChosen!.Value, 6);
        Assert.Equal(-0.2876821, r.Metrics.LogOddsRatio!.Value, 6);
        Assert.Equal(0.7, r.Metrics.NllLoss!.Value, 6);
        Assert.Equal(-0.0693147, r.Metrics.RewardsChosen, 6);
        Assert.Equal(-0.1386294, r.Metrics.RewardsRejected, 6);
        Assert.Equal(1.0, r.Metrics.RewardsAccuracies);
        Assert.Contains("log_odds_chosen", r.Metrics.ToDictionary().Keys);
    }

    [Fact]
    public void Orpo_NearCertainChosen_IsAccurateAndItsGradientFinite()
    {
        // a = −1e-6: log(1 − e^a) = log(−expm1(a)) = −13.8155106 (float32 log1p(−exp(a)) would be ~6% off: exp rounds near 1).
        // b = ln 0.5: log(1 − e^b) = ln 0.5. log OR = (a − b) − (−13.8155106 − ln 0.5) = 13.8155101.
        var a = V(-1e-6f).requires_grad_();
        var r = PreferenceLosses.Orpo(a, V(MathF.Log(0.5f)), torch.tensor(1f), lambda: 0.1);
        Assert.Equal(13.8155101, r.Metrics.LogOddsChosen!.Value, 4);
        r.Loss.backward();
        Assert.True(double.IsFinite(Item(a.grad!)));

        // A length-averaged log-probability of exactly 0 (infinite odds) still gives a finite loss and gradient.
        var zero = V(0f).requires_grad_();
        var z = PreferenceLosses.Orpo(zero, V(-1f), torch.tensor(1f), lambda: 0.1);
        Assert.True(double.IsFinite(Item(z.Loss)));
        z.Loss.backward();
        Assert.True(double.IsFinite(Item(zero.grad!)));
    }

    [Fact]
    public void Orpo_Gradient_MatchesFiniteDifferences()
    {
        // Central differences in float64 of the float32 loss, h = 1e-2: agree with autograd to 1e-3 (relative).
        float[] a0 = { -0.8f, -0.3f, -2.0f }, b0 = { -1.1f, -0.5f, -1.9f };
        var a = torch.tensor(a0).requires_grad_();
        PreferenceLosses.Orpo(a, torch.tensor(b0), torch.tensor(new[] { 0.8f, 0.3f, 2.0f }), lambda: 0.5).Loss.backward();
        var grad = a.grad!.data<float>().ToArray();
        for (int i = 0; i < a0.Length; i++)
        {
            double F(float d)
            {
                var x = (float[])a0.Clone();
                x[i] += d;
                return Item(PreferenceLosses.Orpo(torch.tensor(x), torch.tensor(b0), torch.tensor(new[] { 0.8f, 0.3f, 2.0f }), lambda: 0.5).Loss);
            }
            double fd = (F(1e-2f) - F(-1e-2f)) / 2e-2;
            Assert.True(Math.Abs(fd - grad[i]) <= 1e-3 * Math.Max(1, Math.Abs(fd)), $"pair {i}: autograd {grad[i]}, finite difference {fd}");
        }
    }

    // ---- SimPO ----

    [Fact]
    public void SimPo_HandWorkedPair_GammaIsTheFullMargin()
    {
        // β = 2, γ = 1 (TRL's simpo_gamma), a = −1, b = −1.5: z = β(a − b) − γ = 2·0.5 − 1 = 0 → loss ln 2 = 0.6931472.
        var r = PreferenceLosses.SimPo(V(-1f), V(-1.5f), beta: 2, simpoGamma: 1);
        Assert.Equal(0.6931472, Item(r.Loss), 6);
        Assert.Equal(-2.0, r.Metrics.RewardsChosen, 6);   // β·a
        Assert.Equal(-3.0, r.Metrics.RewardsRejected, 6); // β·b
        Assert.Equal(1.0, r.Metrics.RewardsMargins, 6);
        // γ = 0 with ε = 0.1: z = 1, 0.9·log(1 + e^−1) + 0.1·log(1 + e) = 0.9·0.3132617 + 0.1·1.3132617 = 0.4132617.
        var smoothed = PreferenceLosses.SimPo(V(-1f), V(-1.5f), beta: 2, simpoGamma: 0, labelSmoothing: 0.1);
        Assert.Equal(0.4132617, Item(smoothed.Loss), 6);
    }

    [Fact]
    public void SimPo_UsesLengthAveragedLogps_SoResponseLengthDoesNotDecide()
    {
        // Uniform logits over a vocabulary of 4: every token scores −ln 4. The chosen response has 2 tokens, the rejected 5:
        // sums −2.7725887 and −6.9314718 (a 4.16 margin a sum-based loss would reward), means both −1.3862944.
        // SimPO on the means with β = 2, γ = 1: z = 0 − 1 → log(1 + e) = 1.3132617; the same as equal lengths.
        var logits = torch.zeros(2, 7, 4);
        var labels = torch.tensor(new long[,]
        {
            { 5, -100, -100, -100, 1, 2, -100 },
            { 5, -100, 0, 1, 2, 3, 0 },
        });
        var (sum, mean, tokens) = PreferenceLosses.SequenceLogps(logits, labels);
        Assert.Equal(new long[] { 2, 5 }, tokens.data<long>().ToArray());
        Assert.Equal(-2.7725887, Item(sum[0]), 5);
        Assert.Equal(-6.9314718, Item(sum[1]), 5);
        var r = PreferenceLosses.SimPo(mean[0..1], mean[1..2], beta: 2, simpoGamma: 1);
        Assert.Equal(1.3132617, Item(r.Loss), 5);
        Assert.Equal(0.0, r.Metrics.RewardsAccuracies);
    }

    [Fact]
    public void SimPo_Gradient_MatchesFiniteDifferences()
    {
        float[] a0 = { -0.8f, -1.3f }, b0 = { -1.1f, -0.9f };
        var a = torch.tensor(a0).requires_grad_();
        PreferenceLosses.SimPo(a, torch.tensor(b0), beta: 2.5, simpoGamma: 0.7, labelSmoothing: 0.2).Loss.backward();
        var grad = a.grad!.data<float>().ToArray();
        for (int i = 0; i < a0.Length; i++)
        {
            double F(float d)
            {
                var x = (float[])a0.Clone();
                x[i] += d;
                return Item(PreferenceLosses.SimPo(torch.tensor(x), torch.tensor(b0), beta: 2.5, simpoGamma: 0.7, labelSmoothing: 0.2).Loss);
            }
            double fd = (F(1e-2f) - F(-1e-2f)) / 2e-2;
            Assert.True(Math.Abs(fd - grad[i]) <= 1e-3 * Math.Max(1, Math.Abs(fd)), $"pair {i}: autograd {grad[i]}, finite difference {fd}");
            Assert.True(grad[i] < 0); // raising the chosen response lowers the loss
        }
    }

    // ---- SequenceLogps ----

    [Fact]
    public void SequenceLogps_EqualsANaivePerPositionLoop()
    {
        torch.manual_seed(7);
        var logits = torch.randn(3, 6, 11) * 3;
        var labels = torch.tensor(new long[,]
        {
            { 1, 2, 3, 4, 5, 6 },
            { -100, -100, 7, 8, -100, -100 },
            { 0, -100, 10, 0, 9, 1 },
        });
        var (sum, mean, tokens) = PreferenceLosses.SequenceLogps(logits, labels);
        var lab = labels.data<long>().ToArray();
        for (int b = 0; b < 3; b++)
        {
            double s = 0;
            int n = 0;
            for (int p = 0; p < 5; p++)
            {
                long y = lab[b * 6 + p + 1];
                if (y == -100) continue;
                var row = logits[b, p].to_type(ScalarType.Float64).data<double>().ToArray();
                double max = row.Max();
                double lse = max + Math.Log(row.Sum(v => Math.Exp(v - max)));
                s += row[y] - lse;
                n++;
            }
            Assert.Equal(n, tokens[b].item<long>());
            Assert.Equal(s, Item(sum[b]), 4);
            Assert.Equal(s / n, Item(mean[b]), 5);
        }
        Assert.Equal(new long[] { 5, 2, 4 }, tokens.data<long>().ToArray()); // the first label is never scored (nothing predicts it)
    }

    [Fact]
    public void SequenceLogps_Bf16Logits_ScoreInFloat32AndCarryTheGraph()
    {
        torch.manual_seed(3);
        var logits = torch.randn(2, 4, 5).to_type(ScalarType.BFloat16).requires_grad_();
        var labels = torch.tensor(new long[,] { { 0, 1, 2, 3 }, { 4, 3, 2, 1 } });
        var (sum, mean, _) = PreferenceLosses.SequenceLogps(logits, labels);
        Assert.Equal(ScalarType.Float32, sum.dtype);
        var (sum32, _, _) = PreferenceLosses.SequenceLogps(logits.detach().to_type(ScalarType.Float32), labels);
        Assert.Equal(Item(sum32[0]), Item(sum[0]), 5);
        mean.sum().backward();
        // Gradient of a log-softmax row sums to zero over the vocabulary (softmax − one-hot): check one scored position.
        var g = logits.grad!.to_type(ScalarType.Float64)[0, 0].sum();
        Assert.Equal(0.0, Item(g), 2);
        Assert.True(Item(logits.grad!.abs().sum()) > 0);
    }

    // ---- Bad arguments ----

    [Theory]
    [InlineData(0.0)]
    [InlineData(-0.1)]
    [InlineData(double.NaN)]
    public void BadBeta_IsRejectedNamingBeta(double beta)
    {
        Assert.Equal("beta", Assert.Throws<ArgumentException>(() => PreferenceLosses.Dpo(V(-1), V(-2), V(-1), V(-2), beta)).ParamName);
        Assert.Equal("beta", Assert.Throws<ArgumentException>(() => PreferenceLosses.Ipo(V(-1), V(-2), V(-1), V(-2), beta)).ParamName);
        Assert.Equal("beta", Assert.Throws<ArgumentException>(() => PreferenceLosses.SimPo(V(-1), V(-2), beta, 0.5)).ParamName);
    }

    [Fact]
    public void BadArguments_AreRejectedNamingTheParameter()
    {
        Assert.Equal("labelSmoothing", Assert.Throws<ArgumentException>(() => PreferenceLosses.Dpo(V(-1), V(-2), V(-1), V(-2), 0.1, 0.5)).ParamName);
        Assert.Equal("labelSmoothing", Assert.Throws<ArgumentException>(() => PreferenceLosses.SimPo(V(-1), V(-2), 2, 0.5, -0.1)).ParamName);
        Assert.Equal("simpoGamma", Assert.Throws<ArgumentException>(() => PreferenceLosses.SimPo(V(-1), V(-2), 2, -1)).ParamName);
        Assert.Equal("lambda", Assert.Throws<ArgumentException>(() => PreferenceLosses.Orpo(V(-1), V(-2), torch.tensor(1f), 0)).ParamName);
        Assert.Equal("policyRejectedLogps", Assert.Throws<ArgumentException>(() => PreferenceLosses.Dpo(V(-1, -2), V(-2), V(-1, -2), V(-2, -1), 0.1)).ParamName);
        Assert.Equal("refChosenLogps", Assert.Throws<ArgumentException>(() => PreferenceLosses.Ipo(V(-1), V(-2), torch.tensor(new long[] { -1 }), V(-2), 0.1)).ParamName);
        Assert.Equal("chosenNll", Assert.Throws<ArgumentException>(() => PreferenceLosses.Orpo(V(-1, -1), V(-2, -2), V(1, 1, 1), 0.1)).ParamName);
        Assert.Equal("labels", Assert.Throws<ArgumentException>(() =>
            PreferenceLosses.SequenceLogps(torch.zeros(1, 3, 4), torch.tensor(new long[,] { { 1, -100, -100 } }))).ParamName);
        Assert.Equal("labels", Assert.Throws<ArgumentException>(() =>
            PreferenceLosses.SequenceLogps(torch.zeros(1, 3, 4), torch.tensor(new long[,] { { 1, 4, 0 } }))).ParamName);
        Assert.Equal("labels", Assert.Throws<ArgumentException>(() =>
            PreferenceLosses.SequenceLogps(torch.zeros(1, 3, 4), torch.tensor(new long[,] { { 1, 2 } }))).ParamName);
    }

    // ---- Parity (bench/preference-check.sh) ----

    /// <summary>
    /// Fixed random pairs through every loss, checked here against a float64 scalar transcription of the formulas (1e-5)
    /// and written, inputs and outputs, as JSON for bench/pytorch/preference_peer.py: to $RESLORA_PREFERENCE_PEER_OUT when
    /// set (bench/preference-check.sh sets it), else to a temporary file that is deleted.
    /// </summary>
    [Fact]
    public void PeerCase_MatchesScalarFormulas_AndIsWrittenForThePyTorchPeer()
    {
        torch.manual_seed(34);
        const int n = 16;
        var pc = torch.randn(n) * 3 - 20; var pr = torch.randn(n) * 3 - 20;
        var rc = torch.randn(n) * 3 - 20; var rr = torch.randn(n) * 3 - 20;
        var ac = -(torch.rand(n) * 2.5f + 0.01f); var ar = -(torch.rand(n) * 2.5f + 0.01f); // length-averaged, < 0
        var nll = torch.rand(n) * 2;
        var logits = torch.randn(3, 7, 13) * 2;
        var labels = torch.tensor(new long[,] { { 1, 2, 3, 4, 5, 6, 7 }, { -100, -100, -100, 8, 9, 10, -100 }, { 0, 12, -100, 11, 3, -100, 2 } });
        double[] D(Tensor t) => t.to_type(ScalarType.Float64).data<double>().ToArray();
        var (PC, PR, RC, RR, AC, AR, NLL) = (D(pc), D(pr), D(rc), D(rr), D(ac), D(ar), D(nll));

        double Sig(double z) => -Math.Log(1 + Math.Exp(-z)); // log σ(z) (|z| is small here)
        double L1mE(double a) => Math.Log(-(Math.Exp(a) - 1));
        var ours = new Dictionary<string, double>
        {
            ["dpo"] = Item(PreferenceLosses.Dpo(pc, pr, rc, rr, 0.1).Loss),
            ["dpo_ls"] = Item(PreferenceLosses.Dpo(pc, pr, rc, rr, 0.1, 0.1).Loss),
            ["ipo"] = Item(PreferenceLosses.Ipo(ac, ar, ac * 0.9f, ar * 1.1f, 0.5).Loss),
            ["orpo"] = Item(PreferenceLosses.Orpo(ac, ar, nll, 0.1).Loss),
            ["simpo"] = Item(PreferenceLosses.SimPo(ac, ar, 2.5, 1.4).Loss),
            ["simpo_ls"] = Item(PreferenceLosses.SimPo(ac, ar, 2.0, 0.5, 0.2).Loss),
        };
        var dpoMetrics = PreferenceLosses.Dpo(pc, pr, rc, rr, 0.1).Metrics;
        var (sum, mean, _) = PreferenceLosses.SequenceLogps(logits, labels);

        var expected = new Dictionary<string, double>
        {
            ["dpo"] = Enumerable.Range(0, n).Average(i => -Sig(0.1 * (PC[i] - PR[i] - RC[i] + RR[i]))),
            ["dpo_ls"] = Enumerable.Range(0, n).Average(i =>
            {
                double z = 0.1 * (PC[i] - PR[i] - RC[i] + RR[i]);
                return -0.9 * Sig(z) - 0.1 * Sig(-z);
            }),
            ["orpo"] = NLL.Average() - 0.1 * Enumerable.Range(0, n).Average(i => Sig(AC[i] - AR[i] - L1mE(AC[i]) + L1mE(AR[i]))),
            ["simpo"] = Enumerable.Range(0, n).Average(i => -Sig(2.5 * (AC[i] - AR[i]) - 1.4)),
        };
        foreach (var (k, v) in expected) Assert.True(Math.Abs(ours[k] - v) <= 1e-5, $"{k}: ours {ours[k]}, formula {v}");
        Assert.Equal(Enumerable.Range(0, n).Average(i => 0.1 * (PC[i] - RC[i])), dpoMetrics.RewardsChosen, 5);

        string? target = Environment.GetEnvironmentVariable("RESLORA_PREFERENCE_PEER_OUT");
        string path = target ?? Path.Combine(Path.GetTempPath(), $"reslora-preference-{Guid.NewGuid():N}.json");
        var doc = new
        {
            inputs = new { policy_chosen = PC, policy_rejected = PR, ref_chosen = RC, ref_rejected = RR, avg_chosen = AC, avg_rejected = AR, chosen_nll = NLL },
            ipo_ref = new { chosen = D(ac * 0.9f), rejected = D(ar * 1.1f) },
            sequence = new { shape = logits.shape, logits = D(logits), labels = labels.data<long>().ToArray(), sum = D(sum), mean = D(mean) },
            losses = ours,
            dpo_metrics = dpoMetrics.ToDictionary(),
        };
        File.WriteAllText(path, JsonSerializer.Serialize(doc));
        try
        {
            using var parsed = JsonDocument.Parse(File.ReadAllText(path));
            Assert.Equal(ours["dpo"], parsed.RootElement.GetProperty("losses").GetProperty("dpo").GetDouble());
        }
        finally
        {
            if (target is null) File.Delete(path);
        }
    }
}
