using System.Diagnostics;
using ResLora.Adapters;
using ResLora.Models;
using ResLora.Training.Distributed;
using ResLora.Training.Optimization;

namespace ResLora.Training;

/// <summary>
/// One batch of token ids. For a causal LM <c>Labels</c> are aligned with <c>InputIds</c> (−100 = no loss) and the loss
/// shifts them; for sequence classification they are one class id (or one float for regression) per row, and
/// <c>TokenTypeIds</c> carries the segments of sentence pairs.
/// </summary>
public sealed record TrainBatch(Tensor InputIds, Tensor AttentionMask, Tensor Labels, Tensor? TokenTypeIds = null) : IDisposable
{
    /// <summary>
    /// Rows that belong together and are never split between the ranks of a data-parallel job: 2 for preference pairs
    /// (each pair's chosen and rejected rows side by side), 1 otherwise.
    /// </summary>
    public int RowGroup { get; init; } = 1;

    /// <summary>Per-row float values a task's loss reads (rows, k), e.g. precomputed reference log-probabilities; null when none.</summary>
    public Tensor? RowValues { get; init; }

    public void Dispose()
    {
        RowValues?.Dispose();
        InputIds.Dispose();
        AttentionMask.Dispose();
        Labels.Dispose();
        TokenTypeIds?.Dispose();
    }
}

/// <summary>An endless, deterministic source of training batches whose position can be saved and restored (resume).</summary>
public interface ITrainBatchSource
{
    TrainBatch Next();

    /// <summary>Opaque JSON of the current position (epoch, index, seed).</summary>
    string SavePosition();

    void RestorePosition(string json);
}

/// <summary>What the trainer reports after each optimizer step.</summary>
public sealed record StepReport(int Step, int TotalSteps, double Loss, double LearningRate, double TokensPerSecond, double ElapsedSeconds)
{
    /// <summary>A task's further training metrics over the logging window (<see cref="IStepMetricsSource"/>), e.g. <c>rewards/margins</c>.</summary>
    public IReadOnlyDictionary<string, double>? Metrics { get; init; }
}

/// <summary>What an evaluation produced; <see cref="Metrics"/> holds a task's further scores (f1, mcc, pearson, ...).</summary>
public sealed record EvalReport(int Step, double Loss, double Perplexity, double? Accuracy, int Tokens)
{
    public IReadOnlyDictionary<string, double>? Metrics { get; init; }
}

/// <summary>
/// The method-agnostic trainer (nanoGPT's trainer that knows nothing about the model's method): AdamW, warm-up then
/// cosine/linear decay, gradient accumulation, clipping, method capabilities (extra loss terms, optimizer-step hooks),
/// every step inside one dispose scope, NaN/Inf guard, periodic evaluation and atomic checkpoints with exact resume.
/// </summary>
public sealed class Trainer
{
    private readonly nn.Module _model;
    private readonly CausalLM? _lm;
    private readonly Func<TrainBatch, Tensor> _forward;
    private readonly TrainOptions _o;
    private readonly IReadOnlyList<Parameter> _params;
    private readonly IReadOnlyList<IExtraLossTerm> _extraLosses;
    private readonly IReadOnlyList<IOptimizerStepHook> _hooks;
    private readonly IReadOnlyList<IShardedStatistics> _sharded;
    private readonly IReadOnlyList<IStepStartHook> _stepStarts;

    private readonly Func<Tensor, TrainBatch, (Tensor Loss, long Tokens)> _loss;

    /// <summary>
    /// A trainer of <paramref name="model"/>'s trainable parameters. <paramref name="loss"/> is the task loss of a batch from
    /// the model's logits; distillation passes its KL to a teacher here. Without it the loss is the masked next-token
    /// cross-entropy with the LM head applied in chunks (<see cref="CausalLM.CausalLmLoss"/>), so the batch's
    /// logits never exist.
    /// </summary>
    public Trainer(CausalLM model, TrainOptions options, IEnumerable<object> capabilities, Func<Tensor, TrainBatch, (Tensor Loss, long Tokens)>? loss = null)
        : this(model,
            loss is null ? b => model.HiddenStates(b.InputIds, b.AttentionMask) : b => model.forward(b.InputIds, b.AttentionMask),
            options, capabilities, loss ?? ((hidden, batch) => model.CausalLmLoss(hidden, batch.Labels)))
    {
        _lm = model;
    }

    /// <summary>A trainer of any model: <paramref name="forward"/> maps a batch to the model's output, <paramref name="loss"/> scores it.</summary>
    public Trainer(nn.Module model, Func<TrainBatch, Tensor> forward, TrainOptions options, IEnumerable<object> capabilities, Func<Tensor, TrainBatch, (Tensor Loss, long Tokens)> loss)
    {
        _loss = loss;
        _forward = forward;
        options.Validate();
        _model = model;
        _o = options;
        _params = model.parameters().Where(p => p.requires_grad).ToList();
        if (_params.Count == 0)
            throw new UserInputException("the model has no trainable parameters: no adapter was attached (check --targets) or everything is frozen.");
        var caps = capabilities.Distinct().ToList();
        _extraLosses = caps.OfType<IExtraLossTerm>().ToList();
        _hooks = caps.OfType<IOptimizerStepHook>().ToList();
        _sharded = caps.OfType<IShardedStatistics>().ToList();
        _stepStarts = caps.OfType<IStepStartHook>().ToList();
    }

    /// <summary>
    /// The ranks of a data-parallel job (null: one process). Each step every rank takes its shard of each global batch,
    /// the gradients and method statistics are summed over the ranks, and every rank applies the same update.
    /// </summary>
    public ICommunicator? Communicator { get; init; }

    /// <summary>Elements per gradient all-reduce (<see cref="DataParallel.DefaultBucketElements"/>).</summary>
    public int BucketElements { get; init; } = DataParallel.DefaultBucketElements;

    /// <summary>Bytes of gradients the last data-parallel step all-reduced (0 in one process).</summary>
    public long LastAllReducedBytes { get; private set; }

    /// <summary>Seconds the last data-parallel step spent in all-reduce calls, waiting for the slowest rank included.</summary>
    public double LastAllReduceSeconds { get; private set; }

    public IReadOnlyList<Parameter> TrainableParameters => _params;

    /// <summary>
    /// AdamW over the trainable parameters: one group, or with <see cref="TrainOptions.LoraPlusLrRatio"/> LoRA+'s four
    /// (<see cref="LoraPlusGroups"/>), each keeping its ratio to the scheduled lr. With <see cref="TrainOptions.Precondition"/>
    /// riemannian, the steps of this optimizer are preconditioned (<see cref="RiemannianPreconditioner"/>); a model it
    /// cannot apply to is refused here, before the first step.
    /// </summary>
    public optim.Optimizer CreateOptimizer()
    {
        _preconditioner = _o.Precondition == "riemannian" ? RiemannianPreconditioner.For(_model, _hooks, _o.PreconditionDelta) : null;
        if (_o.LoraPlusLrRatio is not { } ratio)
        {
            _lrRatios = null;
            return torch.optim.AdamW(_params, _o.LearningRate, _o.Beta1, _o.Beta2, _o.AdamEps, _o.WeightDecay);
        }
        var groups = LoraPlusGroups.Split(_model, _params, ratio, _o.LoraPlusLrEmbedding / _o.LearningRate);
        _lrRatios = groups.Select(g => g.LrRatio).ToArray();
        return LoraPlusGroups.AdamW(groups, _o);
    }

    /// <summary>Each parameter group's lr over the base lr (LoRA+), or null: every group follows the base lr.</summary>
    private double[]? _lrRatios;

    /// <summary>The preconditioner of <see cref="CreateOptimizer"/>'s optimizer, or null.</summary>
    private RiemannianPreconditioner? _preconditioner;

    /// <summary>Learning-rate multiplier at 1-based step <paramref name="step"/> (Hugging Face's warm-up + decay formulas).</summary>
    public static double LrMultiplier(int step, int total, int warmup, string schedule)
    {
        // Hugging Face evaluates its schedules at the 0-based count of updates already made, and warms up from 0.
        int s = step - 1;
        if (s < warmup) return (double)s / Math.Max(1, warmup);
        double progress = total > warmup ? (double)(s - warmup) / Math.Max(1, total - warmup) : 1.0;
        return schedule switch
        {
            "constant" => 1.0,
            "linear" => Math.Max(0.0, 1.0 - progress),
            _ => Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * progress))),
        };
    }

    /// <summary>Masked next-token cross-entropy: logits (b, t, v) predict labels shifted by one; −100 is ignored.</summary>
    public static (Tensor Loss, long Tokens) CausalLmLoss(Tensor logits, Tensor labels)
    {
        long v = logits.shape[2];
        using var shiftLogits = logits[.., ..^1, ..].reshape(-1, v).to_type(ScalarType.Float32); // (b·(t−1), v)
        using var shiftLabels = labels[.., 1..].reshape(-1);                                          // (b·(t−1))
        using var valid = shiftLabels.ne(-100);
        long n = valid.sum().item<long>();
        var sum = nn.functional.cross_entropy(shiftLogits, shiftLabels, ignore_index: -100, reduction: nn.Reduction.Sum);
        if (n == 0) return (sum, 0);
        var mean = sum / n;
        sum.Dispose();
        return (mean, n);
    }

    /// <summary>
    /// Runs one optimizer step: <see cref="TrainOptions.GradAccum"/> micro-batches, clipping, hooks, lr schedule, step.
    /// Returns the mean task loss and the number of loss tokens. Throws on a NaN or infinite loss before any update.
    /// </summary>
    public (double Loss, long Tokens, long InputTokens) Step(optim.Optimizer optimizer, ITrainBatchSource data, int step, int totalSteps)
    {
        foreach (var h in _stepStarts) h.BeginOptimizerStep(step, totalSteps);
        if (Communicator is { } comm) return ShardedStep(comm, optimizer, data, step, totalSteps);
        using var scope = torch.NewDisposeScope();
        _model.train();
        double lossSum = 0;
        long tokens = 0, inputTokens = 0;
        for (int micro = 0; micro < _o.GradAccum; micro++)
        {
            using var batch = data.Next();
            var output = _forward(batch);
            var (loss, n) = _loss(output, batch);
            double lv = loss.item<float>();
            if (!double.IsFinite(lv))
                throw new UserInputException($"training loss became {lv} at step {step}; stopped before updating. The last good checkpoint is intact. Lower --lr, raise --warmup-steps, or use --dtype float32.");
            lossSum += lv;
            tokens += n;
            inputTokens += batch.AttentionMask.sum().item<long>();
            var total = loss / _o.GradAccum;
            foreach (var extra in _extraLosses) total = total + extra.ExtraLoss() / _o.GradAccum;
            total.backward();
        }
        Update(optimizer, step, totalSteps);
        return (lossSum / _o.GradAccum, tokens, inputTokens);
    }

    /// <summary>Clipping, the lr schedule (each group at its ratio), the method hooks, the preconditioner and the optimizer step on the final gradients.</summary>
    private void Update(optim.Optimizer optimizer, int step, int totalSteps)
    {
        if (_o.MaxGradNorm > 0) nn.utils.clip_grad_norm_(_params, _o.MaxGradNorm);
        double lr = _o.LearningRate * LrMultiplier(step, totalSteps, _o.WarmupSteps, _o.Schedule);
        var groups = optimizer.ParamGroups.ToList();
        if (_lrRatios is not null && groups.Count != _lrRatios.Length)
            throw new InvalidOperationException($"the optimizer has {groups.Count} parameter groups, CreateOptimizer made {_lrRatios.Length}; step the optimizer this trainer created.");
        for (int i = 0; i < groups.Count; i++) groups[i].LearningRate = lr * (_lrRatios?[i] ?? 1.0);
        var ctx = new OptimizerStepContext(step, totalSteps, optimizer);
        foreach (var h in _hooks) h.BeforeOptimizerStep(ctx);
        // PrecLoRA is part of the optimizer's step (PEFT wraps optimizer.step): after clipping and the method hooks.
        _preconditioner?.Apply();
        optimizer.step();
        foreach (var h in _hooks) h.AfterOptimizerStep(ctx);
        optimizer.zero_grad();
    }

    /// <summary>
    /// One data-parallel step (<see cref="Communicator"/>): every rank draws the same global micro-batches and takes its
    /// rows (<see cref="DataParallel.ShardRows"/>). Per micro-batch the ranks sum (loss sum, loss items, input tokens), so
    /// each knows the global mean (the NaN guard stops every rank together) and weights its loss by items_r/N; the extra
    /// loss terms, computed from the identical parameters on every rank, count 1/ranks each. Then one bucketed all-reduce
    /// of the gradients with the method statistics, and the same update as one process (clipping and the hooks see the
    /// summed gradients, so AdaLoRA's sensitivities and RefLoRA's refactoring agree on every rank).
    /// </summary>
    private (double Loss, long Tokens, long InputTokens) ShardedStep(ICommunicator comm, optim.Optimizer optimizer, ITrainBatchSource data, int step, int totalSteps)
    {
        using var scope = torch.NewDisposeScope();
        _model.train();
        torch.manual_seed(DataParallel.DropoutSeed(_o.Seed, step, comm.Rank));
        foreach (var s in _sharded) s.BeginShardedStep(_o.GradAccum);
        double lossSum = 0;
        long tokens = 0, inputTokens = 0;
        var sums = new double[3];
        var inMpi = new Stopwatch();
        for (int micro = 0; micro < _o.GradAccum; micro++)
        {
            foreach (var s in _sharded) s.BeginMicroBatch(micro);
            using var global = data.Next();
            int group = global.RowGroup;
            var (start, rows) = DataParallel.ShardRows((int)global.InputIds.shape[0] / group, comm.Rank, comm.Size);
            (start, rows) = (start * group, rows * group);
            Tensor? loss = null;
            long n = 0;
            Array.Clear(sums);
            if (rows > 0)
            {
                using var shard = DataParallel.Slice(global, start, rows);
                var output = _forward(shard);
                (loss, n) = _loss(output, shard);
                double lv = loss.item<float>();
                sums[0] = n > 0 ? lv * n : lv;
                sums[1] = n;
                sums[2] = shard.AttentionMask.sum().item<long>();
            }
            inMpi.Start();
            comm.AllReduceSum(sums);
            inMpi.Stop();
            double globalLoss = DataParallel.GlobalMean(sums[0], sums[1]);
            if (!double.IsFinite(globalLoss))
                throw new AgreedStopException($"training loss became {globalLoss} at step {step} (on at least one of {comm.Size} ranks); every rank stopped before updating. The last good checkpoint is intact. Lower --lr, raise --warmup-steps, or use --dtype float32.");
            lossSum += globalLoss;
            tokens += (long)sums[1];
            inputTokens += (long)sums[2];
            Tensor? total = loss?.mul(DataParallel.LossWeight(n, (long)sums[1]) / _o.GradAccum);
            foreach (var extra in _extraLosses)
            {
                var share = extra.ExtraLoss() / (_o.GradAccum * comm.Size);
                total = total is null ? share : total + share;
            }
            total?.backward();
        }
        // The method statistics ride in the gradients' first buffer (float32 is ample for sums of squared norms).
        var partials = _sharded.Select(s => s.PartialStatistics()).ToList();
        var alongside = partials.SelectMany(x => x).Select(v => (float)v).ToArray();
        inMpi.Start();
        LastAllReducedBytes = _o.GradAccum * sums.Length * sizeof(double) + DataParallel.AllReduceGradients(_params, comm, BucketElements, alongside);
        inMpi.Stop();
        LastAllReduceSeconds = inMpi.Elapsed.TotalSeconds;
        int at = 0;
        for (int i = 0; i < _sharded.Count; i++)
        {
            _sharded[i].CompleteShardedStep(alongside.AsSpan(at, partials[i].Length).ToArray().Select(v => (double)v).ToArray());
            at += partials[i].Length;
        }
        Update(optimizer, step, totalSteps);
        return (lossSum / _o.GradAccum, tokens, inputTokens);
    }

    /// <summary>Mean loss (token-weighted) and perplexity over the evaluation batches; no gradients, eval mode.</summary>
    public (double Loss, double Perplexity, int Tokens) EvaluateLoss(IEnumerable<TrainBatch> batches) =>
        Evaluation.Loss(_lm ?? throw new InvalidOperationException("EvaluateLoss is the causal-LM evaluation; this trainer was built for another task."), batches, _o.EvalMaxBatches);

    /// <summary>At most this many evaluation batches (0 = all).</summary>
    public int EvalMaxBatches => _o.EvalMaxBatches;
}
