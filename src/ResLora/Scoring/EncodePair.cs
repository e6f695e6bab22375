using ResLora.Text;

namespace ResLora.Scoring;

/// <summary>
/// Splits a (context, continuation) text pair into token ids the way lm-evaluation-harness does for a causal model
/// (<c>TemplateLM._encode_pair</c> and <c>TemplateLM.loglikelihood</c> in lm_eval/api/model.py), so that scores are
/// comparable with lm-eval's:
/// <list type="number">
/// <item>white space at the end of the context moves to the start of the continuation (<c>"Answer: " + "4"</c> becomes
/// <c>"Answer:" + " 4"</c>), because tokenizers that attach a space to the following word would otherwise score a
/// lone space token in the context and a space-less word in the continuation;</item>
/// <item>the continuation's tokens are the encoding of context + continuation minus as many leading tokens as the
/// context alone encodes to, so a merge across the boundary is counted as the tokenizer makes it;</item>
/// <item>an empty context is the prefix token alone (BOS, else the first end-of-sequence id, as HFLM's
/// <c>prefix_token_id</c>), and the continuation is encoded on its own, without BOS (the prefix already is one).</item>
/// </list>
/// BOS: lm-eval encodes without special tokens for causal models unless <c>add_bos_token</c> is set; here
/// <see cref="ITextTokenizer.AddBosToken"/> plays that role: when true, BOS is put in front of both encodings (so it
/// ends up at the start of the context, never in the continuation).
/// </summary>
public static class EncodePair
{
    /// <summary>Encodes a context and its continuation as lm-eval's <c>_encode_pair</c> (see the type's remarks).</summary>
    /// <param name="tok">The model's tokenizer.</param>
    /// <param name="context">The text conditioned on (may be empty).</param>
    /// <param name="continuation">The text scored.</param>
    /// <returns>The context's ids (never empty) and the continuation's ids (empty only when the continuation adds no token).</returns>
    public static (int[] Context, int[] Continuation) Encode(ITextTokenizer tok, string context, string continuation)
    {
        ArgumentNullException.ThrowIfNull(tok);
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(continuation);
        if (context.Length == 0) return (new[] { PrefixToken(tok) }, tok.Encode(continuation).ToArray());

        int keep = context.Length;
        while (keep > 0 && IsPythonSpace(context[keep - 1])) keep--;
        if (keep < context.Length)
        {
            continuation = context[keep..] + continuation;
            context = context[..keep];
        }
        int[] whole = WithBos(tok, tok.Encode(context + continuation));
        int[] ctx = WithBos(tok, tok.Encode(context));
        int n = Math.Min(ctx.Length, whole.Length);
        // A context of white space only encodes to nothing here; lm-eval would then fail its "len(context_enc) > 0"
        // assertion. Conditioning on the prefix token instead is what it does for an empty context.
        if (ctx.Length == 0) return (new[] { PrefixToken(tok) }, whole);
        return (ctx, whole[n..]);
    }

    /// <summary>The token an empty context is replaced by: BOS, else the first end-of-sequence id (HFLM's <c>prefix_token_id</c>).</summary>
    /// <param name="tok">The model's tokenizer.</param>
    public static int PrefixToken(ITextTokenizer tok)
    {
        if (tok.BosTokenId is { } bos) return bos;
        if (tok.EosTokenIds.Count > 0) return tok.EosTokenIds[0];
        throw new UserInputException("an empty context is scored after the BOS or EOS token, but the tokenizer defines neither; give the context some text, or set bos_token in tokenizer_config.json.");
    }

    private static int[] WithBos(ITextTokenizer tok, IReadOnlyList<int> ids)
    {
        if (!tok.AddBosToken || tok.BosTokenId is not { } bos) return ids.ToArray();
        var result = new int[ids.Count + 1];
        result[0] = bos;
        for (int i = 0; i < ids.Count; i++) result[i + 1] = ids[i];
        return result;
    }

    /// <summary>Python's <c>str.isspace</c> (what <c>rstrip()</c> removes): .NET's white space plus the separators U+001C–U+001F.</summary>
    private static bool IsPythonSpace(char c) => char.IsWhiteSpace(c) || (c >= '\u001c' && c <= '\u001f');
}
