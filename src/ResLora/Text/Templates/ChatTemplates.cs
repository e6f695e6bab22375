using System.Text.Json.Nodes;

namespace ResLora.Text.Templates;

/// <summary>Finds the chat template of a model's <c>tokenizer_config.json</c>.</summary>
public static class ChatTemplates
{
    /// <summary>
    /// Reads <c>chat_template</c>: a Jinja string, or a list of <c>{"name": ..., "template": ...}</c> entries (as
    /// transformers saves several templates, e.g. "default" and "tool_use"), from which the one named
    /// <paramref name="name"/> is taken, "default" when no name is given.
    /// </summary>
    /// <param name="tokenizerConfig">The parsed <c>tokenizer_config.json</c>.</param>
    /// <param name="name">The template to take from a list; null for "default".</param>
    /// <param name="clock">Where <c>strftime_now</c> reads the date; the system clock when null.</param>
    /// <returns>The parsed template, or null when the config has no <c>chat_template</c>.</returns>
    /// <exception cref="UserInputException">The field has the wrong shape, or no template has that name.</exception>
    /// <exception cref="ChatTemplateException">The template uses a construct outside the supported subset.</exception>
    public static ChatTemplate? FromTokenizerConfig(JsonObject tokenizerConfig, string? name = null, TimeProvider? clock = null)
    {
        ArgumentNullException.ThrowIfNull(tokenizerConfig);
        const string Field = "tokenizer_config.json: chat_template";
        if (!tokenizerConfig.TryGetPropertyValue("chat_template", out var node) || node is null) return null;
        if (node is JsonValue single && single.TryGetValue(out string? source))
        {
            if (name is not null && name != "default")
                throw new UserInputException($"{Field} is a single template; there is no template named '{name}' (only 'default').");
            return ChatTemplate.Parse(source, "default", clock);
        }
        if (node is not JsonArray list)
            throw new UserInputException($"{Field} must be a string or a list of {{\"name\", \"template\"}} objects.");
        var named = new List<(string Name, string Template)>();
        foreach (var item in list)
        {
            if (item is not JsonObject entry
                || entry["name"] is not JsonValue n || !n.TryGetValue(out string? entryName)
                || entry["template"] is not JsonValue t || !t.TryGetValue(out string? template))
                throw new UserInputException($"{Field}: every list entry must be an object with string fields \"name\" and \"template\".");
            named.Add((entryName, template));
        }
        string wanted = name ?? "default";
        foreach (var (entryName, template) in named)
            if (entryName == wanted) return ChatTemplate.Parse(template, entryName, clock);
        string available = named.Count == 0 ? "none" : string.Join(", ", named.Select(x => $"'{x.Name}'"));
        throw new UserInputException(name is null
            ? $"{Field} holds several templates and none is named 'default'; choose one by name: {available}."
            : $"{Field} has no template named '{name}'; the templates are: {available}.");
    }
}
