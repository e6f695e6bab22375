using ResLora.Text;

namespace ResLora.Training.Preference;

/// <summary>
/// Turns preference pairs into token ids and labels as TRL's DPOTrainer does, and pairs into batches that hold the
/// chosen sequences then the rejected ones, so a trainer scores both sides in one forward.
/// </summary>
/// <remarks>
/// <para><b>Tokens.</b> The prompt is encoded alone (after BOS when the tokenizer config asks for it, for text pairs),
/// and each side as the prompt's encoding followed by the response's tokens. The response's tokens are what the
/// encoding of prompt + response adds after the prompt's encoding, so the sequence is the one the model reads at
/// inference. When the prompt's tokens are not a prefix of that encoding (a BPE merge across the boundary, such as
/// "Answer:" + " yes" becoming ":" + " y" merged), the prompt and the response are encoded apart and concatenated, which
/// is what TRL's DPOTrainer always does (<c>tokenize_row</c>); the pair is counted in
/// <see cref="PreferenceTokenizedSet.SplitAtBoundary"/>. Text responses end with EOS, unless they already do; a
/// conversation's responses end with the template's own end-of-turn text, and nothing is added.</para>
/// <para><b>Truncation</b> (TRL's <c>max_length</c>, <c>max_prompt_length</c>, <c>truncation_mode</c>): when the prompt
/// plus the longer response exceeds <c>maxLength</c>, the prompt is cut to <c>maxPromptLength</c> tokens, keeping its end
/// (TRL's default <c>keep_end</c>; a leading BOS stays, and counts) or its start; if still too long, both responses are
/// cut to <c>maxLength − maxPromptLength</c> tokens (losing their EOS). <c>maxPromptLength</c> defaults to half of
/// <c>maxLength</c>, the ratio of TRL's DPOConfig defaults (512 of 1024).</para>
/// </remarks>
public static class PreferenceData
{
    /// <summary>Each pair as <see cref="Tokenize(ITextTokenizer, PreferenceExample, int, int?, PromptTruncation)"/> makes it, counting those cut or split.</summary>
    /// <param name="tok">The model's tokenizer.</param>
    /// <param name="examples">The pairs, as <see cref="PreferenceRecords.Load"/> returns them.</param>
    /// <param name="maxLength">The longest prompt + response, in tokens (TRL's <c>max_length</c>).</param>
    /// <param name="maxPromptLength">The prompt's length when it has to be cut (TRL's <c>max_prompt_length</c>); null for <paramref name="maxLength"/> / 2.</param>
    /// <param name="truncation">Which end of a cut prompt is kept.</param>
    /// <returns>The pairs and the counts.</returns>
    public static PreferenceTokenizedSet Tokenize(ITextTokenizer tok, IReadOnlyList<PreferenceExample> examples, int maxLength, int? maxPromptLength = null,
        PromptTruncation truncation = PromptTruncation.KeepEnd)
    {
        var pairs = new List<PreferencePair>(examples.Count);
        foreach (var e in examples) pairs.Add(Tokenize(tok, e, maxLength, maxPromptLength, truncation));
        return new PreferenceTokenizedSet(pairs, pairs.Count(p => p.Truncated), pairs.Count(p => p.SplitAtBoundary));
    }

    /// <summary>One pair's ids and labels (see the class remarks for how the boundary and truncation are handled).</summary>
    /// <param name="tok">The model's tokenizer.</param>
    /// <param name="e">The pair.</param>
    /// <param name="maxLength">The longest prompt + response, in tokens (TRL's <c>max_length</c>).</param>
    /// <param name="maxPromptLength">The prompt's length when it has to be cut; null for <paramref name="maxLength"/> / 2.</param>
    /// <param name="truncation">Which end of a cut prompt is kept.</param>
    /// <returns>The tokenized pair.</returns>
    /// <exception cref="UserInputException">The lengths are out of range, or a response tokenizes to nothing after the prompt.</exception>
    public static PreferencePair Tokenize(ITextTokenizer tok, PreferenceExample e, int maxLength, int? maxPromptLength = null,
        PromptTruncation truncation = PromptTruncation.KeepEnd)
    {
        int promptMax = CheckLengths(maxLength, maxPromptLength);
        string where = e.Where ?? "preference pair";
        // As for conversation SFT data: only tokenizer.json tokenizers are known to split the template's special-token texts.
        if (e.IsConversation && tok is not ITokenOffsets)
            throw new UserInputException($"{where}: conversational preference data needs the model's Hugging Face tokenizer.json (it splits the chat template's special tokens such as <|im_end|> out of the text); this model's tokenizer (tokenizer.model or vocab.txt) does not. Add the model's tokenizer.json to its folder.");
        var prompt = new List<int>();
        if (!e.IsConversation && tok.AddBosToken && tok.BosTokenId is { } bos) prompt.Add(bos);
        var promptText = tok.Encode(e.Prompt);
        prompt.AddRange(promptText);
        var (chosen, splitC) = Response(tok, e, promptText, e.Chosen, "chosen", where);
        var (rejected, splitR) = Response(tok, e, promptText, e.Rejected, "rejected", where);

        bool truncated = false;
        int longer = Math.Max(chosen.Count, rejected.Count);
        if (prompt.Count + longer > maxLength && prompt.Count > promptMax)
        {
            prompt = CutPrompt(prompt, promptMax, truncation, tok.BosTokenId);
            truncated = true;
        }
        if (prompt.Count + longer > maxLength)
        {
            int keep = maxLength - promptMax;
            if (chosen.Count > keep) chosen = chosen.GetRange(0, keep);
            if (rejected.Count > keep) rejected = rejected.GetRange(0, keep);
            truncated = true;
        }
        var (ci, cl) = Join(prompt, chosen);
        var (ri, rl) = Join(prompt, rejected);
        return new PreferencePair(prompt.ToArray(), ci, cl, ri, rl) { Truncated = truncated, SplitAtBoundary = splitC || splitR };
    }

    private static int CheckLengths(int maxLength, int? maxPromptLength)
    {
        if (maxLength < 2) throw new UserInputException($"--seq-len must be at least 2 for preference data (a prompt token and a response token), got {maxLength}.");
        int promptMax = maxPromptLength ?? maxLength / 2;
        if (promptMax < 1 || promptMax >= maxLength)
            throw new UserInputException($"--max-prompt-length must be at least 1 and below --seq-len ({maxLength}) so the responses keep some tokens, got {promptMax}.");
        return promptMax;
    }

    /// <summary>The response's ids after the prompt, EOS appended for text pairs; and whether it had to be encoded apart.</summary>
    private static (List<int> Ids, bool Split) Response(ITextTokenizer tok, PreferenceExample e, IReadOnlyList<int> prompt, string response, string field, string where)
    {
        var full = tok.Encode(e.Prompt + response);
        bool prefix = full.Count >= prompt.Count;
        for (int i = 0; prefix && i < prompt.Count; i++) prefix = full[i] == prompt[i];
        var ids = prefix ? full.Skip(prompt.Count).ToList() : tok.Encode(response).ToList();
        if (ids.Count == 0)
            throw new UserInputException($"{where}: '{field}' tokenizes to nothing after the prompt (its text is {Quote(response)}), so there is no response to score; give it a non-empty response.");
        if (!e.IsConversation && tok.EosTokenIds.Count > 0 && !tok.EosTokenIds.Contains(ids[^1])) ids.Add(tok.EosTokenIds[0]);
        return (ids, !prefix);
    }

    private static string Quote(string s) => s.Length <= 40 ? $"\"{s}\"" : $"\"{s[..40]}…\"";

    private static List<int> CutPrompt(List<int> prompt, int max, PromptTruncation truncation, int? bos)
    {
        if (truncation == PromptTruncation.KeepStart) return prompt.GetRange(0, max);
        // keep_end, but a leading BOS stays: a model never sees text without it.
        bool keepBos = bos is { } b && prompt[0] == b && max > 1;
        var tail = prompt.GetRange(prompt.Count - (keepBos ? max - 1 : max), keepBos ? max - 1 : max);
        if (keepBos) tail.Insert(0, prompt[0]);
        return tail;
    }

    private static (int[] Ids, int[] Labels) Join(List<int> prompt, List<int> response)
    {
        var ids = new int[prompt.Count + response.Count];
        var labels = new int[ids.Length];
        for (int i = 0; i < prompt.Count; i++) (ids[i], labels[i]) = (prompt[i], Tokenization.IgnoreIndex);
        for (int i = 0; i < response.Count; i++) ids[prompt.Count + i] = labels[prompt.Count + i] = response[i];
        return (ids, labels);
    }

    /// <summary>
    /// A batch of b pairs as 2b rows, right-padded to the longest: each pair's chosen row, then its rejected row (rows 2i
    /// and 2i + 1), so that a data-parallel shard of whole pairs is a contiguous block of rows
    /// (<see cref="TrainBatch.RowGroup"/> is 2). Labels are −100 over each prompt and over padding; the attention mask is
    /// 0 on padding.
    /// </summary>
    /// <param name="pairs">The pairs (at least one).</param>
    /// <param name="padId">The id padding carries (the tokenizer's pad id, or EOS when it has none).</param>
    /// <param name="device">Where the tensors go; CPU when null.</param>
    /// <returns>input ids, attention mask and labels, each (2b, t) int64.</returns>
    public static TrainBatch Collate(IReadOnlyList<PreferencePair> pairs, int padId, Device? device = null)
    {
        if (pairs.Count == 0) throw new ArgumentException("a preference batch needs at least one pair.", nameof(pairs));
        var rows = pairs.SelectMany(p => new[] { new TokenizedExample(p.ChosenIds, p.ChosenLabels), new TokenizedExample(p.RejectedIds, p.RejectedLabels) })
            .ToList();
        return Tokenization.Collate(rows, padId, device) with { RowGroup = 2 };
    }
}
