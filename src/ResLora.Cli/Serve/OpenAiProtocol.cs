using System.Text.Json;
using System.Text.Json.Nodes;
using ResLora.Text.Templates;
using ResLora.Pipelines.Serving;

namespace ResLora.Cli.Serve;

/// <summary>A parsed request body: what to generate (one request per prompt, in order), and how to answer.</summary>
internal sealed record ApiRequest(IReadOnlyList<CompletionRequest> Completions, bool Stream, bool IncludeUsage)
{
    /// <summary>The first (for chat and streams: the only) request.</summary>
    public CompletionRequest Completion => Completions[0];
}

/// <summary>
/// The OpenAI API's JSON for <c>/v1/completions</c> and <c>/v1/chat/completions</c>: request fields to a
/// <see cref="CompletionRequest"/> (every refusal names its field), and the response and stream-chunk shapes.
/// </summary>
internal static class OpenAiProtocol
{
    /// <summary>Completions' default budget when a request gives no max_tokens (the OpenAI API's default).</summary>
    public const int CompletionsDefaultMaxTokens = 16;

    private static readonly string[] Roles = { "system", "user", "assistant", "tool" };

    public static ApiRequest Parse(JsonElement root, bool chat)
    {
        if (root.ValueKind != JsonValueKind.Object) throw Bad("the request body must be a JSON object.", null);
        string model = root.TryGetProperty("model", out var m) && m.ValueKind == JsonValueKind.String && !m.ValueEquals("")
            ? Str(m, "model") : throw Bad("model is required: a string naming a served model (GET /v1/models lists them).", "model");

        // Fields whose non-default values ask for something this server does not do.
        Unsupported(root, "n", v => v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int n) && n == 1, "only n = 1 is supported; send one request per sample");
        Unsupported(root, "best_of", v => v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int n) && n == 1, "best_of is not supported");
        if (chat)
        {
            Unsupported(root, "echo", v => v.ValueKind == JsonValueKind.False, "echo is not supported for chat; use /v1/completions");
            Unsupported(root, "logprobs", v => v.ValueKind is JsonValueKind.False || (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int n) && n == 0), "logprobs are not supported for chat; use /v1/completions with logprobs: N");
        }
        Unsupported(root, "suffix", v => v.ValueKind == JsonValueKind.String && v.ValueEquals(""), "suffix is not supported");
        Unsupported(root, "presence_penalty", IsZero, "presence_penalty is not supported (only 0)");
        Unsupported(root, "frequency_penalty", IsZero, "frequency_penalty is not supported (only 0)");
        Unsupported(root, "logit_bias", v => v.ValueKind == JsonValueKind.Object && !v.EnumerateObject().Any(), "logit_bias is not supported");
        Unsupported(root, "tools", v => v.ValueKind == JsonValueKind.Array && v.GetArrayLength() == 0, "tools are not supported");
        Unsupported(root, "functions", v => v.ValueKind == JsonValueKind.Array && v.GetArrayLength() == 0, "functions are not supported");
        Unsupported(root, "response_format", v => v.ValueKind == JsonValueKind.Object && v.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.ValueEquals("text"), "response_format other than text is not supported");

        IReadOnlyList<ChatMessage>? messages = null;
        IReadOnlyList<(string? Text, int[]? Ids)> prompts = new (string?, int[]?)[] { (null, null) };
        if (chat) messages = Messages(root);
        else prompts = Prompts(root);
        bool echo = !chat && (Bool(root, "echo") ?? false);
        int? logprobs = chat ? null : Logprobs(root);
        int? maxTokens = Int(root, "max_tokens");
        if (chat && Int(root, "max_completion_tokens") is { } mct)
        {
            if (maxTokens is not null && maxTokens != mct) throw Bad("give max_tokens or max_completion_tokens, not two different values.", "max_completion_tokens");
            maxTokens = mct;
        }
        if (!chat) maxTokens ??= CompletionsDefaultMaxTokens;
        var request = new CompletionRequest
        {
            Model = model,
            Messages = messages,
            Echo = echo,
            Logprobs = logprobs,
            MaxTokens = maxTokens,
            Temperature = Number(root, "temperature") ?? 1.0,
            TopP = Number(root, "top_p") ?? 1.0,
            // Not an OpenAI field: Hugging Face's and vLLM's extension (multiplicative, unlike frequency_penalty, which stays refused).
            RepetitionPenalty = Number(root, "repetition_penalty") ?? 1.0,
            Seed = Long(root, "seed"),
            Stop = Stop(root),
        };
        bool stream = Bool(root, "stream") ?? false;
        bool includeUsage = false;
        if (root.TryGetProperty("stream_options", out var so) && so.ValueKind != JsonValueKind.Null)
        {
            if (so.ValueKind != JsonValueKind.Object) throw Bad("stream_options must be an object.", "stream_options");
            includeUsage = Bool(so, "include_usage", "stream_options.include_usage") ?? false;
        }
        if (stream && echo) throw Bad("echo cannot be combined with stream: the echoed prompt and its logprobs come in one answer; set stream to false.", "echo");
        if (stream && logprobs is not null) throw Bad("logprobs cannot be combined with stream; set stream to false.", "logprobs");
        if (stream && prompts.Count > 1) throw Bad($"prompt holds {prompts.Count} prompts; a stream answers one, so set stream to false or send one prompt.", "prompt");
        return new ApiRequest(prompts.Select(p => request with { Prompt = p.Text, PromptIds = p.Ids }).ToList(), stream, includeUsage);
    }

    /// <summary>logprobs on completions: null, or an integer (its range is <see cref="ServedModel"/>'s to check).</summary>
    private static int? Logprobs(JsonElement root)
    {
        if (!root.TryGetProperty("logprobs", out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int n)) return n;
        throw Bad($"logprobs must be an integer from 0 to {CompletionLogprobs.MaxTopLogprobs} (the alternatives per token) or null, got {Scrubbed(v)}.", "logprobs");
    }

    /// <summary>A field's raw JSON, shortened, for a refusal's message.</summary>
    private static string Scrubbed(JsonElement v)
    {
        string raw = v.GetRawText();
        return raw.Length <= 40 ? raw : raw[..40] + "…";
    }

    private const string PromptForms = "give a string, a list of strings, a list of token ids, or a list of token-id lists";

    /// <summary>
    /// The prompts of a completions request, as OpenAI's API takes them: a string, a list of strings, a list of token ids
    /// (one prompt) or a list of token-id lists (one prompt each).
    /// </summary>
    private static List<(string? Text, int[]? Ids)> Prompts(JsonElement root)
    {
        if (!root.TryGetProperty("prompt", out var p) || p.ValueKind == JsonValueKind.Null) throw Bad($"prompt is required: the text to continue ({PromptForms}).", "prompt");
        if (p.ValueKind == JsonValueKind.String) return new() { (Str(p, "prompt"), null) };
        if (p.ValueKind != JsonValueKind.Array) throw Bad($"prompt must be a string or a list; {PromptForms}.", "prompt");
        var items = p.EnumerateArray().ToList();
        if (items.Count == 0) throw Bad($"prompt is an empty list; {PromptForms}.", "prompt");
        var kinds = items.Select(i => i.ValueKind).Distinct().ToList();
        if (kinds.Count > 1)
            throw Bad($"prompt mixes {string.Join(" and ", kinds.Select(Kind))} in one list; {PromptForms}.", "prompt");
        return kinds[0] switch
        {
            JsonValueKind.String => items.Select((s, i) => ((string?)Str(s, $"prompt[{i}]"), (int[]?)null)).ToList(),
            JsonValueKind.Number => new() { (null, Ids(p, "prompt")) },
            JsonValueKind.Array => items.Select((a, i) => ((string?)null, (int[]?)Ids(a, $"prompt[{i}]"))).ToList(),
            _ => throw Bad($"prompt holds {Kind(kinds[0])}; {PromptForms}.", "prompt"),
        };
    }

    private static string Kind(JsonValueKind k) => k switch
    {
        JsonValueKind.String => "strings",
        JsonValueKind.Number => "numbers",
        JsonValueKind.Array => "lists",
        JsonValueKind.Object => "objects",
        JsonValueKind.True or JsonValueKind.False => "booleans",
        _ => "nulls",
    };

    /// <summary>A list of token ids: every item an integer (the vocabulary is <see cref="ServedModel"/>'s to check).</summary>
    private static int[] Ids(JsonElement list, string where)
    {
        var ids = new int[list.GetArrayLength()];
        int i = 0;
        foreach (var v in list.EnumerateArray())
        {
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out ids[i]))
                throw Bad($"{where}[{i}] is {Scrubbed(v)}, not a token id; a token-id prompt is a list of integers.", "prompt");
            i++;
        }
        return ids;
    }

    private static List<ChatMessage> Messages(JsonElement root)
    {
        if (!root.TryGetProperty("messages", out var ms) || ms.ValueKind != JsonValueKind.Array)
            throw Bad("messages is required: a list of {\"role\", \"content\"} objects.", "messages");
        var list = new List<ChatMessage>();
        int i = 0;
        foreach (var msg in ms.EnumerateArray())
        {
            string where = $"messages[{i++}]";
            if (msg.ValueKind != JsonValueKind.Object) throw Bad($"{where} must be an object with role and content.", where);
            string role = msg.TryGetProperty("role", out var r) && r.ValueKind == JsonValueKind.String ? Str(r, $"{where}.role") : throw Bad($"{where}.role is required.", $"{where}.role");
            if (role == "developer") role = "system"; // newer clients' name for the system role
            if (!Roles.Contains(role)) throw Bad($"{where}.role '{role}' is not one of {string.Join(", ", Roles)}.", $"{where}.role");
            if (!msg.TryGetProperty("content", out var c) || c.ValueKind == JsonValueKind.Null) throw Bad($"{where}.content is required.", $"{where}.content");
            string content = c.ValueKind switch
            {
                JsonValueKind.String => Str(c, $"{where}.content"),
                // Content parts: only text parts are supported.
                JsonValueKind.Array => string.Concat(c.EnumerateArray().Select((part, k) =>
                    part.ValueKind == JsonValueKind.Object && part.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.ValueEquals("text") && part.TryGetProperty("text", out var tx) && tx.ValueKind == JsonValueKind.String
                        ? Str(tx, $"{where}.content[{k}].text")
                        : throw Bad($"{where}.content[{k}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported.", $"{where}.content"))),
                _ => throw Bad($"{where}.content must be a string or a list of text parts.", $"{where}.content"),
            };
            list.Add(new ChatMessage(role, content));
        }
        if (list.Count == 0) throw Bad("messages is empty; give at least one message.", "messages");
        return list;
    }

    private static IReadOnlyList<string> Stop(JsonElement root)
    {
        if (!root.TryGetProperty("stop", out var s) || s.ValueKind == JsonValueKind.Null) return Array.Empty<string>();
        if (s.ValueKind == JsonValueKind.String) return new[] { Str(s, "stop") };
        if (s.ValueKind == JsonValueKind.Array && s.EnumerateArray().All(x => x.ValueKind == JsonValueKind.String))
            return s.EnumerateArray().Select(x => Str(x, "stop")).ToList();
        throw Bad("stop must be a string or a list of strings.", "stop");
    }

    /// <summary>
    /// A JSON string's text. A lone surrogate escape ("\ud800" without its pair) is valid JSON but no text: System.Text.Json
    /// throws InvalidOperationException for it, which was a 500.
    /// </summary>
    private static string Str(JsonElement v, string param)
    {
        try
        {
            return v.GetString()!;
        }
        catch (InvalidOperationException)
        {
            throw Bad($"{param} is not valid text: it holds a lone surrogate escape (\\ud800-\\udfff without its pair) or bytes that are not UTF-8.", param);
        }
    }

    private static bool IsZero(JsonElement v) => v.ValueKind == JsonValueKind.Number && v.GetDouble() == 0;

    private static void Unsupported(JsonElement root, string name, Func<JsonElement, bool> isDefault, string why)
    {
        if (root.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null && !isDefault(v)) throw Bad($"{name}: {why}.", name);
    }

    private static int? Int(JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : throw Bad($"{name} must be an integer.", name);
    }

    private static long? Long(JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long i) ? i : throw Bad($"{name} must be an integer.", name);
    }

    private static double? Number(JsonElement root, string name)
    {
        if (!root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw Bad($"{name} must be a number.", name);
    }

    private static bool? Bool(JsonElement root, string name, string? param = null)
    {
        if (!root.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        return v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw Bad($"{param ?? name} must be true or false.", param ?? name);
    }

    private static ServingException Bad(string message, string? param) => new(ServingErrorKind.InvalidRequest, message, param);

    // ---- responses ----

    public static JsonObject Usage(CompletionResult c) => new()
    {
        ["prompt_tokens"] = c.PromptTokens,
        ["completion_tokens"] = c.CompletionTokens,
        ["total_tokens"] = c.PromptTokens + c.CompletionTokens,
    };

    /// <summary>A whole answer.</summary>
    public static JsonObject Response(bool chat, string id, long created, string model, CompletionResult c) => Response(chat, id, created, model, new[] { c });

    /// <summary>A whole answer with one choice per prompt, <c>index</c> in prompt order, and the usage summed over them.</summary>
    public static JsonObject Response(bool chat, string id, long created, string model, IReadOnlyList<CompletionResult> results) => new()
    {
        ["id"] = id,
        ["object"] = chat ? "chat.completion" : "text_completion",
        ["created"] = created,
        ["model"] = model,
        ["choices"] = new JsonArray(results.Select((c, i) => (JsonNode)(chat
            ? new JsonObject { ["index"] = i, ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = c.Text }, ["logprobs"] = null, ["finish_reason"] = c.FinishReason }
            : new JsonObject { ["index"] = i, ["text"] = c.Text, ["logprobs"] = Logprobs(c.Logprobs), ["finish_reason"] = c.FinishReason })).ToArray()),
        ["usage"] = new JsonObject
        {
            ["prompt_tokens"] = results.Sum(c => c.PromptTokens),
            ["completion_tokens"] = results.Sum(c => c.CompletionTokens),
            ["total_tokens"] = results.Sum(c => c.PromptTokens + c.CompletionTokens),
        },
    };

    /// <summary>
    /// OpenAI's legacy completions logprobs object: <c>{tokens, token_logprobs, top_logprobs, text_offset}</c>, the first
    /// echoed token's log-probability and alternatives null.
    /// </summary>
    private static JsonObject? Logprobs(CompletionLogprobs? lp)
    {
        if (lp is null) return null;
        // A probability below float32's range has log-probability -inf, which JSON cannot hold: -9999 stands for it, as vLLM writes it.
        static double Finite(double v) => double.IsNegativeInfinity(v) ? -9999.0 : v;
        return new JsonObject
        {
            ["tokens"] = new JsonArray(lp.Tokens.Select(t => (JsonNode?)t).ToArray()),
            ["token_logprobs"] = new JsonArray(lp.TokenLogprobs.Select(v => v is { } d ? (JsonNode?)Finite(d) : null).ToArray()),
            ["top_logprobs"] = new JsonArray(lp.TopLogprobs.Select(top => top is null ? null
                : (JsonNode)new JsonObject(top.Select(kv => new KeyValuePair<string, JsonNode?>(kv.Key, Finite(kv.Value))))).ToArray()),
            ["text_offset"] = new JsonArray(lp.TextOffset.Select(o => (JsonNode?)o).ToArray()),
        };
    }

    /// <summary>One stream chunk: a piece of text (or, for chat, the role), or the end with its finish reason.</summary>
    public static JsonObject Chunk(bool chat, string id, long created, string model, string? text, string? finishReason, bool role = false)
    {
        JsonObject choice;
        if (chat)
        {
            var delta = new JsonObject();
            if (role) delta["role"] = "assistant";
            if (text is not null) delta["content"] = text;
            choice = new JsonObject { ["index"] = 0, ["delta"] = delta, ["logprobs"] = null, ["finish_reason"] = finishReason };
        }
        else choice = new JsonObject { ["index"] = 0, ["text"] = text ?? "", ["logprobs"] = null, ["finish_reason"] = finishReason };
        return new JsonObject
        {
            ["id"] = id,
            ["object"] = chat ? "chat.completion.chunk" : "text_completion",
            ["created"] = created,
            ["model"] = model,
            ["choices"] = new JsonArray(choice),
        };
    }

    /// <summary>The usage chunk that ends a stream when stream_options.include_usage is set (no choices).</summary>
    public static JsonObject UsageChunk(bool chat, string id, long created, string model, CompletionResult c) => new()
    {
        ["id"] = id,
        ["object"] = chat ? "chat.completion.chunk" : "text_completion",
        ["created"] = created,
        ["model"] = model,
        ["choices"] = new JsonArray(),
        ["usage"] = Usage(c),
    };

    /// <summary>The OpenAI error shape: <c>{"error": {"message", "type", "param", "code"}}</c>.</summary>
    public static JsonObject Error(string message, string type, string? param, string? code) => new()
    {
        ["error"] = new JsonObject { ["message"] = message, ["type"] = type, ["param"] = param, ["code"] = code },
    };
}
