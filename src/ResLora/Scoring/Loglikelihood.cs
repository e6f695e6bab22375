using ResLora.Models;

namespace ResLora.Scoring;

/// <summary>
/// The forward a log-likelihood scorer runs: logits (batch, seq, vocab) of token ids (batch, seq), with an attention mask
/// (batch, past + seq) of 1 = token, 0 = padding (or null), one adapter name per row (null = the base), and a KV cache
/// to extend (or null). An <c>AdapterSet.Forward</c> is one as it stands (mixed-adapter batches);
/// <see cref="LoglikelihoodForwards.Of(CausalLM)"/> makes one from a plain model. It must not record gradients.
/// </summary>
public delegate Tensor LoglikelihoodForward(Tensor inputIds, Tensor? attentionMask, IReadOnlyList<string?> adapterPerRow, KvCache? cache);

/// <summary>Makes <see cref="LoglikelihoodForward"/>s.</summary>
public static class LoglikelihoodForwards
{
    /// <summary>
    /// The plain model's forward, without gradient. It has no adapters to route: a row naming one is refused (score
    /// adapters through an <c>AdapterSet</c>'s forward).
    /// </summary>
    /// <param name="model">The model (put it in eval mode first when it has dropout).</param>
    public static LoglikelihoodForward Of(CausalLM model) => Make(model, hidden: false);

    /// <summary>As <see cref="Of(CausalLM)"/>, returning final hidden states (batch, seq, hidden) instead of logits (apply <see cref="CausalLM.Logits"/> to the rows needed).</summary>
    /// <param name="model">The model.</param>
    public static LoglikelihoodForward HiddenOf(CausalLM model) => Make(model, hidden: true);

    private static LoglikelihoodForward Make(CausalLM model, bool hidden)
    {
        ArgumentNullException.ThrowIfNull(model);
        return (ids, mask, adapters, cache) =>
        {
            for (int i = 0; i < adapters.Count; i++)
                if (adapters[i] is { } a)
                    throw new UserInputException($"request adapter '{a}': this model was loaded without adapters; load it as an adapter set (--adapter {a}=DIR) or score without naming an adapter.");
            using var _ = torch.no_grad();
            return hidden ? model.HiddenStates(ids, mask, cache) : model.Forward(ids, mask, cache);
        };
    }
}

/// <summary>One log-likelihood question as lm-eval asks it: how likely is <paramref name="Continuation"/> after <paramref name="Context"/>?</summary>
/// <param name="Context">The text conditioned on (the question, with its target delimiter); may be empty.</param>
/// <param name="Continuation">The text scored (one choice).</param>
/// <param name="Adapter">The adapter to score with; null for the base model.</param>
public sealed record LoglikelihoodRequest(string Context, string Continuation, string? Adapter = null);

/// <summary>The same question already tokenized (<see cref="EncodePair.Encode"/>, or WinoGrande-style partial scoring that builds its own ids).</summary>
/// <param name="Context">Context ids (at least one).</param>
/// <param name="Continuation">Continuation ids (at least one).</param>
/// <param name="Adapter">The adapter to score with; null for the base model.</param>
public sealed record LoglikelihoodTokens(IReadOnlyList<int> Context, IReadOnlyList<int> Continuation, string? Adapter = null);

/// <summary>lm-eval's answer to a log-likelihood request.</summary>
/// <param name="Logprob">Sum over the continuation's tokens of each token's natural-log probability given every token before it (float32 log-softmax).</param>
/// <param name="IsGreedy">Whether every continuation token is the arg-max at its position (greedy decoding would produce the continuation).</param>
/// <param name="ContinuationTokens">How many tokens the continuation encoded to.</param>
public sealed record LoglikelihoodResult(double Logprob, bool IsGreedy, int ContinuationTokens);

/// <summary>How a <see cref="LoglikelihoodScorer"/> batches its forwards.</summary>
public sealed record LoglikelihoodOptions
{
    /// <summary>
    /// Longest input a forward sees (lm-eval's <c>max_length</c>): a request whose context + continuation exceeds it by more
    /// than one token is cut from the left to its last <c>MaxLength + 1</c> tokens (the last is never input), as lm-eval
    /// does. Null: the model's <c>max_position_embeddings</c>.
    /// </summary>
    public int? MaxLength { get; init; }

    /// <summary>
    /// Rows per forward: requests per naive batch, and continuations per shared-context batch (a question with more
    /// choices than this still goes as one batch).
    /// </summary>
    public int BatchSize { get; init; } = 16;

    /// <summary>
    /// Forward each distinct context once per adapter and reuse its keys and values for every continuation after it
    /// (true, the default); false scores every request as its own row of context + continuation (lm-eval's way).
    /// Both give the same numbers up to float32 rounding.
    /// </summary>
    public bool SharedContext { get; init; } = true;

    /// <summary>Rejects settings out of range, naming the field.</summary>
    public void Validate()
    {
        if (MaxLength is < 1) throw new UserInputException($"max length {MaxLength}: must be at least 1 token.");
        if (BatchSize < 1) throw new UserInputException($"batch size {BatchSize}: must be at least 1.");
    }
}
