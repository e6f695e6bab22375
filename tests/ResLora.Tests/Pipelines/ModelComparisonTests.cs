using System.Text.Json;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ResLora.Tests.Pipelines;

public sealed class ModelComparisonTests : IDisposable
{
    private const int Vocab = 64;
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-compare-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>One batch as plain arrays (rows of equal length), so the test can rebuild it and read it back.</summary>
    private sealed record RawBatch(long[][] Ids, long[][] Mask, long[][] Labels)
    {
        public TrainBatch ToBatch()
        {
            long n = Ids.Length, t = Ids[0].Length;
            var shape = new[] { n, t };
            return new TrainBatch(
                torch.tensor(Ids.SelectMany(r => r).ToArray(), shape, dtype: ScalarType.Int64),
                torch.tensor(Mask.SelectMany(r => r).ToArray(), shape, dtype: ScalarType.Int64),
                torch.tensor(Labels.SelectMany(r => r).ToArray(), shape, dtype: ScalarType.Int64));
        }
    }

    /// <summary>
    /// Batch A: two rows of 8; row 1 is right-padded after 5 tokens (mask 0, pad id 0, label −100 as Collate does),
    /// row 0 has label −100 at position 3 although the token is real. Batch B: one row of 5, no padding.
    /// Real next-token positions: 7 (row 0) + 4 (row 1) + 4 (batch B) = 15; labelled ones: 6 + 4 + 4 = 14.
    /// </summary>
    private static List<RawBatch> HandBatches()
    {
        long[][] Rows(int n, int t, long seed)
        {
            using var ids = TinyModels.RandomIds(n, t, Vocab, seed);
            var flat = ids.data<long>().ToArray();
            return Enumerable.Range(0, n).Select(r => flat.Skip(r * t).Take(t).ToArray()).ToArray();
        }
        var a = Rows(2, 8, 21);
        for (int c = 5; c < 8; c++) a[1][c] = 0; // padding id
        var aMask = new[] { new long[] { 1, 1, 1, 1, 1, 1, 1, 1 }, new long[] { 1, 1, 1, 1, 1, 0, 0, 0 } };
        var aLabels = a.Select((r, i) => r.Select((id, c) => aMask[i][c] == 1 ? id : -100L).ToArray()).ToArray();
        aLabels[0][3] = -100; // a real token that carries no loss (e.g. a prompt token)
        var b = Rows(1, 5, 22);
        var bMask = new[] { new long[] { 1, 1, 1, 1, 1 } };
        var bLabels = b.Select(r => r.ToArray()).ToArray();
        return new List<RawBatch> { new(a, aMask, aLabels), new(b, bMask, bLabels) };
    }

    private static ComparisonReport CompareOn(CausalLM reference, CausalLM candidate, IEnumerable<RawBatch> raw) =>
        ModelComparison.Compare(reference, candidate, raw.Select(r => r.ToBatch()));

    /// <summary>The reference and a candidate whose lm_head is the reference's × 1.5 plus fixed noise (so some argmaxes change).</summary>
    private static (CausalLM Reference, CausalLM Candidate) ScaledHeadPair(ScalarType dtype = ScalarType.Float32)
    {
        var config = TinyModels.Config(vocab: Vocab);
        var reference = TinyModels.Build(config, seed: 11, dtype: dtype);
        var candidate = TinyModels.Build(config, seed: 11, dtype: dtype);
        using var noGrad = torch.no_grad();
        using var gen = new torch.Generator(77);
        var w = candidate.BaseParameters()["lm_head.weight"];
        using var noise = torch.randn(w.shape, generator: gen) * 0.3;
        w.mul_(1.5).add_(noise.to_type(w.dtype));
        return (reference, candidate);
    }

    /// <summary>The expected report computed position by position with plain tensor ops, from a mask rule written out here.</summary>
    private sealed record Expected(double MeanKl, double MaxAbsDiff, double Agreement, double RefLoss, double CandLoss, long Positions,
        double MeanKlAllPositions, double RefLossWithIgnored);

    private static Expected Independent(CausalLM p, CausalLM q, IEnumerable<RawBatch> raw)
    {
        using var noGrad = torch.no_grad();
        double klSum = 0, klAllSum = 0, maxDiff = 0, refNll = 0, candNll = 0, refNllWithIgnored = 0;
        long positions = 0, allPositions = 0, agree = 0, labelled = 0, labelledWithIgnored = 0;
        foreach (var rb in raw)
        {
            using var scope = torch.NewDisposeScope();
            using var batch = rb.ToBatch();
            var lp = p.forward(batch.InputIds, batch.AttentionMask).to_type(ScalarType.Float32).log_softmax(-1);
            var lq = q.forward(batch.InputIds, batch.AttentionMask).to_type(ScalarType.Float32).log_softmax(-1);
            var zp = p.forward(batch.InputIds, batch.AttentionMask).to_type(ScalarType.Float32);
            var zq = q.forward(batch.InputIds, batch.AttentionMask).to_type(ScalarType.Float32);
            for (int r = 0; r < rb.Ids.Length; r++)
            {
                for (int i = 0; i + 1 < rb.Ids[r].Length; i++)
                {
                    var a = lp[r, i];
                    var b = lq[r, i];
                    double kl = (a.exp() * (a - b)).sum().item<float>();
                    klAllSum += kl;
                    allPositions++;
                    long target = rb.Labels[r][i + 1];
                    long anyTarget = rb.Ids[r][i + 1];
                    refNllWithIgnored -= a[anyTarget].item<float>();
                    labelledWithIgnored++;
                    if (target != -100)
                    {
                        refNll -= a[target].item<float>();
                        candNll -= b[target].item<float>();
                        labelled++;
                    }
                    if (rb.Mask[r][i] != 1 || rb.Mask[r][i + 1] != 1) continue;
                    klSum += kl;
                    maxDiff = Math.Max(maxDiff, (zp[r, i] - zq[r, i]).abs().max().item<float>());
                    if (zp[r, i].argmax().item<long>() == zq[r, i].argmax().item<long>()) agree++;
                    positions++;
                }
            }
        }
        return new Expected(klSum / positions, maxDiff, (double)agree / positions, refNll / labelled, candNll / labelled, positions,
            klAllSum / allPositions, refNllWithIgnored / labelledWithIgnored);
    }

    private static void Close(double expected, double actual, double rel = 1e-5, string what = "")
    {
        Assert.True(Math.Abs(expected - actual) <= rel * Math.Max(1e-6, Math.Abs(expected)), $"{what}: expected {expected:R}, got {actual:R}");
    }

    [Fact]
    public void Compare_SameModelTwice_IsExactlyZero()
    {
        using var model = TinyModels.Build(TinyModels.Config(vocab: Vocab), seed: 3);
        var r = CompareOn(model, model, HandBatches());
        Assert.InRange(r.MeanKl, -1e-7, 1e-7);
        Assert.Equal(0.0, r.MaxAbsLogitDiff);
        Assert.Equal(1.0, r.GreedyAgreement);
        Assert.Equal(0.0, r.AbsLossDiff);
        Assert.Equal(r.ReferenceLoss, r.CandidateLoss);
        Assert.True(r.ReferenceLoss > 0 && double.IsFinite(r.ReferenceLoss), $"loss {r.ReferenceLoss}");
        Assert.Equal(15, r.Positions);
        Assert.Equal(3, r.Sequences);
    }

    [Fact]
    public void Compare_TwoModelsWithEqualWeights_IsExactlyZero()
    {
        var config = TinyModels.Config(vocab: Vocab);
        using var a = TinyModels.Build(config, seed: 4);
        using var b = TinyModels.Build(config, seed: 4);
        var r = CompareOn(a, b, HandBatches());
        Assert.InRange(r.MeanKl, -1e-7, 1e-7);
        Assert.Equal(0.0, r.MaxAbsLogitDiff);
        Assert.Equal(1.0, r.GreedyAgreement);
        Assert.Equal(0.0, r.AbsLossDiff);
        Assert.Equal(15, r.Positions);

        // ... and a model with other weights is not (the zero above is not vacuous).
        using var c = TinyModels.Build(config, seed: 5);
        var other = CompareOn(a, c, HandBatches());
        Assert.True(other.MeanKl > 1e-3 && other.MaxAbsLogitDiff > 0.1 && other.AbsLossDiff > 0, $"{ModelComparison.Describe(other)}");
    }

    [Fact]
    public void Compare_ScaledLmHead_MatchesPerPositionComputation_PaddingAndIgnoredLabelsExcluded()
    {
        var (reference, candidate) = ScaledHeadPair();
        using var _r = reference;
        using var _c = candidate;
        var e = Independent(reference, candidate, HandBatches());
        // The hand batches are built so that getting the exclusions wrong shows.
        Assert.Equal(15, e.Positions);
        Assert.True(Math.Abs(e.MeanKlAllPositions - e.MeanKl) > 1e-3 * e.MeanKl, $"padding does not move KL: {e.MeanKlAllPositions} vs {e.MeanKl}");
        Assert.True(Math.Abs(e.RefLossWithIgnored - e.RefLoss) > 1e-3, $"the −100 label does not move the loss: {e.RefLossWithIgnored} vs {e.RefLoss}");
        Assert.InRange(e.Agreement, 0.05, 0.95);

        var r = CompareOn(reference, candidate, HandBatches());
        Assert.Equal(15, r.Positions);
        Assert.Equal(3, r.Sequences);
        Close(e.MeanKl, r.MeanKl, what: "mean KL");
        Close(e.MaxAbsDiff, r.MaxAbsLogitDiff, what: "max |Δlogit|");
        Assert.Equal(e.Agreement, r.GreedyAgreement, 12);
        Close(e.RefLoss, r.ReferenceLoss, what: "reference loss");
        Close(e.CandLoss, r.CandidateLoss, what: "candidate loss");
        Close(Math.Abs(e.CandLoss - e.RefLoss), r.AbsLossDiff, rel: 1e-3, what: "|Δloss|");
    }

    [Fact]
    public void Compare_BFloat16Models_ComparesInFloat32()
    {
        var (reference, candidate) = ScaledHeadPair(ScalarType.BFloat16);
        using var _r = reference;
        using var _c = candidate;
        var e = Independent(reference, candidate, HandBatches()); // log_softmax of the logits cast to float32
        var r = CompareOn(reference, candidate, HandBatches());
        Assert.Equal(15, r.Positions);
        Close(e.MeanKl, r.MeanKl, what: "mean KL");
        Close(e.RefLoss, r.ReferenceLoss, what: "reference loss");
        Close(e.MaxAbsDiff, r.MaxAbsLogitDiff, what: "max |Δlogit|");
    }

    [Fact]
    public void Compare_CandidateDiffersOnlyOnPaddedPositions_IsExactlyZero()
    {
        // Real token ids are ≥ 3 and padding is id 0, so changing embedding row 0 changes only the logits of padded
        // positions (a real position never attends to a later one): every measure must still read "identical".
        var config = TinyModels.Config(vocab: Vocab);
        using var reference = TinyModels.Build(config, seed: 12);
        using var candidate = TinyModels.Build(config, seed: 12);
        using (torch.no_grad())
        {
            using var gen = new torch.Generator(99);
            using var row = torch.randn(config.HiddenSize, generator: gen) * 5;
            candidate.BaseParameters()["model.embed_tokens.weight"][0].copy_(row);
        }
        var padded = HandBatches()[0];
        using (torch.no_grad())
        using (var batch = padded.ToBatch())
        using (var zr = reference.forward(batch.InputIds, batch.AttentionMask))
        using (var zc = candidate.forward(batch.InputIds, batch.AttentionMask))
        {
            Assert.True(zr[1, 5..].sub(zc[1, 5..]).abs().max().item<float>() > 1.0, "the padded positions' logits should differ");
            Assert.False(zr[1, 5..].argmax(-1).eq(zc[1, 5..].argmax(-1)).all().item<bool>(), "the padded positions' argmax should differ somewhere");
            Assert.True(zr[.., ..5].eq(zc[.., ..5]).all().item<bool>(), "the real positions' logits should not differ");
        }

        var r = CompareOn(reference, candidate, new[] { padded });
        Assert.Equal(11, r.Positions);
        Assert.Equal(0.0, r.MeanKl);
        Assert.Equal(0.0, r.MaxAbsLogitDiff);
        Assert.Equal(1.0, r.GreedyAgreement);
        Assert.Equal(0.0, r.AbsLossDiff);
    }

    [Fact]
    public void Compare_SwappedModels_GivesKlOfTheOtherDirection()
    {
        var (reference, candidate) = ScaledHeadPair();
        using var _r = reference;
        using var _c = candidate;
        var forward = CompareOn(reference, candidate, HandBatches());
        var swapped = CompareOn(candidate, reference, HandBatches());
        var klRefCand = Independent(reference, candidate, HandBatches()).MeanKl;
        var klCandRef = Independent(candidate, reference, HandBatches()).MeanKl;

        Assert.True(Math.Abs(klRefCand - klCandRef) > 0.05 * klRefCand, $"KL(ref‖cand) {klRefCand} ≈ KL(cand‖ref) {klCandRef}: the case cannot tell the directions apart");
        Close(klRefCand, forward.MeanKl, what: "KL(ref‖cand)");
        Close(klCandRef, swapped.MeanKl, what: "KL(cand‖ref)");
        // The symmetric measures do not change; the losses trade places.
        Assert.Equal(forward.MaxAbsLogitDiff, swapped.MaxAbsLogitDiff, 6);
        Assert.Equal(forward.GreedyAgreement, swapped.GreedyAgreement, 12);
        Assert.Equal(forward.ReferenceLoss, swapped.CandidateLoss, 12);
        Assert.Equal(forward.CandidateLoss, swapped.ReferenceLoss, 12);
    }

    /// <summary>lm_head that records whether the model was in training mode when it ran.</summary>
    private sealed class ModeProbeLinear : nn.Module<Tensor, Tensor>
    {
#pragma warning disable IDE1006 // state-dict key
        private readonly Parameter weight;
#pragma warning restore IDE1006
        private readonly List<bool> _modes;

        public ModeProbeLinear(LinearSpec spec, ScalarType dtype, Device device, List<bool> modes) : base(spec.Name)
        {
            weight = new Parameter(torch.zeros(spec.OutFeatures, spec.InFeatures, dtype: dtype, device: device));
            _modes = modes;
            RegisterComponents();
        }

        public override Tensor forward(Tensor x)
        {
            _modes.Add(training);
            return nn.functional.linear(x, weight);
        }
    }

    private sealed class ModeProbeFactory : ILinearFactory
    {
        public List<bool> Modes { get; } = new();

        public nn.Module<Tensor, Tensor> Create(LinearSpec spec, ScalarType dtype, Device device) =>
            spec.Name == "lm_head" ? new ModeProbeLinear(spec, dtype, device, Modes) : new PlainLinear(spec, dtype, device);
    }

    [Fact]
    public void Compare_RunsBothInEvalMode_AndRestoresTheirModes()
    {
        var config = TinyModels.Config(vocab: Vocab);
        var refProbe = new ModeProbeFactory();
        var candProbe = new ModeProbeFactory();
        using var reference = TinyModels.Build(config, seed: 6, factory: refProbe);
        using var candidate = TinyModels.Build(config, seed: 6, factory: candProbe);
        reference.train();
        candidate.eval();

        var r = CompareOn(reference, candidate, HandBatches());

        Assert.Equal(2, refProbe.Modes.Count); // one forward per batch
        Assert.Equal(2, candProbe.Modes.Count);
        Assert.All(refProbe.Modes.Concat(candProbe.Modes), training => Assert.False(training));
        Assert.True(reference.training);
        Assert.True(((nn.Module)reference.Blocks[0]).training); // submodules too
        Assert.False(candidate.training);
        Assert.Equal(0.0, r.MaxAbsLogitDiff);
    }

    [Fact]
    public void Compare_FromTextExamples_EqualsCompareOnTheBatchesEvaluationBuilds()
    {
        var tok = new CharTokenizer();
        var config = TinyModels.Config(vocab: tok.VocabSize);
        using var reference = TinyModels.Build(config, seed: 8);
        using var candidate = TinyModels.Build(config, seed: 9);
        var heldOut = new List<TextExample>
        {
            new("k=3;", "3"),
            new("", "plain text of some length"),
            new("question: 2+2=", "4"),
            new("", "short"),
            new("a=1;", "1"),
        };

        var fromText = ModelComparison.Compare(reference, candidate, tok, heldOut, seqLen: 32, batchSize: 2);

        var tokenized = Tokenization.Tokenize(heldOut, tok, 32).Examples;
        var byHand = ModelComparison.Compare(reference, candidate, Tokenization.Sequential(tokenized, 2, tok.PadTokenId!.Value));
        Assert.Equal(byHand, fromText);
        Assert.Equal(5, fromText.Sequences);
        Assert.Equal(tokenized.Sum(x => x.Ids.Length - 1), fromText.Positions); // every real token but the last of each sequence
    }

    [Fact]
    public void Compare_DifferentVocabularies_OrNoPositions_IsRefused()
    {
        using var a = TinyModels.Build(TinyModels.Config(vocab: Vocab), seed: 1);
        using var b = TinyModels.Build(TinyModels.Config(vocab: Vocab + 8), seed: 1);
        var vocab = Assert.Throws<UserInputException>(() => CompareOn(a, b, HandBatches()));
        Assert.Contains("vocabulary", vocab.Message);

        var single = new RawBatch(new[] { new long[] { 5, 6 } }, new[] { new long[] { 1, 0 } }, new[] { new long[] { -100, -100 } });
        var none = Assert.Throws<UserInputException>(() => CompareOn(a, a, new[] { single }));
        Assert.Contains("no next-token position", none.Message);
    }

    [Fact]
    public void Save_WritesSnakeCaseJson_AndDescribeNamesEveryNumber()
    {
        var r = new ComparisonReport
        {
            MeanKl = 1.234e-3,
            MaxAbsLogitDiff = 0.45,
            ReferenceLoss = 2.3456,
            CandidateLoss = 2.3477,
            AbsLossDiff = 0.0021,
            GreedyAgreement = 0.9915,
            Positions = 3040,
            Sequences = 12,
        };
        string path = Path.Combine(_dir, "sub", "comparison.json");
        ModelComparison.Save(r, path);

        string text = File.ReadAllText(path);
        Assert.Contains("\n  \"mean_kl\"", text); // indented
        using var doc = JsonDocument.Parse(text);
        var names = doc.RootElement.EnumerateObject().Select(p => p.Name).ToHashSet();
        Assert.Equal(new HashSet<string> { "mean_kl", "max_abs_logit_diff", "reference_loss", "candidate_loss", "abs_loss_diff", "greedy_agreement", "positions", "sequences" }, names);
        var root = doc.RootElement;
        Assert.Equal(1.234e-3, root.GetProperty("mean_kl").GetDouble());
        Assert.Equal(0.45, root.GetProperty("max_abs_logit_diff").GetDouble());
        Assert.Equal(2.3456, root.GetProperty("reference_loss").GetDouble());
        Assert.Equal(2.3477, root.GetProperty("candidate_loss").GetDouble());
        Assert.Equal(0.0021, root.GetProperty("abs_loss_diff").GetDouble());
        Assert.Equal(0.9915, root.GetProperty("greedy_agreement").GetDouble());
        Assert.Equal(3040, root.GetProperty("positions").GetInt64());
        Assert.Equal(12, root.GetProperty("sequences").GetInt32());
        Assert.Equal(r, JsonSerializer.Deserialize<ComparisonReport>(text));
        Assert.Single(Directory.GetFiles(Path.GetDirectoryName(path)!)); // no temporary file left

        Assert.Equal(
            "held-out (12 sequences, 3040 positions): mean KL 1.2e-3, max |Δlogit| 0.45, reference loss 2.3456, candidate loss 2.3477, |Δloss| 0.0021, greedy agreement 99.1%",
            ModelComparison.Describe(r));
        // Agreement is floored: one disagreement in many positions never reads as 100 %.
        Assert.EndsWith("greedy agreement 99.9%", ModelComparison.Describe(r with { GreedyAgreement = 0.99999 }));
        Assert.EndsWith("greedy agreement 100.0%", ModelComparison.Describe(r with { GreedyAgreement = 1.0 }));
        Assert.Contains("|Δloss| 1.0e-5", ModelComparison.Describe(r with { AbsLossDiff = 1e-5 }));
    }

    [Fact]
    public void Save_NaNLoss_IsWritten()
    {
        // Held-out text whose labels are all −100 has positions to compare but no loss: the report still saves.
        using var model = TinyModels.Build(TinyModels.Config(vocab: Vocab), seed: 2);
        var unlabelled = new RawBatch(new[] { new long[] { 5, 6, 7 } }, new[] { new long[] { 1, 1, 1 } }, new[] { new long[] { -100, -100, -100 } });
        var r = CompareOn(model, model, new[] { unlabelled });
        Assert.Equal(2, r.Positions);
        Assert.True(double.IsNaN(r.ReferenceLoss));
        string path = Path.Combine(_dir, "nan.json");
        ModelComparison.Save(r, path);
        Assert.Contains("\"reference_loss\": \"NaN\"", File.ReadAllText(path));
    }
}
