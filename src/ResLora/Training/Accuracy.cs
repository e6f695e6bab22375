using System.Text.Encodings.Web;
using System.Text.Json;
using ResLora.IO;
using ResLora.Models;
using ResLora.Text;

namespace ResLora.Training;

/// <summary>One generated answer of an exact-match evaluation.</summary>
/// <param name="Index">The example's position in the list evaluated.</param>
/// <param name="Prompt">The prompt the answer continues.</param>
/// <param name="Reference">The example's completion.</param>
/// <param name="Generated">The greedy answer as compared: cut at EOS and, for a one-line reference, before the first newline.</param>
/// <param name="Correct">Whether <paramref name="Generated"/> and <paramref name="Reference"/> are equal after trimming white space.</param>
public sealed record ExactMatchAnswer(int Index, string Prompt, string Reference, string Generated, bool Correct);

/// <summary>
/// Exact-match accuracy of greedy answers: one rule for <c>reslora eval</c> and train's periodic evaluation. The answer
/// is the greedy continuation of the prompt, ending at EOS, at the token budget, or, when the reference (trimmed) is one
/// line, at the first newline: generation stops as soon as the decoded answer contains a newline and the newline and
/// what follows are cut (a stop string, <see cref="GenerationOptions.StopStrings"/>). It is correct when it equals the
/// reference after trimming leading and trailing white space from both.
/// </summary>
public static class Accuracy
{
    /// <summary>Fraction of examples answered correctly (see <see cref="Accuracy"/> for the rule); NaN for none.</summary>
    public static double ExactMatch(CausalLM model, ITextTokenizer tok, IReadOnlyList<TextExample> examples, int maxNewTokens) =>
        Score(Answers(model, tok, examples, maxNewTokens));

    /// <summary>Fraction of <paramref name="answers"/> that are correct; NaN for none.</summary>
    public static double Score(IReadOnlyList<ExactMatchAnswer> answers) =>
        answers.Count == 0 ? double.NaN : (double)answers.Count(a => a.Correct) / answers.Count;

    /// <summary>Every example's answer, in order.</summary>
    public static IReadOnlyList<ExactMatchAnswer> Answers(CausalLM model, ITextTokenizer tok, IReadOnlyList<TextExample> examples, int maxNewTokens) =>
        examples.Select((ex, i) => Answer(model, tok, ex.Prompt, ex.Completion, maxNewTokens) with { Index = i }).ToList();

    /// <summary>The answer to one prompt and whether it matches <paramref name="reference"/>.</summary>
    public static ExactMatchAnswer Answer(CausalLM model, ITextTokenizer tok, string prompt, string reference, int maxNewTokens)
    {
        if (prompt.Length == 0 && tok.BosTokenId is null) return new ExactMatchAnswer(0, prompt, reference, "", false);
        var input = GenerationPrompt.Plain(tok, prompt);
        int budget = Math.Min(maxNewTokens, model.Config.MaxPositionEmbeddings - input.Ids.Count);
        if (budget <= 0) return new ExactMatchAnswer(0, prompt, reference, "", false);
        string text = input.Complete(model, new GenerationOptions { MaxNewTokens = budget, StopStrings = StopStrings(reference) }).Text;
        return new ExactMatchAnswer(0, prompt, reference, text, Matches(text, reference));
    }

    /// <summary>Where an answer to <paramref name="reference"/> ends besides EOS: at a newline when the reference is one line.</summary>
    public static IReadOnlyList<string> StopStrings(string reference) => reference.Trim().Contains('\n') ? Array.Empty<string>() : new[] { "\n" };

    /// <summary>The comparison: equal after trimming white space at both ends, ordinal.</summary>
    public static bool Matches(string generated, string reference) => string.Equals(generated.Trim(), reference.Trim(), StringComparison.Ordinal);
}

/// <summary>
/// Writes exact-match answers as JSONL, all at once or not at all (<see cref="AtomicFile"/>), one object per answer:
/// <c>{"index":0,"adapter":"x","prompt":"…","reference":" 12","generated":" 12","correct":true}</c>; <c>adapter</c>
/// appears only when given (several named adapters).
/// </summary>
public static class ExactMatchPredictions
{
    private static readonly JsonWriterOptions Options = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <param name="path">The JSONL file to write (replaced if it exists).</param>
    /// <param name="answers">Each answer with the adapter it ran with (null: not written).</param>
    public static void Write(string path, IEnumerable<(string? Adapter, ExactMatchAnswer Answer)> answers)
    {
        using var buffer = new MemoryStream();
        using var w = new Utf8JsonWriter(buffer, Options);
        foreach (var (adapter, a) in answers)
        {
            w.WriteStartObject();
            w.WriteNumber("index", a.Index);
            if (adapter is not null) w.WriteString("adapter", adapter);
            w.WriteString("prompt", a.Prompt);
            w.WriteString("reference", a.Reference);
            w.WriteString("generated", a.Generated);
            w.WriteBoolean("correct", a.Correct);
            w.WriteEndObject();
            w.Flush();
            buffer.WriteByte((byte)'\n');
            w.Reset(); // the next line is a new top-level value
        }
        AtomicFile.WriteAllBytes(path, buffer.ToArray());
    }
}
