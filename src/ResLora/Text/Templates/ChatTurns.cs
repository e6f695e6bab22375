using System.Text.Json.Nodes;

namespace ResLora.Text.Templates;

/// <summary>Where a conversation's assistant turns are, and how a conversation becomes training examples.</summary>
public sealed partial class ChatFormat
{
    /// <summary>One assistant turn rendered as the model sees it when it writes it: the conversation up to and including it.</summary>
    /// <param name="Number">1-based among the conversation's assistant turns.</param>
    /// <param name="Text">The render of the messages up to and including the turn (no generation prompt).</param>
    /// <param name="Span">The turn's [start, end) in <paramref name="Text"/>: its text and end-of-turn token.</param>
    private sealed record TurnRender(int Number, string Text, (int Start, int End) Span);

    /// <summary>
    /// Renders a whole conversation in one pass and finds its assistant turns (see the remarks on <see cref="ChatFormat"/>).
    /// </summary>
    /// <param name="messages">The conversation, oldest first.</param>
    /// <param name="tools">The tools the model may call (rendered by templates that describe them), or null.</param>
    /// <returns>The text and the assistant turns' ranges.</returns>
    /// <exception cref="ChatTemplateException">The template failed or rejected the conversation.</exception>
    /// <exception cref="UserInputException">An assistant turn cannot be located, or the template writes an earlier turn
    /// differently once later messages follow (use <see cref="RenderForTraining"/>, which trains such turns one by one).</exception>
    public RenderedConversation Render(IReadOnlyList<ChatMessage> messages, JsonArray? tools = null)
    {
        var (examples, onePass) = Examples(messages, tools);
        if (onePass) return examples[0];
        throw new UserInputException($"{Origin}: an earlier assistant turn cannot be located in the whole conversation: the template writes it differently once later messages follow (as Qwen3 drops earlier <think> blocks); train such conversations per turn (RenderForTraining), or mark assistant text with {{% generation %}} in the template.");
    }

    /// <summary>
    /// The training examples of a conversation, each assistant turn trained on the text the model sees when it writes
    /// that turn. When the template is prefix-stable for the conversation (the render up to and including each assistant
    /// turn is a prefix of the whole conversation's render), or marks assistant text with <c>{% generation %}</c>, this is
    /// one example: the whole conversation, every assistant turn carrying loss. Otherwise (a template that rewrites
    /// earlier turns, as Qwen3 drops the <c>&lt;think&gt;</c> blocks of all but the last reply) each assistant turn i is
    /// trained on the render of messages[0..i] with the loss on turn i alone; turns whose renders are prefixes of a later
    /// turn's render share that turn's example, so a conversation becomes at most one example per assistant turn.
    /// </summary>
    /// <param name="messages">The conversation, oldest first.</param>
    /// <param name="tools">The tools the model may call, or null.</param>
    /// <returns>The examples, ordered by their last turn; each one's <see cref="RenderedConversation.Turns"/> names its turns.</returns>
    /// <exception cref="ChatTemplateException">The template failed or rejected the conversation.</exception>
    /// <exception cref="UserInputException">An assistant turn cannot be located even in the render that ends with it, or the
    /// template does not render the tools or tool calls the conversation has.</exception>
    public IReadOnlyList<RenderedConversation> RenderForTraining(IReadOnlyList<ChatMessage> messages, JsonArray? tools = null) =>
        Examples(messages, tools).Examples;

    /// <summary><see cref="RenderForTraining"/>, and whether its one example is the whole conversation rendered in one pass.</summary>
    private (IReadOnlyList<RenderedConversation> Examples, bool OnePass) Examples(IReadOnlyList<ChatMessage> messages, JsonArray? tools)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var variables = Variables(tools);
        var (full, marked) = Template.RenderConversationMarked(messages, addGenerationPrompt: false, BosToken, EosToken, variables);
        CheckToolUse(messages, tools, full);
        if (marked.Count > 0)
            return (new[] { new RenderedConversation(full, marked) { Turns = Enumerable.Range(1, marked.Count).ToList() } }, true);
        var turns = new List<TurnRender>();
        for (int i = 0, n = 0; i < messages.Count; i++)
            if (messages[i].Role == "assistant") turns.Add(LocateLastTurn(messages.Take(i + 1).ToList(), ++n, variables));
        if (turns.All(t => Covers(full, t)))
            return (new[] { new RenderedConversation(full, turns.Select(t => t.Span).ToList()) { Turns = turns.Select(t => t.Number).ToList() } }, true);
        // Each turn joins the example of the latest turn whose render holds it unchanged (text before it included), else
        // starts its own: the renders of the turns that the template rewrites later.
        var hosts = new List<(TurnRender Host, List<TurnRender> Members)>();
        for (int k = turns.Count - 1; k >= 0; k--)
        {
            int h = hosts.FindIndex(x => Covers(x.Host.Text, turns[k]));
            if (h >= 0) hosts[h].Members.Add(turns[k]);
            else hosts.Add((turns[k], new List<TurnRender> { turns[k] }));
        }
        var examples = hosts.AsEnumerable().Reverse()
            .Select(x => new RenderedConversation(x.Host.Text, x.Members.AsEnumerable().Reverse().Select(t => t.Span).ToList())
            {
                Turns = x.Members.AsEnumerable().Reverse().Select(t => t.Number).ToList(),
            })
            .ToList();
        return (examples, false);
    }

    /// <summary>Whether <paramref name="text"/> starts with the turn's render up to the end of the turn (the turn and all before it unchanged).</summary>
    private static bool Covers(string text, TurnRender t) =>
        text.Length >= t.Span.End && string.CompareOrdinal(text, 0, t.Text, 0, t.Span.End) == 0;

    /// <summary>The last message (an assistant turn) located in the render of <paramref name="upToTurn"/>.</summary>
    private TurnRender LocateLastTurn(List<ChatMessage> upToTurn, int number, Dictionary<string, object?>? variables)
    {
        var before = upToTurn.Take(upToTurn.Count - 1).ToList();
        string text = Template.RenderConversation(upToTurn, addGenerationPrompt: false, BosToken, EosToken, variables);
        foreach (bool generationPrompt in new[] { true, false })
        {
            string p;
            try
            {
                p = Template.RenderConversation(before, generationPrompt, BosToken, EosToken, variables);
            }
            catch (ChatTemplateException)
            {
                continue; // a template may refuse a conversation that does not end where it expects; try the other way
            }
            if (!text.StartsWith(p, StringComparison.Ordinal)) continue;
            string segment = CutAtEndOfTurn(text[p.Length..], upToTurn[^1].Content);
            return new TurnRender(number, text, (p.Length, p.Length + segment.Length));
        }
        throw new UserInputException($"{Origin}: assistant turn {number} cannot be located: the template renders the conversation before it differently once the turn is added; mark assistant text with {{% generation %}} in the template, or choose another with --chat-template.");
    }

    /// <summary>
    /// Refuses a conversation whose tools or tool calls the template would drop without a word: tools given that change
    /// nothing in the text, tool calls that change nothing, a tool result that does not appear.
    /// </summary>
    private void CheckToolUse(IReadOnlyList<ChatMessage> messages, JsonArray? tools, string full)
    {
        const string Fix = "choose a template that renders tool use with --chat-template (a JSON file with the model family's tool-use template, e.g. Qwen2.5's or Qwen3's tokenizer_config.json)";
        if (tools is { Count: > 0 } && TryRender(messages, null) == full)
            throw new UserInputException($"{Origin}: the chat template does not render 'tools' (the conversation's text is the same without them); {Fix}.");
        int calling = IndexWhere(messages, m => m.Fields?["tool_calls"] is JsonArray { Count: > 0 });
        if (calling >= 0)
        {
            var withoutCalls = messages.Select(m => m.Fields?["tool_calls"] is JsonArray ? m with { Fields = WithoutCalls(m.Fields) } : m).ToList();
            if (TryRender(withoutCalls, tools) == full)
                throw new UserInputException($"{Origin}: the chat template does not render tool_calls (message {calling + 1}'s calls leave the text unchanged), so the model would learn an empty reply; {Fix}.");
        }
        int lost = IndexWhere(messages, m => m.Role == "tool" && m.Content.Length > 0 && !full.Contains(m.Content, StringComparison.Ordinal));
        if (lost >= 0)
            throw new UserInputException($"{Origin}: the chat template does not render tool results (message {lost + 1}, role tool, is missing from the text); {Fix}.");
    }

    /// <summary>The conversation's render, or null when the template refuses it (it then needs what was taken away: it uses it).</summary>
    private string? TryRender(IReadOnlyList<ChatMessage> messages, JsonArray? tools)
    {
        try
        {
            return Template.RenderConversation(messages, false, BosToken, EosToken, Variables(tools));
        }
        catch (ChatTemplateException)
        {
            return null;
        }
    }

    private static JsonObject WithoutCalls(JsonObject fields)
    {
        var copy = (JsonObject)fields.DeepClone();
        copy.Remove("tool_calls");
        return copy;
    }

    private static int IndexWhere(IReadOnlyList<ChatMessage> messages, Func<ChatMessage, bool> test)
    {
        for (int i = 0; i < messages.Count; i++)
            if (test(messages[i])) return i;
        return -1;
    }
}
