using ResLora.IO;
using ResLora.Text;

namespace ResLora.Models;

/// <summary>
/// A prompt ready for the decode engine and the way back from its tokens to the reply's text: the one place where
/// <c>reslora generate</c>, <c>serve</c>, eval's accuracy and the demo turn a prompt into ids (<see cref="Plain"/>, or a
/// chat template's rendering) and the generated ids into text with stop ids dropped and stop strings cut
/// (<see cref="Reply"/>).
/// </summary>
/// <param name="Ids">The prompt's token ids.</param>
/// <param name="StopIds">Ids that end the reply (EOS; for a conversation also the template's one-token end of turn).</param>
/// <param name="Render">The reply's text for the new tokens so far, stop ids dropped, special tokens skipped.</param>
/// <param name="StopWhen">For a conversation whose end-of-turn text is several tokens: whether the reply has ended; else null.</param>
/// <param name="StopTexts">Those end-of-turn texts (they end a streamed reply too); empty for a plain prompt.</param>
public sealed record GenerationPrompt(IReadOnlyList<int> Ids, IReadOnlyList<int> StopIds, Func<IReadOnlyList<int>, string> Render,
    Func<IReadOnlyList<int>, bool>? StopWhen, IReadOnlyList<string> StopTexts)
{
    /// <summary>BOS (when the tokenizer config asks for it) + the encoded prompt; an empty prompt starts from BOS alone.</summary>
    public static IReadOnlyList<int> PlainIds(ITextTokenizer tokenizer, string prompt)
    {
        var ids = new List<int>();
        if ((tokenizer.AddBosToken || prompt.Length == 0) && tokenizer.BosTokenId is { } bos) ids.Add(bos);
        ids.AddRange(tokenizer.Encode(prompt));
        if (ids.Count == 0)
            throw new UserInputException("--prompt is empty and the tokenizer defines no BOS token to start from; give a prompt.");
        return ids;
    }

    /// <summary>A text to continue (<see cref="PlainIds"/>); it ends at EOS, which the reply's text leaves out.</summary>
    public static GenerationPrompt Plain(ITextTokenizer tokenizer, string prompt)
    {
        var stops = tokenizer.EosTokenIds;
        return new GenerationPrompt(PlainIds(tokenizer, prompt), stops, t => tokenizer.Decode(t.Where(id => !stops.Contains(id))), null, Array.Empty<string>());
    }

    /// <summary><paramref name="sampling"/> with this prompt's stop ids, stop condition and text rendering.</summary>
    public GenerationOptions Options(GenerationOptions sampling) => sampling with { EosTokenIds = StopIds, StopWhen = StopWhen, Decode = Render };

    /// <summary>The reply's text for <paramref name="output"/>, cut before the first of <paramref name="stopStrings"/>.</summary>
    public string Reply(IReadOnlyList<int> output, IReadOnlyList<string> stopStrings)
    {
        string text = Render(output);
        int cut = GenerationOptions.StopIndex(text, stopStrings);
        return cut >= 0 ? text[..cut] : text;
    }

    /// <summary>Generates the reply on <paramref name="model"/> with <paramref name="sampling"/> (a batch of one): its text and tokens.</summary>
    public (string Text, IReadOnlyList<int> Tokens) Complete(CausalLM model, GenerationOptions sampling)
    {
        var tokens = TextGenerator.Generate(model, Ids, Options(sampling));
        return (Reply(tokens, sampling.StopStrings), tokens);
    }
}
