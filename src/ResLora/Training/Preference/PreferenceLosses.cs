using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Training.Preference;

/// <summary>
/// The preference-tuning losses (DPO, IPO, ORPO, SimPO) over per-pair sequence log-probabilities, written as TRL defines
/// them (trl/trainer/dpo_trainer.py <c>dpo_loss</c>, orpo_trainer.py <c>odds_ratio_loss</c>, cpo_trainer.py
/// <c>cpo_loss</c> with loss_type "simpo") and checked against the papers' formulas (docs/preference.md,
/// bench/preference-check.sh). Every input is a tensor of shape (batch), one value per pair; the math runs in float32
/// whatever the inputs' dtype. Each returns the batch-mean loss with its graph and TRL's metrics.
/// </summary>
public static class PreferenceLosses
{
    /// <summary>The label id that marks a position without a loss (Hugging Face's and TRL's <c>-100</c>).</summary>
    public const long IgnoreIndex = -100;

    /// <summary>
    /// DPO (Rafailov et al. 2023, eq. 7) with TRL's label smoothing (loss_type "sigmoid"; conservative DPO, Mitchell 2023):
    /// x = (π_c − π_r) − (ref_c − ref_r), loss = −log σ(βx)·(1 − ε) − log σ(−βx)·ε, mean over the batch.
    /// Rewards are β·(π − ref). The log-probabilities are per-sequence SUMS over the response tokens
    /// (<see cref="SequenceLogps"/>'s <c>Sum</c>), as TRL passes them.
    /// </summary>
    /// <param name="policyChosenLogps">Policy log-probability of each chosen response, shape (batch).</param>
    /// <param name="policyRejectedLogps">Policy log-probability of each rejected response, shape (batch).</param>
    /// <param name="refChosenLogps">Reference-model log-probability of each chosen response, shape (batch).</param>
    /// <param name="refRejectedLogps">Reference-model log-probability of each rejected response, shape (batch).</param>
    /// <param name="beta">β &gt; 0: the strength of the implicit KL penalty (TRL's default 0.1).</param>
    /// <param name="labelSmoothing">ε in [0, 0.5): the assumed probability that a pair's label is flipped.</param>
    public static PreferenceLossResult Dpo(Tensor policyChosenLogps, Tensor policyRejectedLogps, Tensor refChosenLogps,
        Tensor refRejectedLogps, double beta, double labelSmoothing = 0)
    {
        CheckBeta(beta);
        CheckLabelSmoothing(labelSmoothing);
        CheckPairs((policyChosenLogps, nameof(policyChosenLogps)), (policyRejectedLogps, nameof(policyRejectedLogps)),
            (refChosenLogps, nameof(refChosenLogps)), (refRejectedLogps, nameof(refRejectedLogps)));
        using var scope = torch.NewDisposeScope();
        var (pc, pr, rc, rr) = (F32(policyChosenLogps), F32(policyRejectedLogps), F32(refChosenLogps), F32(refRejectedLogps));
        var x = (pc - pr) - (rc - rr); // (batch)
        var loss = SmoothedSigmoidLoss(x * beta, labelSmoothing).mean();
        var metrics = PreferenceMetrics.From((pc - rc) * beta, (pr - rr) * beta, pc, pr);
        return new PreferenceLossResult(loss.MoveToOuterDisposeScope(), metrics);
    }

    /// <summary>
    /// IPO (Azar et al. 2023, eq. 17; TRL loss_type "ipo"): x = (π_c − π_r) − (ref_c − ref_r),
    /// loss = (x − 1/(2β))², mean over the batch; zero at x = 1/(2β). Rewards are β·(π − ref).
    /// The caller must pass per-token AVERAGED log-probabilities (<see cref="SequenceLogps"/>'s <c>Mean</c>): TRL divides
    /// each sequence's summed log-probability by its response length for IPO, and the 1/(2β) target assumes that scale.
    /// </summary>
    /// <param name="policyChosenLogps">Policy length-averaged log-probability of each chosen response, shape (batch).</param>
    /// <param name="policyRejectedLogps">Policy length-averaged log-probability of each rejected response, shape (batch).</param>
    /// <param name="refChosenLogps">Reference length-averaged log-probability of each chosen response, shape (batch).</param>
    /// <param name="refRejectedLogps">Reference length-averaged log-probability of each rejected response, shape (batch).</param>
    /// <param name="beta">β &gt; 0, the paper's τ: the regularization strength; the target margin is 1/(2β).</param>
    public static PreferenceLossResult Ipo(Tensor policyChosenLogps, Tensor policyRejectedLogps, Tensor refChosenLogps,
        Tensor refRejectedLogps, double beta)
    {
        CheckBeta(beta);
        CheckPairs((policyChosenLogps, nameof(policyChosenLogps)), (policyRejectedLogps, nameof(policyRejectedLogps)),
            (refChosenLogps, nameof(refChosenLogps)), (refRejectedLogps, nameof(refRejectedLogps)));
        using var scope = torch.NewDisposeScope();
        var (pc, pr, rc, rr) = (F32(policyChosenLogps), F32(policyRejectedLogps), F32(refChosenLogps), F32(refRejectedLogps));
        var x = (pc - pr) - (rc - rr); // (batch)
        var loss = (x - 1.0 / (2.0 * beta)).square().mean();
        var metrics = PreferenceMetrics.From((pc - rc) * beta, (pr - rr) * beta, pc, pr);
        return new PreferenceLossResult(loss.MoveToOuterDisposeScope(), metrics);
    }

    /// <summary>
    /// ORPO (Hong et al. 2024, eqs. 4–7; TRL's ORPOTrainer): loss = mean(NLL_chosen) − λ·mean(log σ(log OR)), with
    /// log OR = (a − b) − (log(1 − eᵃ) − log(1 − eᵇ)) over the length-AVERAGED log-probabilities a (chosen) and b
    /// (rejected), i.e. the log of odds(chosen)/odds(rejected) with odds(p) = p/(1 − p). log(1 − eᵃ) is evaluated as
    /// log(−expm1(a)) for a &gt; −ln 2 and log1p(−eᵃ) below (Mächler 2012), so it is accurate near a = 0 and its gradient
    /// finite; a is clamped to at most −1e-10 there (a length-averaged log-probability of exactly 0 has infinite odds).
    /// Rewards are λ·a and λ·b, as TRL logs them (TRL's <c>beta</c> is the paper's λ).
    /// </summary>
    /// <param name="chosenLogpsAvg">Policy length-averaged log-probability of each chosen response (&lt; 0), shape (batch).</param>
    /// <param name="rejectedLogpsAvg">Policy length-averaged log-probability of each rejected response (&lt; 0), shape (batch).</param>
    /// <param name="chosenNll">The SFT term: a scalar (TRL: cross-entropy averaged over every chosen response token of the
    /// batch) or one value per pair, shape (batch), which is averaged.</param>
    /// <param name="lambda">λ &gt; 0: the weight of the odds-ratio term (TRL's ORPOConfig.beta, default 0.1).</param>
    public static PreferenceLossResult Orpo(Tensor chosenLogpsAvg, Tensor rejectedLogpsAvg, Tensor chosenNll, double lambda)
    {
        if (!(lambda > 0) || double.IsInfinity(lambda))
            throw new ArgumentException($"lambda is {lambda}; the odds-ratio weight must be a finite number > 0 (TRL's default 0.1).", nameof(lambda));
        CheckPairs((chosenLogpsAvg, nameof(chosenLogpsAvg)), (rejectedLogpsAvg, nameof(rejectedLogpsAvg)));
        long n = chosenLogpsAvg.shape[0];
        if (!chosenNll.is_floating_point() || !(chosenNll.dim() == 0 || (chosenNll.dim() == 1 && chosenNll.shape[0] == n)))
            throw new ArgumentException($"chosenNll has shape ({string.Join(", ", chosenNll.shape)}) and dtype {chosenNll.dtype}; give a floating-point scalar or one value per pair, shape ({n}).", nameof(chosenNll));
        using var scope = torch.NewDisposeScope();
        var (a, b) = (F32(chosenLogpsAvg), F32(rejectedLogpsAvg));
        var logOdds = (a - b) - (Log1mExp(a) - Log1mExp(b)); // (batch)
        var ratio = nn.functional.logsigmoid(logOdds);
        var nll = F32(chosenNll).mean();
        var loss = nll - ratio.mean() * lambda;
        var metrics = PreferenceMetrics.From(a * lambda, b * lambda, a, b) with
        {
            NllLoss = nll.detach().item<float>(),
            LogOddsRatio = ratio.detach().mean().item<float>(),
            LogOddsChosen = logOdds.detach().mean().item<float>(),
        };
        return new PreferenceLossResult(loss.MoveToOuterDisposeScope(), metrics);
    }

    /// <summary>
    /// SimPO (Meng et al. 2024, eq. 6) as TRL's CPOTrainer computes it for loss_type "simpo":
    /// z = β·((a − b) − γ/β) = β(a − b) − γ, loss = −log σ(z)·(1 − ε) − log σ(−z)·ε, mean over the batch, over the
    /// length-AVERAGED log-probabilities a (chosen) and b (rejected) (<see cref="SequenceLogps"/>'s <c>Mean</c>).
    /// <paramref name="simpoGamma"/> is TRL's <c>simpo_gamma</c>: the paper's target reward margin γ itself, not the
    /// γ/β ratio that the SimPO authors' own code takes as <c>gamma_beta_ratio</c> (γ = ratio·β). TRL's CPOTrainer also
    /// adds <c>cpo_alpha</c>·NLL (default 1; 0 for pure SimPO); that term is not part of this loss.
    /// Rewards are β·a and β·b, as TRL logs them.
    /// </summary>
    /// <param name="chosenLogpsAvg">Policy length-averaged log-probability of each chosen response, shape (batch).</param>
    /// <param name="rejectedLogpsAvg">Policy length-averaged log-probability of each rejected response, shape (batch).</param>
    /// <param name="beta">β &gt; 0: the reward scale (the paper uses 2.0–2.5; TRL's CPOConfig default is 0.1).</param>
    /// <param name="simpoGamma">γ ≥ 0: the target reward margin (TRL's <c>simpo_gamma</c>, default 0.5).</param>
    /// <param name="labelSmoothing">ε in [0, 0.5), as for DPO.</param>
    public static PreferenceLossResult SimPo(Tensor chosenLogpsAvg, Tensor rejectedLogpsAvg, double beta, double simpoGamma,
        double labelSmoothing = 0)
    {
        CheckBeta(beta);
        CheckLabelSmoothing(labelSmoothing);
        if (!(simpoGamma >= 0) || double.IsInfinity(simpoGamma))
            throw new ArgumentException($"simpoGamma is {simpoGamma}; the target reward margin must be a finite number ≥ 0 (TRL's default 0.5).", nameof(simpoGamma));
        CheckPairs((chosenLogpsAvg, nameof(chosenLogpsAvg)), (rejectedLogpsAvg, nameof(rejectedLogpsAvg)));
        using var scope = torch.NewDisposeScope();
        var (a, b) = (F32(chosenLogpsAvg), F32(rejectedLogpsAvg));
        var logits = (a - b) - simpoGamma / beta; // (batch), TRL's pi_logratios - gamma_logratios
        var loss = SmoothedSigmoidLoss(logits * beta, labelSmoothing).mean();
        var metrics = PreferenceMetrics.From(a * beta, b * beta, a, b);
        return new PreferenceLossResult(loss.MoveToOuterDisposeScope(), metrics);
    }

    /// <summary>
    /// Per-sequence log-probabilities of the labelled tokens, as TRL's <c>get_batch_logps</c> shifts them for a causal
    /// LM: position p's logits score label p + 1; labels equal to <see cref="IgnoreIndex"/> (the prompt, padding) are
    /// left out. log p = logit[label] − logsumexp(logits) in float32, one sequence at a time, so no (batch, seq, vocab)
    /// log-softmax or one-hot is formed beyond the logits themselves (one float32 (seq, vocab) row at a time when the
    /// logits are in a narrower dtype).
    /// </summary>
    /// <param name="logits">The model's logits, shape (batch, seq, vocab), any floating dtype.</param>
    /// <param name="labels">The input ids with unscored positions set to −100, shape (batch, seq), int64.</param>
    /// <returns><c>Sum</c>: summed log-probability per sequence (batch), float32; <c>Mean</c>: <c>Sum</c> / <c>Tokens</c>
    /// (batch), float32; <c>Tokens</c>: the scored tokens per sequence (batch), int64. Both carry the logits' graph.</returns>
    /// <exception cref="ArgumentException">Shapes disagree, a label is out of the vocabulary, or a sequence has no scored token.</exception>
    public static (Tensor Sum, Tensor Mean, Tensor Tokens) SequenceLogps(Tensor logits, Tensor labels)
    {
        if (logits.dim() != 3 || !logits.is_floating_point())
            throw new ArgumentException($"logits has shape ({string.Join(", ", logits.shape)}) and dtype {logits.dtype}; give floating-point (batch, seq, vocab).", nameof(logits));
        if (labels.dim() != 2 || labels.shape[0] != logits.shape[0] || labels.shape[1] != logits.shape[1] || labels.dtype != ScalarType.Int64)
            throw new ArgumentException($"labels has shape ({string.Join(", ", labels.shape)}) and dtype {labels.dtype}; give int64 ({logits.shape[0]}, {logits.shape[1]}), the logits' batch and seq.", nameof(labels));
        long batch = logits.shape[0], seq = logits.shape[1], vocab = logits.shape[2];
        if (seq < 2) throw new ArgumentException($"labels has {seq} position(s); a causal LM scores positions 1.. from the logits before them, so give at least 2.", nameof(labels));
        using var scope = torch.NewDisposeScope();
        var target = labels[.., 1..]; // (batch, seq - 1): position p's logits predict label p + 1
        var mask = target.ne(IgnoreIndex);
        var tokens = mask.sum(1); // (batch), int64
        using (torch.no_grad())
        {
            long empty = tokens.eq(0).sum().item<long>();
            if (empty > 0)
                throw new ArgumentException($"{empty} of {batch} sequence(s) have no scored token (every label after the first is -100); drop them or score at least one token.", nameof(labels));
            var scored = target.masked_select(mask);
            if (scored.lt(0).any().item<bool>() || scored.ge(vocab).any().item<bool>())
                throw new ArgumentException($"labels holds an id outside the vocabulary [0, {vocab}) (other than -100).", nameof(labels));
        }
        var safe = target.masked_fill(mask.logical_not(), 0); // (batch, seq - 1), ignored positions read token 0, dropped below
        var rows = new Tensor[batch];
        for (long i = 0; i < batch; i++)
        {
            var row = logits[i, ..^1].to_type(ScalarType.Float32); // (seq - 1, vocab)
            var picked = row.gather(1, safe[i].unsqueeze(1)).squeeze(1); // (seq - 1)
            rows[i] = picked - row.logsumexp(1);
        }
        var perToken = torch.stack(rows).where(mask, 0f); // (batch, seq - 1)
        var sum = perToken.sum(1);
        var mean = sum / tokens.to_type(ScalarType.Float32);
        return (sum.MoveToOuterDisposeScope(), mean.MoveToOuterDisposeScope(), tokens.MoveToOuterDisposeScope());
    }

    /// <summary>−log σ(z)·(1 − ε) − log σ(−z)·ε, elementwise: the DPO/cDPO and SimPO form (TRL).</summary>
    private static Tensor SmoothedSigmoidLoss(Tensor z, double epsilon)
    {
        var loss = -nn.functional.logsigmoid(z) * (1 - epsilon);
        return epsilon == 0 ? loss : loss - nn.functional.logsigmoid(-z) * epsilon;
    }

    /// <summary>log(1 − eᵃ) for a &lt; 0 (Mächler 2012), each branch fed only values where it is accurate and finite so
    /// that neither the value nor the gradient of the unused branch is NaN; a is clamped to ≤ −1e-10.</summary>
    private static Tensor Log1mExp(Tensor a)
    {
        var x = a.clamp_max(-1e-10);
        var near = x.gt(-Math.Log(2)); // (batch)
        var ln2 = torch.full_like(x, -Math.Log(2));
        var nearZero = (-torch.where(near, x, ln2).expm1()).log();
        var farFromZero = (-torch.where(near, ln2, x).exp()).log1p();
        return torch.where(near, nearZero, farFromZero);
    }

    private static Tensor F32(Tensor t) => t.dtype == ScalarType.Float32 ? t.alias() : t.to_type(ScalarType.Float32);

    private static void CheckBeta(double beta)
    {
        if (!(beta > 0) || double.IsInfinity(beta))
            throw new ArgumentException($"beta is {beta}; it must be a finite number > 0 (TRL's default 0.1).", nameof(beta));
    }

    private static void CheckLabelSmoothing(double labelSmoothing)
    {
        if (!(labelSmoothing >= 0 && labelSmoothing < 0.5))
            throw new ArgumentException($"labelSmoothing is {labelSmoothing}; it must be in [0, 0.5) (0 turns it off).", nameof(labelSmoothing));
    }

    /// <summary>Every input is a floating-point vector, one value per pair, all of the same non-zero length.</summary>
    private static void CheckPairs(params (Tensor T, string Name)[] inputs)
    {
        long n = inputs[0].T.dim() == 1 ? inputs[0].T.shape[0] : -1;
        foreach (var (t, name) in inputs)
        {
            if (t.dim() != 1 || !t.is_floating_point() || t.shape[0] != n || n == 0)
                throw new ArgumentException(
                    $"{name} has shape ({string.Join(", ", t.shape)}) and dtype {t.dtype}; every input must be a non-empty floating-point vector of one value per pair, all the same length as {inputs[0].Name}" +
                    (n > 0 ? $" ({n})." : "."), name);
        }
    }
}
