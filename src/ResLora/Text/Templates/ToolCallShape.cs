using System.Text.Json;

namespace ResLora.Text.Templates;

/// <summary>
/// The shape chat templates expect of an assistant message's <c>tool_calls</c> (OpenAI's, as transformers passes it):
/// a list of <c>{"type": "function", "function": {"name": "...", "arguments": {...} or "...json..."}}</c>, with an
/// optional <c>id</c>. Templates read <c>tool_call.function.name</c> and print <c>arguments</c> (a string as it is, an
/// object as JSON), so a call of another shape renders as an empty or broken call instead of failing.
/// </summary>
public static class ToolCallShape
{
    private const string Shape = "{\"type\": \"function\", \"function\": {\"name\": \"...\", \"arguments\": {...}}}";

    /// <summary>Checks every call of <paramref name="calls"/> (a JSON list).</summary>
    /// <param name="calls">The message's <c>tool_calls</c>.</param>
    /// <param name="where">How to name the field in a message: "data.jsonl: record 3 (line 3): messages[1].tool_calls".</param>
    /// <exception cref="UserInputException">A call is not of the shape above, naming the call and its field.</exception>
    public static void Check(JsonElement calls, string where)
    {
        int k = 0;
        foreach (var call in calls.EnumerateArray())
        {
            string at = $"{where}[{k++}]";
            if (call.ValueKind != JsonValueKind.Object) throw Bad($"{at} must be an object {Shape}, got {Kind(call)}.");
            if (call.TryGetProperty("type", out var type) && !(type.ValueKind == JsonValueKind.String && type.GetString() == "function"))
                throw Bad($"{at}.type must be \"function\", got {Describe(type)}.");
            if (call.TryGetProperty("id", out var id) && id.ValueKind is not (JsonValueKind.String or JsonValueKind.Null))
                throw Bad($"{at}.id must be a string, got {Kind(id)}.");
            if (!call.TryGetProperty("function", out var function))
                throw Bad(call.TryGetProperty("name", out _)
                    ? $"{at} has 'name' at the top level; put name and arguments inside \"function\": {Shape}."
                    : $"{at} has no 'function'; write each call as {Shape}.");
            if (function.ValueKind != JsonValueKind.Object) throw Bad($"{at}.function must be an object {{\"name\", \"arguments\"}}, got {Kind(function)}.");
            if (!function.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String || name.GetString()!.Trim().Length == 0)
                throw Bad($"{at}.function.name must be the called function's name (a non-empty string){(function.TryGetProperty("name", out var n) ? $", got {Describe(n)}" : ", and it is missing")}.");
            if (!function.TryGetProperty("arguments", out var args))
                throw Bad($"{at}.function.arguments is missing; give the call's arguments as an object ({{}} for none) or a string holding a JSON object.");
            if (args.ValueKind == JsonValueKind.String && !HoldsObject(args.GetString()!))
                throw Bad($"{at}.function.arguments is a string that does not hold a JSON object ({Describe(args)}); give an object, or a string of JSON such as \"{{\\\"city\\\": \\\"Paris\\\"}}\".");
            if (args.ValueKind is not (JsonValueKind.String or JsonValueKind.Object))
                throw Bad($"{at}.function.arguments must be an object or a string holding a JSON object, got {Kind(args)}.");
        }
    }

    private static bool HoldsObject(string json)
    {
        try
        {
            using var doc = JsonDocument.Parse(json);
            return doc.RootElement.ValueKind == JsonValueKind.Object;
        }
        catch (JsonException)
        {
            return false;
        }
    }

    private static UserInputException Bad(string message) => new(message);

    private static string Kind(JsonElement v) => v.ValueKind.ToString().ToLowerInvariant();

    private static string Describe(JsonElement v)
    {
        string raw = v.GetRawText();
        return raw.Length <= 40 ? raw : raw[..37] + "...";
    }
}
