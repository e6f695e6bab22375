using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Training.Preference;

/// <summary>
/// One batch's preference metrics under TRL's names (<see cref="ToDictionary"/>), each the mean over the batch's pairs.
/// What a "reward" is depends on the loss: β·(π − π_ref) for DPO and IPO (TRL's DPOTrainer), β·π for SimPO (TRL's
/// CPOTrainer) and λ·π for ORPO (TRL's ORPOTrainer, whose <c>beta</c> is the paper's λ), π being the log-probabilities
/// the loss was given (summed for DPO, length-averaged for IPO, ORPO and SimPO).
/// </summary>
/// <param name="RewardsChosen"><c>rewards/chosen</c>: mean reward of the chosen responses.</param>
/// <param name="RewardsRejected"><c>rewards/rejected</c>: mean reward of the rejected responses.</param>
/// <param name="RewardsAccuracies"><c>rewards/accuracies</c>: fraction of pairs whose chosen reward is strictly greater.</param>
/// <param name="RewardsMargins"><c>rewards/margins</c>: mean of chosen minus rejected reward.</param>
/// <param name="LogpsChosen"><c>logps/chosen</c>: mean policy log-probability of the chosen responses, as passed in.</param>
/// <param name="LogpsRejected"><c>logps/rejected</c>: mean policy log-probability of the rejected responses, as passed in.</param>
/// <param name="NllLoss"><c>nll_loss</c> (ORPO only): the SFT term of the loss.</param>
/// <param name="LogOddsRatio"><c>log_odds_ratio</c> (ORPO only): mean of log σ(log odds ratio).</param>
/// <param name="LogOddsChosen"><c>log_odds_chosen</c> (ORPO only): mean log odds ratio of chosen over rejected.</param>
public sealed record PreferenceMetrics(
    double RewardsChosen,
    double RewardsRejected,
    double RewardsAccuracies,
    double RewardsMargins,
    double LogpsChosen,
    double LogpsRejected,
    double? NllLoss = null,
    double? LogOddsRatio = null,
    double? LogOddsChosen = null)
{
    /// <summary>The metrics under TRL's log keys (<c>rewards/chosen</c>, …); the ORPO-only ones appear only when set.</summary>
    public IReadOnlyDictionary<string, double> ToDictionary()
    {
        var d = new Dictionary<string, double>
        {
            ["rewards/chosen"] = RewardsChosen,
            ["rewards/rejected"] = RewardsRejected,
            ["rewards/accuracies"] = RewardsAccuracies,
            ["rewards/margins"] = RewardsMargins,
            ["logps/chosen"] = LogpsChosen,
            ["logps/rejected"] = LogpsRejected,
        };
        if (NllLoss is { } nll) d["nll_loss"] = nll;
        if (LogOddsRatio is { } lor) d["log_odds_ratio"] = lor;
        if (LogOddsChosen is { } loc) d["log_odds_chosen"] = loc;
        return d;
    }

    /// <summary>The six shared metrics from per-pair rewards (batch) and policy log-probabilities (batch), read without a graph.</summary>
    internal static PreferenceMetrics From(Tensor chosenRewards, Tensor rejectedRewards, Tensor chosenLogps, Tensor rejectedLogps)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var c = chosenRewards.detach().to_type(ScalarType.Float64);
        var r = rejectedRewards.detach().to_type(ScalarType.Float64);
        return new PreferenceMetrics(
            c.mean().item<double>(),
            r.mean().item<double>(),
            c.gt(r).to_type(ScalarType.Float64).mean().item<double>(),
            (c - r).mean().item<double>(),
            chosenLogps.detach().to_type(ScalarType.Float64).mean().item<double>(),
            rejectedLogps.detach().to_type(ScalarType.Float64).mean().item<double>());
    }
}

/// <summary>A preference loss over one batch of pairs: the mean loss (a float32 scalar that carries the graph) and its metrics.</summary>
/// <param name="Loss">The loss averaged over the batch, shape (); the caller owns it (dispose scope or Dispose).</param>
/// <param name="Metrics">The batch's metrics, TRL's names and definitions.</param>
public sealed record PreferenceLossResult(Tensor Loss, PreferenceMetrics Metrics);
