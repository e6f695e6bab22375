using ResLora.IO;

namespace ResLora.Pipelines;

/// <summary>How a prompt becomes token ids for generation and probing.</summary>
public static class Prompts
{
    /// <summary>BOS (when the tokenizer config asks for it) + the encoded prompt; an empty prompt starts from BOS alone.</summary>
    public static IReadOnlyList<int> Ids(ITextTokenizer tokenizer, string prompt)
    {
        var ids = new List<int>();
        if ((tokenizer.AddBosToken || prompt.Length == 0) && tokenizer.BosTokenId is { } bos) ids.Add(bos);
        ids.AddRange(tokenizer.Encode(prompt));
        if (ids.Count == 0)
            throw new UserInputException("--prompt is empty and the tokenizer defines no BOS token to start from; give a prompt.");
        return ids;
    }
}
