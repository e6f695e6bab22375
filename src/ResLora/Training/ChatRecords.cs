using System.Text.Json;
using System.Text.Json.Nodes;
using ResLora.Text.Templates;

namespace ResLora.Training;

/// <summary>
/// Conversation records: <c>{"messages": [{"role", "content"}, ...]}</c> (OpenAI/TRL style; roles system, user,
/// assistant, tool) and ShareGPT <c>{"conversations": [{"from", "value"}, ...]}</c> (from human, gpt, system, tool or
/// observation; function_call and user/assistant accepted too), with an optional top-level <c>"system"</c> string put
/// first and an optional top-level <c>"tools"</c> list (JSON schemas, or a string holding that list as JSON) handed to
/// the template. A message's other fields (<c>tool_calls</c>, <c>tool_call_id</c>, <c>name</c>) reach the template as
/// they are; an assistant message with <c>tool_calls</c> may have a null or missing <c>content</c>. Each record becomes
/// one example: the conversation rendered with the model's chat template, the loss on its assistant turns (tool calls
/// included, since the model writes them).
/// </summary>
internal static class ChatRecords
{
    private static readonly string[] Roles = { "system", "user", "assistant", "tool" };

    private static readonly Dictionary<string, string> ShareGptRoles = new(StringComparer.Ordinal)
    {
        ["system"] = "system",
        ["human"] = "user",
        ["user"] = "user",
        ["gpt"] = "assistant",
        ["assistant"] = "assistant",
        ["tool"] = "tool",
        ["observation"] = "tool",
        ["function_call"] = "assistant",
    };

    public static bool IsConversation(JsonElement rec) => rec.TryGetProperty("messages", out _) || rec.TryGetProperty("conversations", out _);

    /// <summary>
    /// The record's training examples: one (the whole conversation) when the template renders earlier turns the same
    /// once later ones follow; otherwise one per assistant turn (or group of turns), each the conversation up to that turn
    /// with the loss on it alone (<see cref="ChatFormat.RenderForTraining"/>), numbered by <see cref="TextExample.TurnExample"/>.
    /// </summary>
    public static IEnumerable<TextExample> ToExamples(JsonElement rec, ChatFormat? chat, string where)
    {
        var messages = Messages(rec, where);
        if (!messages.Any(m => m.Role == "assistant"))
            throw new UserInputException($"{where}: the conversation has no assistant message, so there is nothing to learn from it.");
        if (chat is null)
            throw new UserInputException($"{where}: this is a conversation, but the model has no chat_template in tokenizer_config.json; give one with --chat-template NAME|FILE (built-in: {string.Join(", ", BuiltInChatTemplates.Names)}).");
        IReadOnlyList<RenderedConversation> rendered;
        try
        {
            rendered = chat.RenderForTraining(messages, Tools(rec, where));
        }
        catch (UserInputException e)
        {
            throw new UserInputException($"{where}: {e.Message}", e);
        }
        bool perTurn = rendered.Count > 1;
        return rendered.Select((r, k) => new TextExample("", r.Text) { LossSpans = r.AssistantSpans, TurnExample = perTurn ? k : null });
    }

    /// <summary>The record's messages, checked: every role known, every content a string.</summary>
    public static List<ChatMessage> Messages(JsonElement rec, string where)
    {
        bool shareGpt = !rec.TryGetProperty("messages", out var list);
        string field = shareGpt ? "conversations" : "messages";
        if (shareGpt) list = rec.GetProperty("conversations");
        if (list.ValueKind != JsonValueKind.Array)
            throw new UserInputException($"{where}: '{field}' must be a list of messages, got {Kind(list)}.");
        var messages = new List<ChatMessage>();
        if (rec.TryGetProperty("system", out var system))
        {
            if (system.ValueKind != JsonValueKind.String) throw new UserInputException($"{where}: 'system' must be a string, got {Kind(system)}.");
            messages.Add(new ChatMessage("system", system.GetString()!));
        }
        int i = 0;
        string? openCall = null; // the message whose tool calls the next tool results answer
        var callIds = new List<string>(); // the ids of its calls (those that have one)
        foreach (var m in list.EnumerateArray())
        {
            string at = $"{field}[{i++}]";
            if (m.ValueKind != JsonValueKind.Object) throw new UserInputException($"{where}: {at} must be an object, got {Kind(m)}.");
            // A ShareGPT record may still use role/content inside its list (several converters write it so).
            bool fromValue = m.TryGetProperty("from", out _) || (shareGpt && !m.TryGetProperty("role", out _));
            string roleField = fromValue ? "from" : "role", contentField = fromValue ? "value" : "content";
            string role = Text(m, roleField, where, at);
            if (fromValue)
            {
                if (!ShareGptRoles.TryGetValue(role, out var mapped))
                    throw new UserInputException($"{where}: {at}.from '{role}' is not a ShareGPT speaker; use human, gpt, system, tool or observation.");
                role = mapped;
            }
            else if (Array.IndexOf(Roles, role) < 0)
            {
                throw new UserInputException($"{where}: {at}.role '{role}' is not a chat role; use system, user, assistant or tool.");
            }
            if (i == 1 && role == "system" && messages.Count == 1)
                throw new UserInputException($"{where}: the record has a 'system' field and also starts '{field}' with a system message; keep one.");
            var fields = fromValue ? null : OtherFields(m, where, at);
            if (role == "tool" && openCall is null)
                throw new UserInputException($"{where}: {at} is a tool result without a tool call before it; a tool message must follow an assistant message with tool_calls (or other tool results of that call).");
            if (role == "tool" && fields?["tool_call_id"] is JsonValue idValue && idValue.TryGetValue(out string? answers) && callIds.Count > 0 && !callIds.Contains(answers))
                throw new UserInputException($"{where}: {at}.tool_call_id '{answers}' answers none of the calls of {openCall} (their ids: {string.Join(", ", callIds)}).");
            if (role != "tool")
            {
                openCall = (fromValue && m.GetProperty("from").GetString() == "function_call") || fields?["tool_calls"] is JsonArray { Count: > 0 } ? at : null;
                callIds = openCall is null || fields?["tool_calls"] is not JsonArray calls ? new List<string>()
                    : calls.Select(c => c is JsonObject o && o["id"] is JsonValue v && v.TryGetValue(out string? id) ? id : null).OfType<string>().ToList();
            }
            bool callsOnly = role == "assistant" && fields?["tool_calls"] is JsonArray && (!m.TryGetProperty(contentField, out var c) || c.ValueKind == JsonValueKind.Null);
            if (callsOnly) fields!["content"] = null;
            messages.Add(new ChatMessage(role, callsOnly ? "" : Text(m, contentField, where, at)) { Fields = fields });
        }
        if (i == 0) throw new UserInputException($"{where}: '{field}' is empty.");
        return messages;
    }

    /// <summary>A message's fields other than role and content (tool_calls, tool_call_id, name, ...), checked where the template relies on their shape; null when there are none.</summary>
    private static JsonObject? OtherFields(JsonElement m, string where, string at)
    {
        JsonObject? fields = null;
        foreach (var p in m.EnumerateObject())
        {
            if (p.Name is "role" or "content") continue;
            if (p.Name == "tool_calls" && p.Value.ValueKind is not (JsonValueKind.Array or JsonValueKind.Null))
                throw new UserInputException($"{where}: {at}.tool_calls must be a list of calls ({{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}), got {Kind(p.Value)}.");
            if (p.Name == "tool_calls" && p.Value.ValueKind == JsonValueKind.Array) ToolCallShape.Check(p.Value, $"{where}: {at}.tool_calls");
            if (p.Name is "tool_call_id" or "name" && p.Value.ValueKind is not (JsonValueKind.String or JsonValueKind.Null))
                throw new UserInputException($"{where}: {at}.{p.Name} must be a string, got {Kind(p.Value)}.");
            fields ??= new JsonObject();
            fields[p.Name] = JsonNode.Parse(p.Value.GetRawText());
        }
        return fields;
    }

    /// <summary>The record's <c>tools</c> (a list, or a string holding one as JSON, as LLaMA-Factory writes it), or null.</summary>
    public static JsonArray? Tools(JsonElement rec, string where)
    {
        if (!rec.TryGetProperty("tools", out var tools) || tools.ValueKind == JsonValueKind.Null) return null;
        string json = tools.ValueKind == JsonValueKind.String ? tools.GetString()! : tools.GetRawText();
        try
        {
            if (JsonNode.Parse(json) is JsonArray list) return list;
        }
        catch (JsonException)
        {
            // reported below with the record
        }
        throw new UserInputException($"{where}: 'tools' must be a list of tool definitions (JSON schemas), or a string holding that list as JSON; got {Kind(tools)}.");
    }

    private static string Text(JsonElement m, string name, string where, string at)
    {
        if (!m.TryGetProperty(name, out var v)) throw new UserInputException($"{where}: {at} has no '{name}'.");
        if (v.ValueKind != JsonValueKind.String)
            throw new UserInputException($"{where}: {at}.{name} must be a string, got {Kind(v)} (content given as a list of parts is not supported).");
        return v.GetString()!;
    }

    private static string Kind(JsonElement v) => v.ValueKind.ToString().ToLowerInvariant();
}
