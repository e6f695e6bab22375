using ResLora.Models;
using ResLora.Text;

namespace ResLora.Training;

/// <summary>
/// What a training run needs to know about its task: the model, how a batch goes through it and is scored, where batches
/// come from, and how the held-out set is evaluated. The loop (<see cref="TrainLoop"/>) is the same for every task.
/// </summary>
public interface ITrainTask
{
    /// <summary>The model whose trainable parameters are optimised.</summary>
    nn.Module Model { get; }

    /// <summary>Training examples per epoch (for epoch-based step counts).</summary>
    int TrainCount { get; }

    /// <summary>Whether there is a held-out set to evaluate.</summary>
    bool HasEval { get; }

    /// <summary>The deterministic, resumable batch source of the training set.</summary>
    ITrainBatchSource CreateBatchSource(TrainOptions options);

    /// <summary>The model's output for a batch (what <see cref="Loss"/> scores: logits, or final hidden states for a loss that applies the head itself).</summary>
    Tensor Forward(TrainBatch batch);

    /// <summary>The task loss of an output and the number of items it averages over.</summary>
    (Tensor Loss, long Tokens) Loss(Tensor output, TrainBatch batch);

    /// <summary>Scores the held-out set at <paramref name="step"/> (eval mode, no gradients).</summary>
    EvalReport Evaluate(Trainer trainer, int step, TrainOptions options);
}

/// <summary>
/// A task that reports more than its loss while training (preference tuning's rewards and log-probabilities, under TRL's
/// names). The loop takes the metrics when it logs a step: each is written to metrics.jsonl and TensorBoard beside the loss.
/// </summary>
public interface IStepMetricsSource
{
    /// <summary>Each metric's mean over the micro-batches since the last call, then forgets them (empty when there were none).</summary>
    IReadOnlyDictionary<string, double> TakeStepMetrics();
}

/// <summary>Causal language modelling: masked next-token loss, perplexity, exact-match accuracy of greedy answers.</summary>
public sealed class CausalLmTask(
    CausalLM model,
    ITextTokenizer tokenizer,
    IReadOnlyList<TokenizedExample> train,
    IReadOnlyList<TokenizedExample>? eval = null,
    IReadOnlyList<TextExample>? accuracyExamples = null) : ITrainTask
{
    private readonly IReadOnlyList<TokenizedExample> _eval = eval ?? Array.Empty<TokenizedExample>();
    private readonly IReadOnlyList<TextExample> _accuracy = accuracyExamples ?? Array.Empty<TextExample>();
    private readonly int _pad = tokenizer.PadTokenId ?? (tokenizer.EosTokenIds.Count > 0 ? tokenizer.EosTokenIds[0] : 0);

    public nn.Module Model => model;
    public int TrainCount => train.Count;
    public bool HasEval => _eval.Count > 0;

    public ITrainBatchSource CreateBatchSource(TrainOptions options) => new ShuffledBatchSource(train, options.BatchSize, _pad, options.Seed, model.Device);

    /// <summary>Final hidden states: the loss applies the LM head in chunks, so the batch's logits never exist.</summary>
    public Tensor Forward(TrainBatch batch) => model.HiddenStates(batch.InputIds, batch.AttentionMask);

    public (Tensor Loss, long Tokens) Loss(Tensor output, TrainBatch batch) => model.CausalLmLoss(output, batch.Labels);

    /// <summary>Loss/perplexity over the eval set, plus exact-match accuracy of greedy answers when there are prompt/completion examples.</summary>
    public EvalReport Evaluate(Trainer trainer, int step, TrainOptions options)
    {
        var (loss, ppl, tokens) = Evaluation.Loss(model, Tokenization.Sequential(_eval, options.BatchSize, _pad, model.Device), trainer.EvalMaxBatches);
        double? acc = null;
        if (options.EvalGenerateExamples > 0 && _accuracy.Count > 0)
            acc = Accuracy.ExactMatch(model, tokenizer, _accuracy.Take(options.EvalGenerateExamples).ToList(), options.MaxNewTokens);
        return new EvalReport(step, loss, ppl, acc, tokens);
    }
}
