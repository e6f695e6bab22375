using ResLora.Templates;

namespace ResLora.Text.Templates;

/// <summary>One chat message as chat templates see it: <c>{"role": ..., "content": ...}</c>.</summary>
/// <param name="Role">"system", "user", "assistant", or whatever role the template knows.</param>
/// <param name="Content">The message text ("" for an assistant message that only calls tools).</param>
public sealed record ChatMessage(string Role, string Content) : ITemplateObject
{
    /// <summary>
    /// The message's other fields as the template sees them, e.g. <c>tool_calls</c> (an assistant's function calls),
    /// <c>tool_call_id</c> and <c>name</c> (a tool's result); a <c>content</c> field here (null for a message that only
    /// calls tools) replaces <see cref="Content"/> in the template's view. Null when the message has none.
    /// </summary>
    public System.Text.Json.Nodes.JsonObject? Fields { get; init; }

    /// <summary>What the template sees: <c>role</c>, <c>content</c>, then <see cref="Fields"/> (a <c>content</c> there replaces the first).</summary>
    IEnumerable<KeyValuePair<string, object?>> ITemplateObject.TemplateFields()
    {
        yield return new("role", Role);
        yield return new("content", Content);
        foreach (var (k, v) in Fields ?? new System.Text.Json.Nodes.JsonObject()) yield return new(k, v);
    }
}

/// <summary>
/// A Hugging Face chat template (the <c>chat_template</c> Jinja source of <c>tokenizer_config.json</c>), parsed
/// once and rendered with Jinja's semantics under transformers' settings (<c>trim_blocks</c>,
/// <c>lstrip_blocks</c>, <c>raise_exception</c>, <c>strftime_now</c>, a <c>tojson</c> that keeps non-ASCII).
/// Only the subset that real chat templates use is supported (docs/chat-templates.md); anything else is refused
/// by <see cref="Parse"/>, before any rendering, with the line and the construct.
/// </summary>
public sealed class ChatTemplate
{
    /// <summary>Variables that <see cref="RenderConversation"/> sets from its own parameters.</summary>
    private static readonly string[] ConversationVariables = { "messages", "add_generation_prompt", "bos_token", "eos_token" };

    private readonly IReadOnlyList<Node> _body;
    private readonly TimeProvider _clock;

    private ChatTemplate(string source, string? name, IReadOnlyList<Node> body, TimeProvider clock, TemplateBudget budget)
    {
        Source = source;
        Name = name;
        _body = body;
        _clock = clock;
        Budget = budget;
    }

    /// <summary>The Jinja source as given.</summary>
    public string Source { get; }

    /// <summary>The template's name ("default", "tool_use", ...), used in error messages; null when it has none.</summary>
    public string? Name { get; }

    /// <summary>What one parse or render of this template may cost (nesting depth, steps, time, text size).</summary>
    public TemplateBudget Budget { get; }

    /// <summary>Parses <paramref name="source"/>; unsupported constructs and syntax errors are reported here.</summary>
    /// <param name="source">The Jinja template text.</param>
    /// <param name="name">A name for error messages ("chat template 'default' line 3: ..."), or null.</param>
    /// <param name="clock">Where <c>strftime_now</c> reads the local date and time; the system clock when null.</param>
    /// <param name="budget">The limits on parsing and every render (<see cref="TemplateBudget.Default"/> when null).</param>
    /// <exception cref="ChatTemplateException">The template has a syntax error, a construct outside the subset, or
    /// nests deeper than <see cref="TemplateBudget.MaxDepth"/>.</exception>
    public static ChatTemplate Parse(string source, string? name = null, TimeProvider? clock = null, TemplateBudget? budget = null)
    {
        ArgumentNullException.ThrowIfNull(source);
        budget = (budget ?? TemplateBudget.Default).Validate();
        try
        {
            return new ChatTemplate(source, name, TemplateParser.Parse(source, name, budget), clock ?? TimeProvider.System, budget);
        }
        catch (TemplateException e)
        {
            throw ChatTemplateException.From(e);
        }
    }

    /// <summary>Renders the template with <paramref name="variables"/> as its context.</summary>
    /// <param name="variables">
    /// Template variables: strings, numbers, booleans, null, lists (<see cref="IReadOnlyList{T}"/> or any
    /// enumerable), string-keyed dictionaries, <see cref="ChatMessage"/>s, and System.Text.Json nodes. A name that
    /// is absent is Jinja's undefined (falsy, printed empty, <c>is defined</c> false), not None.
    /// </param>
    /// <returns>The rendered text.</returns>
    /// <exception cref="ChatTemplateRaisedException">The template called <c>raise_exception</c>.</exception>
    /// <exception cref="ChatTemplateException">A runtime error, or a limit of <see cref="Budget"/> exceeded, with the
    /// template line it happened on.</exception>
    public string Render(IReadOnlyDictionary<string, object?> variables) => Render(variables, null);

    private string Render(IReadOnlyDictionary<string, object?> variables, List<(int Start, int End)>? generation)
    {
        ArgumentNullException.ThrowIfNull(variables);
        var globals = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (key, value) in variables) globals[key] = TemplateValues.FromDotNet(value, key);
        try
        {
            return TemplateRenderer.Render(_body, globals, Name, _clock, generation, Budget);
        }
        catch (TemplateException e)
        {
            throw ChatTemplateException.From(e);
        }
    }

    /// <summary>
    /// Renders a conversation the way transformers' <c>apply_chat_template(tokenize=False)</c> does: the template
    /// sees <c>messages</c>, <c>add_generation_prompt</c>, <c>tools</c> and <c>documents</c> (None), and the
    /// special tokens.
    /// </summary>
    /// <param name="messages">The conversation, oldest first.</param>
    /// <param name="addGenerationPrompt">Whether to end with the header that opens the assistant's reply.</param>
    /// <param name="bosToken">The tokenizer's BOS token text; when null, <c>bos_token</c> is undefined.</param>
    /// <param name="eosToken">The tokenizer's EOS token text; when null, <c>eos_token</c> is undefined.</param>
    /// <param name="extra">More variables (<c>tools</c>, <c>date_string</c>, other special tokens); they may not
    /// redefine <c>messages</c>, <c>add_generation_prompt</c>, <c>bos_token</c> or <c>eos_token</c>.</param>
    /// <returns>The prompt text.</returns>
    /// <exception cref="ChatTemplateRaisedException">The template rejected the conversation (e.g. roles that do not alternate).</exception>
    public string RenderConversation(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, string? bosToken, string? eosToken,
        IReadOnlyDictionary<string, object?>? extra = null) =>
        RenderConversationCore(messages, addGenerationPrompt, bosToken, eosToken, extra, null);

    /// <summary>
    /// <see cref="RenderConversation(IReadOnlyList{ChatMessage}, bool, string, string, IReadOnlyDictionary{string, object})"/>,
    /// also returning the output ranges of the template's <c>{% generation %}</c> blocks (empty when it has none): the
    /// text transformers' <c>return_assistant_tokens_mask</c> marks as the assistant's.
    /// </summary>
    internal (string Text, IReadOnlyList<(int Start, int End)> Generation) RenderConversationMarked(IReadOnlyList<ChatMessage> messages,
        bool addGenerationPrompt, string? bosToken, string? eosToken, IReadOnlyDictionary<string, object?>? extra = null)
    {
        var marks = new List<(int Start, int End)>();
        string text = RenderConversationCore(messages, addGenerationPrompt, bosToken, eosToken, extra, marks);
        return (text, marks);
    }

    private string RenderConversationCore(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, string? bosToken, string? eosToken,
        IReadOnlyDictionary<string, object?>? extra, List<(int Start, int End)>? generation)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var variables = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["tools"] = null,
            ["documents"] = null,
        };
        foreach (var (key, value) in extra ?? new Dictionary<string, object?>())
        {
            if (Array.IndexOf(ConversationVariables, key) >= 0)
                throw new ArgumentException($"extra variable '{key}' is set by RenderConversation's own parameter; pass it there.", nameof(extra));
            variables[key] = value;
        }
        variables["messages"] = messages.Select(m => (object?)m).ToList();
        variables["add_generation_prompt"] = addGenerationPrompt;
        if (bosToken is not null) variables["bos_token"] = bosToken;
        if (eosToken is not null) variables["eos_token"] = eosToken;
        return Render(variables, generation);
    }
}
