using ResLora.IO;
using ResLora.Models;

namespace ResLora.Training;

/// <summary>Exact-match accuracy of greedy answers.</summary>
public static class Accuracy
{
    /// <summary>
    /// Fraction of examples whose greedy continuation of the prompt, cut at EOS and (when the reference is one line)
    /// at the first newline, equals the completion after trimming white space.
    /// </summary>
    public static double ExactMatch(LlamaForCausalLM model, ITextTokenizer tok, IReadOnlyList<TextExample> examples, int maxNewTokens)
    {
        if (examples.Count == 0) return double.NaN;
        int correct = 0;
        foreach (var ex in examples)
        {
            if (Answer(model, tok, ex.Prompt, ex.Completion, maxNewTokens)) correct++;
        }
        return (double)correct / examples.Count;
    }

    public static bool Answer(LlamaForCausalLM model, ITextTokenizer tok, string prompt, string reference, int maxNewTokens)
    {
        var ids = new List<int>();
        if (tok.AddBosToken && tok.BosTokenId is { } bos) ids.Add(bos);
        ids.AddRange(tok.Encode(prompt));
        int budget = Math.Min(maxNewTokens, model.Config.MaxPositionEmbeddings - ids.Count);
        if (budget <= 0 || ids.Count == 0) return false;
        var output = TextGenerator.Generate(model, ids, new GenerationOptions { MaxNewTokens = budget, EosTokenIds = tok.EosTokenIds });
        string text = tok.Decode(output.Where(i => !tok.EosTokenIds.Contains(i)));
        string want = reference.Trim();
        if (!want.Contains('\n'))
        {
            int nl = text.IndexOf('\n');
            if (nl >= 0) text = text[..nl];
        }
        return string.Equals(text.Trim(), want, StringComparison.Ordinal);
    }
}
