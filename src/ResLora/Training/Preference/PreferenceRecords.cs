using System.Text.Json;
using System.Text.Json.Nodes;
using ResLora.Text.Templates;

namespace ResLora.Training.Preference;

/// <summary>
/// One preference pair as text, ready to tokenize: the prompt, and the two responses that follow it. For a
/// conversation the three are pieces of the chat template's rendering: <c>Prompt + Chosen</c> is the whole chosen
/// conversation as the template writes it, and likewise for <c>Prompt + Rejected</c>.
/// </summary>
/// <param name="Prompt">The context both responses answer (may be empty for text records with no shared prefix).</param>
/// <param name="Chosen">The preferred response.</param>
/// <param name="Rejected">The dispreferred response.</param>
public sealed record PreferenceExample(string Prompt, string Chosen, string Rejected)
{
    /// <summary>
    /// Whether the pair was rendered with a chat template. Then the template has written BOS and each turn's end-of-turn
    /// token, so tokenizing adds neither; text pairs get BOS (as the tokenizer asks) and EOS after each response.
    /// </summary>
    public bool IsConversation { get; init; }

    /// <summary>"file: record N (line L)", for messages about this pair; null for a pair built in code.</summary>
    public string? Where { get; init; }
}

/// <summary>
/// Reads preference data in TRL's formats (JSONL or a JSON array, read as <see cref="DataSet.Load"/> reads data):
/// <list type="bullet">
/// <item>standard: <c>{"prompt": TEXT, "chosen": TEXT, "rejected": TEXT}</c>;</item>
/// <item>standard with an implicit prompt: <c>{"chosen": TEXT, "rejected": TEXT}</c>, the prompt being their longest
/// shared prefix (TRL's <c>extract_prompt</c>: a space that ends the shared prefix goes with the responses);</item>
/// <item>conversational: <c>prompt</c>, <c>chosen</c>, <c>rejected</c> as message lists (<c>{"role", "content"}</c>);</item>
/// <item>conversational with an implicit prompt: <c>chosen</c> and <c>rejected</c> whole conversations, the prompt being
/// their longest shared run of leading messages.</item>
/// </list>
/// Conversations are rendered with the chat format as TRL's <c>maybe_apply_chat_template</c> does: the prompt with the
/// generation prompt, each response as what the whole conversation's rendering adds after it. When the template writes
/// the prompt differently once a reply follows (a template that opens the reply with text of its own), the prompt is the
/// longest common prefix of the three renderings (as TRL does), so prompt + response is always exactly the full render.
/// A record may also carry <c>"tools"</c> (handed to the template). Text and conversational records cannot be mixed in
/// one file.
/// </summary>
public static class PreferenceRecords
{
    /// <summary>The file's pairs in order; every error names the file, the record and the field.</summary>
    /// <param name="path">A JSONL or JSON-array file.</param>
    /// <param name="chat">The chat format conversational records are rendered with; null when the model has none (then
    /// conversational records are an error asking for <c>--chat-template</c>).</param>
    /// <returns>One <see cref="PreferenceExample"/> per record.</returns>
    /// <exception cref="UserInputException">A record is malformed (see docs/preference-data.md).</exception>
    public static IReadOnlyList<PreferenceExample> Load(string path, ChatFormat? chat)
    {
        IO.InputPaths.DataFile(path, "preference data file", "a JSONL or JSON-array file of {\"prompt\", \"chosen\", \"rejected\"} records");
        var records = DataSet.ObjectRecords(path, "preference data set");
        var result = new List<PreferenceExample>(records.Count);
        bool? firstConversational = null;
        string firstWhere = "";
        foreach (var (rec, where) in records)
        {
            var chosen = Required(rec, "chosen", where);
            var rejected = Required(rec, "rejected", where);
            bool conversational = chosen.ValueKind == JsonValueKind.Array;
            if (firstConversational is null) (firstConversational, firstWhere) = (conversational, where);
            else if (firstConversational != conversational)
                throw new UserInputException($"{where}: 'chosen' is {Shape(conversational)} but {firstWhere} is {Shape(firstConversational.Value)}; a file holds one kind of record, so write every record's prompt/chosen/rejected as text, or every one as message lists.");
            var example = conversational ? Conversation(rec, chosen, rejected, chat, where) : Text(rec, chosen, rejected, where);
            if (example.Chosen == example.Rejected)
                throw new UserInputException($"{where}: 'chosen' and 'rejected' are the same response, so the pair prefers nothing; remove the record or fix one of them.");
            result.Add(example with { IsConversation = conversational, Where = where });
        }
        return result;
    }

    private static string Shape(bool conversational) => conversational ? "a message list (conversational)" : "text";

    private static JsonElement Required(JsonElement rec, string field, string where)
    {
        if (!rec.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null)
        {
            var names = string.Join(", ", rec.EnumerateObject().Select(p => p.Name));
            throw new UserInputException($"{where}: missing field '{field}' (fields: {names}); a preference record needs 'chosen' and 'rejected' (and 'prompt' unless they share it as a prefix), as text or as message lists.");
        }
        if (v.ValueKind is not (JsonValueKind.String or JsonValueKind.Array))
            throw new UserInputException($"{where}: '{field}' must be text or a list of messages, got {v.ValueKind.ToString().ToLowerInvariant()}.");
        return v;
    }

    private static PreferenceExample Text(JsonElement rec, JsonElement chosen, JsonElement rejected, string where)
    {
        if (rejected.ValueKind != JsonValueKind.String)
            throw new UserInputException($"{where}: 'chosen' is text but 'rejected' is a message list; write both as text, or both (and 'prompt') as message lists.");
        string c = chosen.GetString()!, r = rejected.GetString()!;
        if (rec.TryGetProperty("prompt", out var p) && p.ValueKind != JsonValueKind.Null)
        {
            if (p.ValueKind != JsonValueKind.String)
                throw new UserInputException($"{where}: 'prompt' is {p.ValueKind.ToString().ToLowerInvariant()} but 'chosen' is text; write the prompt as text too.");
            return new PreferenceExample(p.GetString()!, c, r);
        }
        int k = SharedPrefix(c, r);
        if (k == 0) throw NoPrompt(where, "share no leading text");
        return new PreferenceExample(c[..k], c[k..], r[k..]);
    }

    /// <summary>
    /// TRL's <c>extract_prompt</c> on text: the length of the longest shared prefix, less one when that prefix ends with a
    /// space (the space then starts both responses, where a tokenizer expects it: " blue", not "blue").
    /// </summary>
    internal static int SharedPrefix(string a, string b)
    {
        int k = 0;
        while (k < a.Length && k < b.Length && a[k] == b[k]) k++;
        if (k > 0 && a[k - 1] == ' ') k--;
        return k;
    }

    private static PreferenceExample Conversation(JsonElement rec, JsonElement chosen, JsonElement rejected, ChatFormat? chat, string where)
    {
        if (rejected.ValueKind != JsonValueKind.Array)
            throw new UserInputException($"{where}: 'chosen' is a message list but 'rejected' is text; write both as message lists (conversational) or both as text.");
        var tools = ChatRecords.Tools(rec, where);
        var c = Messages(chosen, "chosen", where);
        var r = Messages(rejected, "rejected", where);
        List<ChatMessage> prompt;
        if (rec.TryGetProperty("prompt", out var p) && p.ValueKind != JsonValueKind.Null)
        {
            if (p.ValueKind != JsonValueKind.Array)
                throw new UserInputException($"{where}: 'prompt' is {p.ValueKind.ToString().ToLowerInvariant()} but 'chosen' is a message list; write the prompt as a message list too ([{{\"role\": \"user\", \"content\": ...}}]).");
            prompt = Messages(p, "prompt", where);
        }
        else
        {
            // TRL's extract_prompt on conversations: the leading messages both share are the prompt.
            int k = 0;
            while (k < c.Count && k < r.Count && SameMessage(c[k], r[k])) k++;
            if (k == 0) throw NoPrompt(where, "share no leading message");
            prompt = c.Take(k).ToList();
            c = c.Skip(k).ToList();
            r = r.Skip(k).ToList();
        }
        CheckResponse(c, "chosen", where);
        CheckResponse(r, "rejected", where);
        if (chat is null)
            throw new UserInputException($"{where}: this is a conversational record, but the model has no chat_template in tokenizer_config.json; give one with --chat-template NAME|FILE (built-in: {string.Join(", ", BuiltInChatTemplates.Names)}).");
        string promptText, chosenText, rejectedText;
        try
        {
            promptText = prompt.Count == 0 ? "" : chat.RenderPrompt(prompt, tools);
            chosenText = chat.RenderText(prompt.Concat(c).ToList(), tools);
            rejectedText = chat.RenderText(prompt.Concat(r).ToList(), tools);
        }
        catch (UserInputException e)
        {
            throw new UserInputException($"{where}: {e.Message}", e);
        }
        // A template may open the reply differently once it is written (TRL takes the common prefix for the same reason).
        int n = CommonPrefix(CommonPrefix(promptText, chosenText), rejectedText).Length;
        return new PreferenceExample(chosenText[..n], chosenText[n..], rejectedText[n..]);
    }

    private static UserInputException NoPrompt(string where, string what) =>
        new($"{where}: missing field 'prompt', and 'chosen' and 'rejected' {what} to take as the prompt; add a 'prompt' that both responses answer.");

    private static string CommonPrefix(string a, string b)
    {
        int k = 0;
        while (k < a.Length && k < b.Length && a[k] == b[k]) k++;
        return a[..k];
    }

    private static void CheckResponse(List<ChatMessage> response, string field, string where)
    {
        if (response.Count == 0)
            throw new UserInputException($"{where}: '{field}' has no messages after the prompt (chosen and rejected are the same conversation, or one is a prefix of the other); the pair needs a different assistant reply on each side.");
        if (response[^1].Role != "assistant")
            throw new UserInputException($"{where}: '{field}' ends with a {response[^1].Role} message; a response must end with the assistant message being preferred (or not), so end '{field}' with {{\"role\": \"assistant\", ...}}.");
    }

    /// <summary>A message list checked as training conversations are (<see cref="ChatRecords.Messages"/>), named by its field.</summary>
    private static List<ChatMessage> Messages(JsonElement list, string field, string where)
    {
        var wrapper = new JsonObject { ["messages"] = JsonNode.Parse(list.GetRawText()) };
        using var doc = JsonDocument.Parse(wrapper.ToJsonString());
        return ChatRecords.Messages(doc.RootElement, $"{where}: field '{field}'");
    }

    private static bool SameMessage(ChatMessage a, ChatMessage b) =>
        a.Role == b.Role && a.Content == b.Content && (a.Fields?.ToJsonString() ?? "") == (b.Fields?.ToJsonString() ?? "");
}
