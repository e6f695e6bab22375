using ResLora.Scoring;
using ResLora.Text;

namespace ResLora.Pipelines.Serving;

/// <summary>
/// The log-probabilities of a completion's tokens in the shape of OpenAI's legacy completions <c>logprobs</c> object:
/// one entry per token (the echoed prompt's tokens first when the request echoes, then the generated ones). The first
/// echoed token has no context, so its log-probability and alternatives are null, as OpenAI's API and vLLM give them.
/// </summary>
/// <param name="TokenIds">The tokens' ids.</param>
/// <param name="Tokens">Each token's own text (the token decoded alone, special tokens written out).</param>
/// <param name="TokenLogprobs">Each token's natural-log probability given every token before it; null for a first token without context.</param>
/// <param name="TopLogprobs">
/// Per token: the requested number of most likely tokens (text → log-probability, most likely first) plus the token
/// itself when it is not among them (OpenAI's "up to logprobs + 1"); null where the log-probability is null. Two ids
/// with the same text share one key, which keeps the more likely one.
/// </param>
/// <param name="TextOffset">Where each token starts in the answer's text: the running sum of the tokens' text lengths, starting at 0 when the prompt is echoed, else at the prompt text's length.</param>
public sealed record CompletionLogprobs(IReadOnlyList<int> TokenIds, IReadOnlyList<string> Tokens, IReadOnlyList<double?> TokenLogprobs,
    IReadOnlyList<IReadOnlyList<KeyValuePair<string, double>>?> TopLogprobs, IReadOnlyList<int> TextOffset)
{
    /// <summary>The most alternatives a request may ask for: OpenAI's legacy completions cap.</summary>
    public const int MaxTopLogprobs = 5;

    /// <summary>
    /// Builds the object for <paramref name="sequence"/>[<paramref name="first"/>..] from its scores. Not thread-safe
    /// for the tokenizer: the caller holds whatever lock guards it.
    /// </summary>
    /// <param name="tokenizer">Turns ids into the tokens' texts.</param>
    /// <param name="sequence">Prompt and generated ids.</param>
    /// <param name="first">The first entry's position: 0 with echo (that entry has no score), else the prompt's length.</param>
    /// <param name="scores"><see cref="Scoring.TokenLogprobs.Score"/> of <paramref name="sequence"/> from <c>max(first, 1)</c>.</param>
    /// <param name="startOffset">The first entry's text offset.</param>
    internal static CompletionLogprobs Build(ITextTokenizer tokenizer, IReadOnlyList<int> sequence, int first, IReadOnlyList<TokenScore> scores, int startOffset)
    {
        int n = sequence.Count - first;
        int unscored = n - scores.Count; // 1 for the echoed first token, else 0
        var ids = new int[n];
        var texts = new string[n];
        var logprobs = new double?[n];
        var tops = new IReadOnlyList<KeyValuePair<string, double>>?[n];
        var offsets = new int[n];
        var cache = new Dictionary<int, string>();
        string Text(int id) => cache.TryGetValue(id, out var t) ? t : cache[id] = tokenizer.Decode(new[] { id }, skipSpecialTokens: false);
        int offset = startOffset;
        for (int i = 0; i < n; i++)
        {
            ids[i] = sequence[first + i];
            texts[i] = Text(ids[i]);
            offsets[i] = offset;
            offset += texts[i].Length;
            if (i < unscored) continue;
            var s = scores[i - unscored];
            logprobs[i] = s.Logprob;
            var top = new List<KeyValuePair<string, double>>();
            // The alternatives, then the token itself unless it is one of them.
            foreach (var (token, lp) in s.Top.Append((s.Token, s.Logprob)))
            {
                string key = Text(token);
                if (!top.Any(kv => kv.Key == key)) top.Add(new KeyValuePair<string, double>(key, lp));
            }
            tops[i] = top;
        }
        return new CompletionLogprobs(ids, texts, logprobs, tops, offsets);
    }
}
