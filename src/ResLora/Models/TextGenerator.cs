namespace ResLora.Models;

/// <summary>
/// How to continue a prompt. Temperature 0 is greedy; otherwise sampling with optional top-k / top-p. A repetition
/// penalty (Hugging Face's <c>RepetitionPenaltyLogitsProcessor</c>) is applied to the logits before either. Generation
/// ends at a stop id (<see cref="EosTokenIds"/>), when <see cref="StopWhen"/> says so, when the decoded continuation
/// contains one of <see cref="StopStrings"/>, or when <see cref="MaxNewTokens"/> run out.
/// </summary>
public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 64;
    /// <summary>0 = greedy; below <see cref="GreedyBelowTemperature"/> also greedy (see there); above it, sampling.</summary>
    public double Temperature { get; init; } = 0.0;

    /// <summary>
    /// Temperatures below this pick greedily, as temperature 0 does. Sampling divides the logits by the temperature in
    /// float32: at 1e-38 and below the quotient overflows to infinity, softmax gives NaN and libtorch's multinomial throws
    /// (which failed every row of a served batch). As the temperature goes to 0 sampling becomes the arg-max, so greedy is
    /// the answer such a temperature asks for; 1e-5 leaves a wide margin (logits would have to exceed 3e33 to overflow).
    /// One rule for <c>reslora generate --temperature</c> and the server's <c>temperature</c>.
    /// </summary>
    public const double GreedyBelowTemperature = 1e-5;

    /// <summary>Whether tokens are picked by arg-max: temperature 0 or below <see cref="GreedyBelowTemperature"/>.</summary>
    public bool Greedy => Temperature < GreedyBelowTemperature;
    /// <summary>Keep only the k most likely tokens; 0 disables.</summary>
    public int TopK { get; init; }
    /// <summary>Nucleus sampling: keep the smallest set of tokens whose probability reaches p; 1 disables.</summary>
    public double TopP { get; init; } = 1.0;
    public long Seed { get; init; } = 0;
    /// <summary>Generation stops after emitting any of these ids (the id is included in the output).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = Array.Empty<int>();
    /// <summary>
    /// Also stop after a token when this returns true for the new tokens so far (a chat template's end-of-turn text that is
    /// several tokens in the vocabulary); null = only <see cref="EosTokenIds"/>.
    /// </summary>
    public Func<IReadOnlyList<int>, bool>? StopWhen { get; init; }
    /// <summary>
    /// Hugging Face's <c>repetition_penalty</c> (CTRL, Keskar et al. 2019, section 4.1): before picking a token, the logit
    /// of every id already in the sequence (prompt and generated) is divided by it when positive and multiplied by it
    /// when negative. 1 is off; above 1 discourages repeats, below 1 encourages them; must be &gt; 0.
    /// </summary>
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>
    /// Stop strings (OpenAI's <c>stop</c>): generation ends after the token with which the decoded continuation
    /// (<see cref="Decode"/>) first contains one of them; <see cref="CutAtStop"/> then removes the string and what follows.
    /// </summary>
    public IReadOnlyList<string> StopStrings { get; init; } = Array.Empty<string>();
    /// <summary>The text of the new tokens so far, as the caller will show it (stop ids dropped); needed for <see cref="StopStrings"/>.</summary>
    public Func<IReadOnlyList<int>, string>? Decode { get; init; }
    /// <summary>Reuse keys/values of earlier positions (each new token costs one position). Off only for checks.</summary>
    public bool UseKvCache { get; init; } = true;

    public void Validate()
    {
        if (MaxNewTokens < 0) throw new UserInputException($"--max-new-tokens must be ≥ 0, got {MaxNewTokens}.");
        if (!(Temperature >= 0) || double.IsInfinity(Temperature)) throw new UserInputException($"--temperature must be ≥ 0 (0 = greedy), got {Temperature}.");
        if (TopK < 0) throw new UserInputException($"--top-k must be ≥ 0 (0 = off), got {TopK}.");
        if (!(TopP > 0 && TopP <= 1)) throw new UserInputException($"--top-p must be in (0, 1], got {TopP}.");
        if (!(RepetitionPenalty > 0) || double.IsInfinity(RepetitionPenalty))
            throw new UserInputException($"--repetition-penalty must be a positive number (1 = off, above 1 discourages repeats), got {RepetitionPenalty}.");
        if (StopStrings.Any(string.IsNullOrEmpty)) throw new UserInputException("--stop strings must not be empty.");
        if (StopStrings.Count > 0 && Decode is null) throw new ArgumentException("StopStrings need Decode: the function that renders the new tokens as text.", nameof(Decode));
    }

    /// <summary>Whether generation ends after <paramref name="output"/> (the new tokens so far, the last one just chosen).</summary>
    internal bool ShouldStop(IReadOnlyList<int> output, ISet<int> stopIds) =>
        (output.Count > 0 && stopIds.Contains(output[^1]))
        || StopWhen?.Invoke(output) == true
        || (StopStrings.Count > 0 && StopIndex(Decode!(output)) >= 0);

    /// <summary><paramref name="text"/> up to the first of <see cref="StopStrings"/> in it (the string and what follows removed), else whole.</summary>
    public string CutAtStop(string text)
    {
        int cut = StopIndex(text);
        return cut >= 0 ? text[..cut] : text;
    }

    private int StopIndex(string text)
    {
        int cut = -1;
        foreach (var s in StopStrings)
        {
            int i = text.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (cut < 0 || i < cut)) cut = i;
        }
        return cut;
    }
}

/// <summary>Autoregressive decoding with a KV cache: the prompt is processed once, then one position per new token.</summary>
public static class TextGenerator
{
    /// <summary>Returns only the new token ids (the prompt is not repeated).</summary>
    public static IReadOnlyList<int> Generate(CausalLM model, IReadOnlyList<int> promptIds, GenerationOptions options, Action<int>? onToken = null)
    {
        options.Validate();
        if (promptIds.Count == 0)
            throw new UserInputException("the prompt has no tokens and the tokenizer has no BOS token to start from; give a non-empty --prompt.");
        int vocab = model.Config.VocabSize;
        foreach (int id in promptIds)
            if (id < 0 || id >= vocab) throw new UserInputException($"prompt token id {id} is outside the model's vocabulary (vocab_size {vocab}).");
        if (promptIds.Count + options.MaxNewTokens > model.Config.MaxPositionEmbeddings)
            throw new UserInputException($"prompt ({promptIds.Count} tokens) + --max-new-tokens ({options.MaxNewTokens}) exceeds the model's max_position_embeddings ({model.Config.MaxPositionEmbeddings}).");

        bool wasTraining = model.training;
        model.eval();
        var output = new List<int>();
        var eos = new HashSet<int>(options.EosTokenIds);
        using var gen = new torch.Generator((ulong)options.Seed, model.Device);
        using var noGrad = torch.no_grad();
        using var cache = options.UseKvCache ? new KvCache(model.Config.NumHiddenLayers) : null;
        var context = new List<int>(promptIds);
        try
        {
            IReadOnlyList<int> feed = promptIds;
            for (int step = 0; step < options.MaxNewTokens; step++)
            {
                using var scope = torch.NewDisposeScope();
                // With the cache only the new positions go in; without it, the whole context every time.
                var ids = torch.tensor(feed.Select(i => (long)i).ToArray(), dtype: ScalarType.Int64, device: model.Device).unsqueeze(0);
                var logits = model.Forward(ids, null, cache); // (1, seq, vocab)
                var last = logits[0, -1].to_type(ScalarType.Float32); // (vocab)
                if (options.RepetitionPenalty != 1.0) last = PenalizeRepeats(last, context, options.RepetitionPenalty);
                int next = Pick(last, options, gen);
                output.Add(next);
                onToken?.Invoke(next);
                if (options.ShouldStop(output, eos)) break;
                context.Add(next);
                feed = options.UseKvCache ? new[] { next } : context;
            }
        }
        finally
        {
            if (wasTraining) model.train();
        }
        return output;
    }

    /// <summary>
    /// Hugging Face's repetition penalty on one row of logits (vocab): for every distinct id in <paramref name="seen"/>
    /// (the prompt and the tokens generated so far), a positive logit is divided by <paramref name="penalty"/> and a
    /// negative one multiplied by it (CTRL, Keskar et al. 2019, section 4.1; transformers'
    /// <c>RepetitionPenaltyLogitsProcessor</c>). Other logits are unchanged. Returns a new tensor.
    /// </summary>
    public static Tensor PenalizeRepeats(Tensor logits, IEnumerable<int> seen, double penalty)
    {
        var ids = seen.Distinct().Select(i => (long)i).ToArray();
        if (ids.Length == 0 || penalty == 1.0) return logits.clone();
        using var scope = torch.NewDisposeScope();
        var idx = torch.tensor(ids, dtype: ScalarType.Int64, device: logits.device); // (seen)
        var score = logits.gather(0, idx); // (seen)
        score = torch.where(score > 0, score / penalty, score * penalty);
        return logits.scatter(0, idx, score).MoveToOuterDisposeScope(); // (vocab)
    }

    /// <summary>Greedy arg-max at temperature 0; otherwise softmax(logits/T) restricted by top-k and top-p, sampled.</summary>
    internal static int Pick(Tensor logits, GenerationOptions o, torch.Generator gen)
    {
        using var scope = torch.NewDisposeScope();
        if (o.Greedy) return (int)logits.argmax().item<long>();
        // A repetition penalty near 0 (valid: > 0) divides positive logits into +inf; inf - inf in softmax is NaN and
        // multinomial throws, failing every row of a served batch. Clamped, the tokens at the top share the mass.
        var l = (logits / o.Temperature).nan_to_num(0.0, float.MaxValue, float.MinValue);
        if (o.TopK > 0 && o.TopK < l.shape[0])
        {
            var kth = l.topk(o.TopK).values[-1];
            l = l.masked_fill(l < kth, double.NegativeInfinity);
        }
        var probs = l.softmax(-1);
        if (o.TopP < 1.0)
        {
            var (sorted, idx) = probs.sort(-1, descending: true);
            var cum = sorted.cumsum(-1);
            // Drop a token when the mass before it already reaches p; the most likely token is always kept.
            // A top_p below float32's smallest value (~1e-45) compares as 0, which would drop that token too (all-zero
            // probabilities, NaN, multinomial throws): keep the first explicitly.
            var drop = (cum - sorted) >= o.TopP;
            drop[0] = torch.tensor(false, device: drop.device);
            sorted = sorted.masked_fill(drop, 0.0);
            probs = torch.zeros_like(probs).scatter(-1, idx, sorted);
            probs = probs / probs.sum();
        }
        return (int)torch.multinomial(probs, 1, false, gen).item<long>();
    }
}
