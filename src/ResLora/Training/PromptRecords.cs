using System.Text.Json;
using System.Text.Json.Nodes;
using ResLora.Text.Templates;

namespace ResLora.Training;

/// <summary>
/// One line of a prompts file for batch generation: a plain <see cref="Prompt"/> or a conversation
/// (<see cref="Messages"/>, with the record's <see cref="Tools"/>) to answer as the assistant, and the adapter to use.
/// </summary>
/// <param name="Index">The record's position in the file, from 0.</param>
/// <param name="Where">"file: record N (line L)", for messages.</param>
public sealed record PromptRecord(int Index, string Where)
{
    /// <summary>The text to continue, or null for a conversation.</summary>
    public string? Prompt { get; init; }

    /// <summary>The conversation to answer, or null for a plain prompt.</summary>
    public IReadOnlyList<ChatMessage>? Messages { get; init; }

    /// <summary>The tools the conversation's template is given, or null.</summary>
    public JsonArray? Tools { get; init; }

    /// <summary>The adapter named by the record's <c>"adapter"</c> field, or null for the base model.</summary>
    public string? Adapter { get; init; }
}

/// <summary>
/// Reads a prompts file (JSONL or a JSON array): each record is <c>{"prompt": TEXT}</c>, or a conversation as training
/// data holds it (<c>{"messages": [...]}</c>, ShareGPT <c>{"conversations": [...]}</c>, optional <c>"system"</c> and
/// <c>"tools"</c>), with an optional <c>"adapter": NAME</c>.
/// </summary>
public static class PromptRecords
{
    /// <summary>The file's prompts in order; every error names the file, the record and its line.</summary>
    public static IReadOnlyList<PromptRecord> Load(string path)
    {
        IO.InputPaths.DataFile(path, "prompts file", "a JSONL file of {\"prompt\"} or {\"messages\"} records, each with an optional \"adapter\"");
        var records = DataSet.ObjectRecords(path, "prompts file");
        var result = new List<PromptRecord>(records.Count);
        for (int i = 0; i < records.Count; i++)
        {
            var (rec, where) = records[i];
            var r = new PromptRecord(i, where) { Adapter = DataSet.AdapterName(rec, where) };
            if (ChatRecords.IsConversation(rec))
            {
                var messages = ChatRecords.Messages(rec, where);
                if (messages[^1].Role == "assistant")
                    throw new UserInputException($"{where}: the conversation ends with an assistant message; end it with the user's (or a tool's) message that the reply answers.");
                result.Add(r with { Messages = messages, Tools = ChatRecords.Tools(rec, where) });
            }
            else if (rec.TryGetProperty("prompt", out var p))
            {
                if (p.ValueKind != JsonValueKind.String) throw new UserInputException($"{where}: 'prompt' must be a string, got {p.ValueKind.ToString().ToLowerInvariant()}.");
                result.Add(r with { Prompt = p.GetString() });
            }
            else
            {
                var names = string.Join(", ", rec.EnumerateObject().Select(f => f.Name));
                throw new UserInputException($"{where}: unknown prompt record (fields: {names}); use {{\"prompt\": TEXT}} or {{\"messages\": [...]}}, each with an optional \"adapter\": NAME.");
            }
        }
        return result;
    }
}
