using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.IO;
using ResLora.Models;
using ResLora.Text;
using ResLora.Training;

namespace ResLora.Pipelines;

/// <summary>
/// How far a candidate model (a merged or exported adapter) is from a reference model (the unmerged adapter) on
/// held-out text. "Positions" are the real next-token positions: the token and the token it predicts both have
/// attention mask 1. The losses use the labels (−100 = no loss), as training and evaluation do.
/// </summary>
public sealed record ComparisonReport
{
    /// <summary>Mean over positions of KL(p_ref ‖ p_cand) in nats.</summary>
    [JsonPropertyName("mean_kl")] public double MeanKl { get; init; }

    /// <summary>Largest |logit_ref − logit_cand| over positions and the vocabulary.</summary>
    [JsonPropertyName("max_abs_logit_diff")] public double MaxAbsLogitDiff { get; init; }

    /// <summary>Token-weighted next-token cross-entropy of the reference on the labels (NaN when no label counts).</summary>
    [JsonPropertyName("reference_loss")] public double ReferenceLoss { get; init; }

    /// <summary>The same for the candidate.</summary>
    [JsonPropertyName("candidate_loss")] public double CandidateLoss { get; init; }

    /// <summary>|candidate_loss − reference_loss|.</summary>
    [JsonPropertyName("abs_loss_diff")] public double AbsLossDiff { get; init; }

    /// <summary>Fraction of positions where both models' most likely next token is the same (teacher-forced).</summary>
    [JsonPropertyName("greedy_agreement")] public double GreedyAgreement { get; init; }

    /// <summary>Number of real next-token positions compared.</summary>
    [JsonPropertyName("positions")] public long Positions { get; init; }

    /// <summary>Number of sequences (batch rows) seen.</summary>
    [JsonPropertyName("sequences")] public int Sequences { get; init; }
}

/// <summary>Compares a candidate model's next-token distributions with a reference model's, batch by batch.</summary>
public static class ModelComparison
{
    private static readonly JsonSerializerOptions Json = IO.Json.ReportJson.Indented; // NaN-safe: a loss with no labelled token is NaN

    /// <summary>
    /// Runs both models on every batch (eval mode, no gradients; their modes are restored) and aggregates, in double,
    /// KL(p_ref ‖ p_cand), the largest logit difference and greedy agreement over the real next-token positions, and
    /// both models' losses on the labels (<see cref="Trainer.CausalLmLoss"/>). Logits are compared in float32 whatever
    /// the models' dtype; only one batch's logits are held at a time. Each batch is disposed once it is used.
    /// </summary>
    public static ComparisonReport Compare(CausalLM reference, CausalLM candidate, IEnumerable<TrainBatch> batches)
    {
        if (reference.Config.VocabSize != candidate.Config.VocabSize)
            throw new UserInputException($"the candidate model's vocabulary ({candidate.Config.VocabSize}) differs from the reference's ({reference.Config.VocabSize}); only models with the same tokenizer can be compared.");
        bool refWasTraining = reference.training, candWasTraining = candidate.training;
        using var noGrad = torch.no_grad();
        reference.eval();
        candidate.eval();
        double klSum = 0, maxDiff = 0, refLossSum = 0, candLossSum = 0;
        long positions = 0, agree = 0, lossTokens = 0;
        int sequences = 0;
        try
        {
            foreach (var batch in batches)
            {
                using var scope = torch.NewDisposeScope();
                using (batch)
                {
                    sequences += (int)batch.InputIds.shape[0];
                    var refLogits = Run(reference, batch, reference.Device).to_type(ScalarType.Float32);
                    var candLogits = Run(candidate, batch, reference.Device).to_type(ScalarType.Float32);
                    var labels = On(batch.Labels, reference.Device);

                    var (refLoss, n) = Trainer.CausalLmLoss(refLogits, labels);
                    var (candLoss, _) = Trainer.CausalLmLoss(candLogits, labels);
                    refLossSum += (double)refLoss.item<float>() * n;
                    candLossSum += (double)candLoss.item<float>() * n;
                    lossTokens += n;

                    // Position i predicts token i+1: both must be real tokens.
                    var mask = On(batch.AttentionMask, reference.Device).to_type(ScalarType.Bool);
                    var real = mask[.., ..^1].logical_and(mask[.., 1..]).reshape(-1);
                    var rows = real.nonzero().reshape(-1);
                    long count = rows.shape[0];
                    if (count == 0) continue;
                    long v = refLogits.shape[2];
                    var r = refLogits[.., ..^1, ..].reshape(-1, v).index_select(0, rows); // (count, vocab)
                    var c = candLogits[.., ..^1, ..].reshape(-1, v).index_select(0, rows);
                    var logP = r.log_softmax(-1);
                    var logQ = c.log_softmax(-1);
                    var p = logP.exp();
                    var kl = torch.where(p.gt(0), p * (logP - logQ), torch.zeros_like(p)).sum(-1); // (count); 0·log 0 = 0
                    klSum += kl.to_type(ScalarType.Float64).sum().item<double>();
                    double d = (r - c).abs().max().item<float>();
                    maxDiff = Math.Max(maxDiff, d); // NaN (a broken candidate) sticks
                    agree += r.argmax(-1).eq(c.argmax(-1)).sum().item<long>();
                    positions += count;
                }
            }
        }
        finally
        {
            if (refWasTraining) reference.train();
            if (candWasTraining) candidate.train();
        }
        if (positions == 0)
            throw new UserInputException("there is no next-token position to compare on (every held-out sequence has fewer than two real tokens); give longer held-out text.");
        double refLossMean = lossTokens > 0 ? refLossSum / lossTokens : double.NaN;
        double candLossMean = lossTokens > 0 ? candLossSum / lossTokens : double.NaN;
        return new ComparisonReport
        {
            // KL ≥ 0; float32 rounding can leave a mean of −1e-9 for identical distributions: report 0 then.
            MeanKl = Math.Max(0, klSum / positions),
            MaxAbsLogitDiff = maxDiff,
            ReferenceLoss = refLossMean,
            CandidateLoss = candLossMean,
            AbsLossDiff = Math.Abs(candLossMean - refLossMean),
            GreedyAgreement = (double)agree / positions,
            Positions = positions,
            Sequences = sequences,
        };
    }

    /// <summary>
    /// Tokenizes the held-out examples (<see cref="Tokenization.Tokenize"/>: labels only on completions of
    /// prompt/completion examples), batches them in order with the tokenizer's pad id (as evaluation does) and compares.
    /// </summary>
    public static ComparisonReport Compare(CausalLM reference, CausalLM candidate, ITextTokenizer tokenizer, IReadOnlyList<TextExample> heldOut, int seqLen = 256, int batchSize = 8)
    {
        if (batchSize < 1) throw new UserInputException($"--batch-size must be at least 1, got {batchSize}.");
        var tok = Tokenization.Tokenize(heldOut, tokenizer, seqLen);
        if (tok.Examples.Count == 0) throw new UserInputException("no held-out example is left to compare on after tokenization (check --seq-len and the data).");
        int pad = tokenizer.PadTokenId ?? (tokenizer.EosTokenIds.Count > 0 ? tokenizer.EosTokenIds[0] : 0);
        return Compare(reference, candidate, Tokenization.Sequential(tok.Examples, batchSize, pad, reference.Device));
    }

    /// <summary>
    /// One line naming every number, e.g. <c>held-out (12 sequences, 3040 positions): mean KL 1.2e-3, max |Δlogit| 0.45,
    /// reference loss 2.3456, candidate loss 2.3477, |Δloss| 0.0021, greedy agreement 99.1%</c>.
    /// </summary>
    public static string Describe(ComparisonReport r)
    {
        var ci = CultureInfo.InvariantCulture;
        // Floor to 0.1 % so a single disagreement never reads as 100 %.
        string agreement = (Math.Floor(r.GreedyAgreement * 1000) / 10).ToString("0.0", ci) + "%";
        return $"held-out ({r.Sequences.ToString(ci)} sequences, {r.Positions.ToString(ci)} positions): " +
               $"mean KL {r.MeanKl.ToString("0.0e0", ci)}, max |Δlogit| {Number(r.MaxAbsLogitDiff)}, " +
               $"reference loss {Number(r.ReferenceLoss)}, candidate loss {Number(r.CandidateLoss)}, |Δloss| {Number(r.AbsLossDiff)}, " +
               $"greedy agreement {agreement}";
    }

    /// <summary>Writes the report as indented JSON (snake_case names); the file appears whole or not at all.</summary>
    public static void Save(ComparisonReport r, string path) =>
        AtomicFile.WriteAllText(path, JsonSerializer.Serialize(r, Json));

    private static Tensor Run(CausalLM model, TrainBatch batch, Device to) =>
        On(model.forward(On(batch.InputIds, model.Device), On(batch.AttentionMask, model.Device)), to);

    private static Tensor On(Tensor t, Device device) =>
        t.device_type == device.type && t.device_index == device.index ? t : t.to(device);

    private static string Number(double x) =>
        x == 0 || double.IsNaN(x) || double.IsInfinity(x) || Math.Abs(x) >= 1e-3
            ? x.ToString("0.####", CultureInfo.InvariantCulture)
            : x.ToString("0.0e0", CultureInfo.InvariantCulture);
}
