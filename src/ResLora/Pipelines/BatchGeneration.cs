using ResLora.Adapters;
using ResLora.IO;
using ResLora.Text.Templates;
using ResLora.Models;
using ResLora.Text;
using ResLora.Training;

namespace ResLora.Pipelines;

/// <summary>One answer of a batch generation.</summary>
/// <param name="Index">The prompt record's position in its file, from 0.</param>
/// <param name="Adapter">The adapter it ran with, or null for the base model.</param>
/// <param name="Output">The generated text (for a conversation: the assistant's reply, cut at its end of turn), cut before the first stop string.</param>
/// <param name="Tokens">Tokens generated, the stop token included.</param>
public sealed record BatchAnswer(int Index, string? Adapter, string Output, int Tokens);

/// <summary>
/// Generation for a file of prompts where each line names its adapter (<c>reslora generate --prompts</c>): the records
/// are taken in file order in batches of up to <c>batchSize</c>, and each batch runs as one mixed-adapter forward per
/// step (<see cref="AdapterSet.Generate(IReadOnlyList{GenerationRow})"/>), each row with its own stop tokens (EOS; for
/// a conversation also the template's end of turn). Each answer equals generating that prompt alone with its adapter.
/// </summary>
public static class BatchGeneration
{
    /// <summary>Answers every record, calling <paramref name="onAnswer"/> in file order.</summary>
    /// <param name="set">The base model with the adapters loaded.</param>
    /// <param name="tokenizer">The model's tokenizer.</param>
    /// <param name="chat">The chat format for conversation records (null: conversations are refused).</param>
    /// <param name="records">The prompts.</param>
    /// <param name="options">Length, sampling, repetition penalty and stop strings, shared by all; stop ids are set per row (EOS, and the template's end of turn for conversations).</param>
    /// <param name="batchSize">Most prompts per batch.</param>
    /// <param name="onAnswer">Receives each answer.</param>
    /// <param name="defaultAdapter">The loaded adapter for records that name none (one <c>--adapter DIR</c>); null: the base model.</param>
    public static void Run(AdapterSet set, ITextTokenizer tokenizer, ChatFormat? chat, IReadOnlyList<PromptRecord> records,
        GenerationOptions options, int batchSize, Action<BatchAnswer> onAnswer, string? defaultAdapter = null)
    {
        if (batchSize < 1) throw new UserInputException($"--batch-size must be at least 1, got {batchSize}.");
        var loaded = set.Adapters.Select(a => a.Name).ToHashSet(StringComparer.Ordinal);
        if (defaultAdapter is not null && !loaded.Contains(defaultAdapter)) throw new ArgumentException($"the default adapter '{defaultAdapter}' is not loaded.", nameof(defaultAdapter));
        var prepared = new List<(PromptRecord Record, GenerationPrompt Prompt)>(records.Count);
        foreach (var r in records)
        {
            if (r.Adapter is { } name && name != MultiLoraPlan.BaseName && !loaded.Contains(name))
                throw new UserInputException($"{r.Where}: adapter '{name}' is not loaded ({(loaded.Count == 0 ? "none is" : "loaded: " + string.Join(", ", loaded))}); load it with --adapter {name}=DIR.");
            if (r.Messages is { } messages)
            {
                if (chat is null)
                    throw new UserInputException($"{r.Where}: this is a conversation, but the model has no chat_template in tokenizer_config.json; give one with --chat-template NAME|FILE (built-in: {string.Join(", ", BuiltInChatTemplates.Names)}).");
                try
                {
                    prepared.Add((r, Prompts.Chat(tokenizer, chat, messages, r.Tools).ForGeneration(tokenizer)));
                }
                catch (UserInputException e)
                {
                    throw new UserInputException($"{r.Where}: {e.Message}", e);
                }
            }
            else prepared.Add((r, GenerationPrompt.Plain(tokenizer, r.Prompt ?? "")));
        }
        for (int start = 0; start < prepared.Count; start += batchSize)
        {
            var chunk = prepared.Skip(start).Take(batchSize).ToList();
            var rows = chunk.Select(c => new GenerationRow(c.Prompt.Ids, c.Record.Adapter ?? defaultAdapter, c.Prompt.Options(options))).ToList();
            var outputs = set.Generate(rows);
            for (int k = 0; k < chunk.Count; k++)
                onAnswer(new BatchAnswer(chunk[k].Record.Index, rows[k].Adapter, chunk[k].Prompt.Reply(outputs[k], options.StopStrings), outputs[k].Count));
        }
    }
}
