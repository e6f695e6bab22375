using ResLora.Models;

namespace ResLora.Scoring;

/// <summary>One scored token: its log-probability given every token before it, whether it is the greedy choice there, and the most likely alternatives.</summary>
/// <param name="Token">The token id at this position.</param>
/// <param name="Logprob">Natural-log probability of <paramref name="Token"/> given the tokens before it (float32 log-softmax of the logits).</param>
/// <param name="IsGreedy">Whether <paramref name="Token"/> is the arg-max there (ties: the lowest id, as torch's argmax picks).</param>
/// <param name="Top">The <c>topK</c> most likely tokens with their log-probabilities, most likely first (empty when none were asked for).</param>
public sealed record TokenScore(int Token, double Logprob, bool IsGreedy, IReadOnlyList<(int Token, double Logprob)> Top);

/// <summary>
/// Log-probabilities of given tokens under a causal LM: the reference computation (one full forward per sequence, no
/// cache) that faster scorers are checked against, and what a server returns for <c>echo</c> with <c>logprobs</c>.
/// </summary>
public static class TokenLogprobs
{
    /// <summary>Logits (1, seq, vocab) of token ids (1, seq): the model itself, or an adapter set's routed forward.</summary>
    public delegate Tensor LogitsOf(Tensor inputIds);

    /// <summary>The plain model's forward (no mask, no cache, no gradient).</summary>
    public static LogitsOf Of(CausalLM model) => ids => { using var _ = torch.no_grad(); return model.Forward(ids, null, null); };

    /// <summary>
    /// Scores <paramref name="tokens"/>[<paramref name="from"/>..]: entry i of the result is token
    /// <c>tokens[from + i]</c> given <c>tokens[..(from + i)]</c>. Position 0 has no context and cannot be scored, so
    /// <paramref name="from"/> must be at least 1.
    /// </summary>
    /// <param name="logitsOf">The forward to use.</param>
    /// <param name="tokens">The whole sequence (context and continuation).</param>
    /// <param name="from">First position to score (≥ 1).</param>
    /// <param name="topK">Alternatives to report per position (0 = none).</param>
    /// <param name="device">Where the ids go.</param>
    public static IReadOnlyList<TokenScore> Score(LogitsOf logitsOf, IReadOnlyList<int> tokens, int from, int topK = 0, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(logitsOf);
        if (from < 1) throw new ArgumentOutOfRangeException(nameof(from), from, "position 0 has no context; score from 1 on.");
        if (from > tokens.Count) throw new ArgumentOutOfRangeException(nameof(from), from, $"the sequence has {tokens.Count} tokens.");
        if (topK < 0) throw new ArgumentOutOfRangeException(nameof(topK), topK, "must be 0 or more.");
        if (from == tokens.Count) return Array.Empty<TokenScore>();
        using var scope = torch.NewDisposeScope();
        var ids = torch.tensor(tokens.Select(t => (long)t).ToArray(), dtype: ScalarType.Int64, device: device ?? torch.CPU).unsqueeze(0);
        var logits = logitsOf(ids);
        // Position p predicts token p + 1: rows from-1 .. n-2 predict tokens from .. n-1.
        var rows = logits[0].narrow(0, from - 1, tokens.Count - from).to(ScalarType.Float32);
        var logp = rows.log_softmax(-1);
        var target = torch.tensor(tokens.Skip(from).Select(t => (long)t).ToArray(), dtype: ScalarType.Int64, device: logp.device);
        float[] picked = logp.gather(1, target.unsqueeze(1)).squeeze(1).cpu().data<float>().ToArray();
        long[] argmax = logp.argmax(1).cpu().data<long>().ToArray();
        int k = (int)Math.Min(topK, logp.shape[1]);
        float[]? topValues = null; long[]? topIds = null;
        if (k > 0)
        {
            var (values, indices) = logp.topk(k, dim: 1, largest: true, sorted: true);
            topValues = values.cpu().data<float>().ToArray();
            topIds = indices.cpu().data<long>().ToArray();
        }
        var result = new TokenScore[picked.Length];
        for (int i = 0; i < picked.Length; i++)
        {
            var top = new (int, double)[k];
            for (int j = 0; j < k; j++) top[j] = ((int)topIds![i * k + j], topValues![i * k + j]);
            int token = tokens[from + i];
            result[i] = new TokenScore(token, picked[i], argmax[i] == token, top);
        }
        return result;
    }
}
