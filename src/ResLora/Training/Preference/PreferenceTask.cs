using ResLora.Models;

namespace ResLora.Training.Preference;

/// <summary>
/// Preference tuning as a training task: each batch holds b pairs as 2b rows (<see cref="PreferenceData.Collate"/>),
/// one forward scores both sides, the LM head runs in chunks over the response tokens only
/// (<see cref="CausalLM.SequenceLogps"/>), and the objective's loss (<see cref="PreferenceLosses"/>) is averaged over the
/// pairs. DPO and IPO compare with a reference: per batch from <see cref="PreferenceReference"/> (computed before the
/// policy's forward), or from values precomputed once and carried by the batch (<see cref="TrainBatch.RowValues"/>).
/// TRL's metrics are reported per logged step (<see cref="IStepMetricsSource"/>) and per evaluation, where
/// <c>eval_accuracy</c> is the preference accuracy: the share of held-out pairs whose chosen reward is higher.
/// </summary>
public sealed class PreferenceTask : ITrainTask, IStepMetricsSource
{
    private readonly CausalLM _model;
    private readonly IReadOnlyList<PreferencePair> _train, _eval;
    private readonly int _padId;
    private readonly PreferenceOptions _o;
    private readonly PreferenceReference? _reference;
    private readonly float[]? _trainReference, _evalReference;
    private readonly Dictionary<string, (double Sum, int Count)> _window = new(StringComparer.Ordinal);
    private Tensor? _pendingReference;

    /// <param name="model">The policy (adapters attached, the trainable parameters set).</param>
    /// <param name="train">Training pairs.</param>
    /// <param name="eval">Held-out pairs (may be empty).</param>
    /// <param name="padId">The id padding carries.</param>
    /// <param name="options">Objective and its settings.</param>
    /// <param name="reference">DPO/IPO without precomputed values: the reference computed per batch.</param>
    /// <param name="trainReference">Precomputed reference sums, (chosen, rejected) per training pair; null to compute per batch.</param>
    /// <param name="evalReference">The same for the held-out pairs.</param>
    public PreferenceTask(CausalLM model, IReadOnlyList<PreferencePair> train, IReadOnlyList<PreferencePair> eval, int padId, PreferenceOptions options,
        PreferenceReference? reference, float[]? trainReference = null, float[]? evalReference = null)
    {
        options.Validate();
        if (options.NeedsReference && reference is null && (trainReference is null || (eval.Count > 0 && evalReference is null)))
            throw new ArgumentException($"{options.ObjectiveName} needs a reference: give one or precomputed values for every pair.");
        if (trainReference is not null && trainReference.Length != train.Count * 2) throw new ArgumentException("trainReference needs two values per training pair.", nameof(trainReference));
        if (evalReference is not null && evalReference.Length != eval.Count * 2) throw new ArgumentException("evalReference needs two values per held-out pair.", nameof(evalReference));
        (_model, _train, _eval, _padId, _o, _reference) = (model, train, eval, padId, options, reference);
        (_trainReference, _evalReference) = options.NeedsReference ? (trainReference, evalReference) : (null, null);
    }

    public nn.Module Model => _model;
    public int TrainCount => _train.Count;
    public bool HasEval => _eval.Count > 0;

    public ITrainBatchSource CreateBatchSource(TrainOptions options) =>
        new ShuffledBatchSource<int>(Enumerable.Range(0, _train.Count).ToList(), options.BatchSize, options.Seed, group => Batch(_train, _trainReference, group));

    /// <summary>The pairs at <paramref name="indices"/> as one batch, with their precomputed reference values when there are some.</summary>
    private TrainBatch Batch(IReadOnlyList<PreferencePair> pairs, float[]? reference, IReadOnlyList<int> indices)
    {
        var batch = PreferenceData.Collate(indices.Select(i => pairs[i]).ToList(), _padId, _model.Device);
        if (reference is null) return batch;
        var values = indices.SelectMany(i => new[] { reference[2 * i], reference[2 * i + 1] }).ToArray();
        return batch with { RowValues = torch.tensor(values, new long[] { values.Length, 1 }, device: _model.Device) };
    }

    /// <summary>The reference first (when computed per batch), then the policy's final hidden states.</summary>
    public Tensor Forward(TrainBatch batch)
    {
        _pendingReference = _o.NeedsReference && batch.RowValues is null ? _reference!.SequenceLogps(batch) : null;
        return _model.HiddenStates(batch.InputIds, batch.AttentionMask);
    }

    public (Tensor Loss, long Tokens) Loss(Tensor output, TrainBatch batch)
    {
        var reference = batch.RowValues?.select(1, 0) ?? _pendingReference;
        _pendingReference = null;
        var (sum, tokens) = _model.SequenceLogps(output, batch.Labels);
        var result = Objective(sum, tokens, reference);
        foreach (var (k, v) in result.Metrics.ToDictionary())
        {
            var (s, n) = _window.GetValueOrDefault(k);
            _window[k] = (s + v, n + 1);
        }
        return (result.Loss, sum.shape[0] / 2);
    }

    public IReadOnlyDictionary<string, double> TakeStepMetrics()
    {
        var d = _window.ToDictionary(kv => kv.Key, kv => kv.Value.Sum / kv.Value.Count, StringComparer.Ordinal);
        _window.Clear();
        return d;
    }

    /// <summary>The objective's loss and metrics from each row's summed log-probability and token count (rows in pairs: chosen, rejected).</summary>
    internal PreferenceLossResult Objective(Tensor sum, Tensor tokens, Tensor? reference)
    {
        using var scope = torch.NewDisposeScope();
        var s = sum.view(-1, 2);
        var n = tokens.view(-1, 2).to_type(ScalarType.Float32);
        var (pc, pr) = (s.select(1, 0), s.select(1, 1));
        var (ac, ar) = (pc / n.select(1, 0), pr / n.select(1, 1)); // length-averaged
        Tensor? r = reference?.view(-1, 2);
        var result = _o.Objective switch
        {
            PreferenceObjective.Dpo => PreferenceLosses.Dpo(pc, pr, r!.select(1, 0), r.select(1, 1), _o.EffectiveBeta, _o.LabelSmoothing),
            PreferenceObjective.Ipo => PreferenceLosses.Ipo(ac, ar, r!.select(1, 0) / n.select(1, 0), r.select(1, 1) / n.select(1, 1), _o.EffectiveBeta),
            // TRL's ORPO: the SFT term is the cross-entropy averaged over every chosen response token of the batch.
            PreferenceObjective.Orpo => PreferenceLosses.Orpo(ac, ar, -pc.sum() / n.select(1, 0).sum(), _o.EffectiveOrpoLambda),
            _ => PreferenceLosses.SimPo(ac, ar, _o.EffectiveBeta, _o.EffectiveSimpoGamma, _o.LabelSmoothing),
        };
        return result with { Loss = scope.MoveToOuter(result.Loss) };
    }

    /// <summary>
    /// The held-out pairs in eval mode without gradients: <c>eval_loss</c> the objective's mean loss, <c>eval_accuracy</c>
    /// the preference accuracy (TRL's rewards/accuracies over every held-out pair), and TRL's other metrics pair-weighted.
    /// </summary>
    public EvalReport Evaluate(Trainer trainer, int step, TrainOptions options)
    {
        using var noGrad = torch.no_grad();
        _model.eval();
        int max = trainer.EvalMaxBatches, batches = 0, pairs = 0;
        double loss = 0;
        var sums = new Dictionary<string, double>(StringComparer.Ordinal);
        for (int i = 0; i < _eval.Count && (max == 0 || batches < max); i += options.BatchSize, batches++)
        {
            using var scope = torch.NewDisposeScope();
            var indices = Enumerable.Range(i, Math.Min(options.BatchSize, _eval.Count - i)).ToList();
            using var batch = Batch(_eval, _evalReference, indices);
            var reference = batch.RowValues?.select(1, 0) ?? (_o.NeedsReference ? _reference!.SequenceLogps(batch) : null);
            var hidden = _model.HiddenStates(batch.InputIds, batch.AttentionMask);
            var (sum, tokens) = _model.SequenceLogps(hidden, batch.Labels);
            var result = Objective(sum, tokens, reference);
            int b = indices.Count;
            loss += result.Loss.item<float>() * b;
            foreach (var (k, v) in result.Metrics.ToDictionary()) sums[k] = sums.GetValueOrDefault(k) + v * b;
            pairs += b;
        }
        var metrics = sums.ToDictionary(kv => kv.Key, kv => kv.Value / pairs, StringComparer.Ordinal);
        return new EvalReport(step, loss / pairs, double.NaN, metrics["rewards/accuracies"], pairs) { Metrics = metrics };
    }
}
