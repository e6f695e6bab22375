using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;

namespace ResLora.Cli;

/// <summary>What verbs share to get a ready model: the folder's weights, optionally an adapter on top, and prompt ids.</summary>
internal static class ModelSession
{
    public static LlamaForCausalLM LoadModel(string modelDir, string? adapterDir, RuntimeOptions runtime)
    {
        if (adapterDir is not null) return AdapterSession.LoadWithAdapter(modelDir, adapterDir, runtime, w => Console.Error.WriteLine($"warning: {w}"));
        return ModelLoader.Load(modelDir, runtime);
    }

    /// <summary>BOS (when the tokenizer config asks for it) + the encoded prompt; an empty prompt starts from BOS alone.</summary>
    public static IReadOnlyList<int> PromptIds(ITextTokenizer tokenizer, string prompt)
    {
        var ids = new List<int>();
        if ((tokenizer.AddBosToken || prompt.Length == 0) && tokenizer.BosTokenId is { } bos) ids.Add(bos);
        ids.AddRange(tokenizer.Encode(prompt));
        if (ids.Count == 0)
            throw new ArgumentException("--prompt is empty and the tokenizer defines no BOS token to start from; give a prompt.");
        return ids;
    }
}
