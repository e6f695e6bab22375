using Microsoft.Extensions.AI;
using ResLora.Pipelines.Serving;
using TemplateMessage = ResLora.Text.Templates.ChatMessage;

namespace ResLora.Extensions.AI;

/// <summary>
/// Microsoft.Extensions.AI's request shape to the serving engine's: the messages to the chat template's (role, text)
/// pairs, <see cref="ChatOptions"/> to a <see cref="CompletionRequest"/> with the fields <c>reslora serve</c> reads from
/// the same request's JSON, and the engine's refusals to the exceptions an <see cref="IChatClient"/> consumer expects.
/// Anything the engine cannot honour (tools, response formats, penalties other than 0) is refused, never ignored.
/// </summary>
internal static class ChatRequestMapping
{
    /// <summary>The one <see cref="ChatOptions.AdditionalProperties"/> key taken: Hugging Face's (and serve's) repetition_penalty.</summary>
    public const string RepetitionPenaltyKey = "repetition_penalty";

    /// <summary>The engine's request for <paramref name="messages"/> with <paramref name="options"/> on the served model <paramref name="model"/>.</summary>
    public static CompletionRequest ToRequest(IEnumerable<ChatMessage> messages, ChatOptions? options, string model)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (options is not null) RefuseUnsupported(options);
        var conversation = new List<TemplateMessage>();
        if (options?.Instructions is { Length: > 0 } instructions) conversation.Add(new TemplateMessage("system", instructions));
        foreach (var m in messages) conversation.Add(ToTemplate(m, conversation.Count));
        return new CompletionRequest
        {
            Model = model,
            Messages = conversation,
            MaxTokens = options?.MaxOutputTokens,
            Temperature = options?.Temperature ?? 1.0, // serve's default when a request leaves temperature out
            TopP = options?.TopP ?? 1.0,
            Seed = options?.Seed,
            RepetitionPenalty = RepetitionPenalty(options),
            Stop = options?.StopSequences?.ToArray() ?? Array.Empty<string>(),
        };
    }

    private static TemplateMessage ToTemplate(ChatMessage m, int index)
    {
        ArgumentNullException.ThrowIfNull(m, "messages");
        foreach (var c in m.Contents)
            if (c is not TextContent and not UsageContent) // a usage record (from a streamed answer) is bookkeeping, not text for the model
                throw new NotSupportedException($"messages[{index}] ({m.Role}) holds {c.GetType().Name}; the ResLora chat client takes text only (TextContent), without tools, function results or media.");
        return new TemplateMessage(m.Role.Value, m.Text);
    }

    private static void RefuseUnsupported(ChatOptions o)
    {
        if (o.Tools is { Count: > 0 })
            throw new NotSupportedException($"ChatOptions.Tools holds {o.Tools.Count} tool(s); the ResLora chat client does not call tools (serve refuses them too). Leave Tools empty.");
        if (o.ToolMode is RequiredChatToolMode)
            throw new NotSupportedException("ChatOptions.ToolMode requires a tool call; the ResLora chat client does not call tools. Leave ToolMode unset.");
        if (o.ResponseFormat is not null and not ChatResponseFormatText)
            throw new NotSupportedException("ChatOptions.ResponseFormat asks for JSON; the ResLora chat client answers text only. Leave ResponseFormat unset or ChatResponseFormat.Text.");
        if (o.TopK is not null)
            throw new NotSupportedException("ChatOptions.TopK is not supported (serve has no top_k either); use TopP for nucleus sampling.");
        if (o.FrequencyPenalty is { } f && f != 0)
            throw new NotSupportedException($"ChatOptions.FrequencyPenalty {f} is not supported (only 0); for a multiplicative penalty set AdditionalProperties[\"{RepetitionPenaltyKey}\"].");
        if (o.PresencePenalty is { } p && p != 0)
            throw new NotSupportedException($"ChatOptions.PresencePenalty {p} is not supported (only 0); for a multiplicative penalty set AdditionalProperties[\"{RepetitionPenaltyKey}\"].");
        if (o.Reasoning is not null)
            throw new NotSupportedException("ChatOptions.Reasoning is not supported: the served models have no reasoning controls. Leave it unset.");
        if (o.ConversationId is not null)
            throw new NotSupportedException("ChatOptions.ConversationId is not supported: the ResLora chat client keeps no conversations; send the whole history as messages.");
        if (o.AllowBackgroundResponses == true || o.ContinuationToken is not null)
            throw new NotSupportedException("background responses (ChatOptions.AllowBackgroundResponses, ContinuationToken) are not supported; await the response or stream it.");
        if (o.AdditionalProperties is { } extra)
            foreach (var key in extra.Keys)
                if (key != RepetitionPenaltyKey)
                    throw new NotSupportedException($"ChatOptions.AdditionalProperties[\"{key}\"] is not supported; the only extra option is \"{RepetitionPenaltyKey}\".");
    }

    private static double RepetitionPenalty(ChatOptions? o)
    {
        if (o?.AdditionalProperties is not { } extra || !extra.TryGetValue(RepetitionPenaltyKey, out var value)) return 1.0;
        return value switch
        {
            double d => d,
            float f => f,
            int i => i,
            _ => throw new ArgumentException($"ChatOptions.AdditionalProperties[\"{RepetitionPenaltyKey}\"] must be a number (> 0, 1 = off), got {value?.GetType().Name ?? "null"}.", "options"),
        };
    }

    /// <summary>
    /// The consumer-facing form of an engine refusal: a bad field or an unknown model is an <see cref="ArgumentException"/>
    /// naming the <see cref="ChatOptions"/> property (with serve's field name); a full queue or a shutdown stays a
    /// <see cref="ServingException"/> (the caller may retry the first).
    /// </summary>
    public static Exception Translate(ServingException e) => e.Kind switch
    {
        ServingErrorKind.InvalidRequest or ServingErrorKind.ModelNotFound => new ArgumentException($"{OptionName(e.Param)}: {e.Message}", e.Param == "messages" ? "messages" : "options", e),
        _ => e,
    };

    /// <summary>The <see cref="ChatOptions"/> property behind one of serve's request fields.</summary>
    public static string OptionName(string? field) => field switch
    {
        "model" => "ChatOptions.ModelId (model)",
        "max_tokens" => "ChatOptions.MaxOutputTokens (max_tokens)",
        "temperature" => "ChatOptions.Temperature (temperature)",
        "top_p" => "ChatOptions.TopP (top_p)",
        "stop" => "ChatOptions.StopSequences (stop)",
        "repetition_penalty" => $"ChatOptions.AdditionalProperties[\"{RepetitionPenaltyKey}\"]",
        "messages" => "messages",
        null => "request",
        _ => field,
    };

    /// <summary>serve's finish reasons as Microsoft.Extensions.AI's.</summary>
    public static ChatFinishReason FinishReason(string reason) => reason switch
    {
        "stop" => ChatFinishReason.Stop,
        "length" => ChatFinishReason.Length,
        _ => new ChatFinishReason(reason),
    };

    /// <summary>A reply's token counts.</summary>
    public static UsageDetails Usage(CompletionResult r) => new()
    {
        InputTokenCount = r.PromptTokens,
        OutputTokenCount = r.CompletionTokens,
        TotalTokenCount = r.PromptTokens + r.CompletionTokens,
    };
}
