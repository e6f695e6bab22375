using System.Text.Json;
using System.Text.Json.Nodes;
using ResLora.IO;

namespace ResLora.Text.Templates;

/// <summary>A conversation rendered with its chat template, and the character ranges of its assistant turns.</summary>
/// <param name="Text">The rendered text, special tokens written out (transformers' <c>apply_chat_template(tokenize=False)</c>).</param>
/// <param name="AssistantSpans">[start, end) ranges of <paramref name="Text"/> the model learns to write: each assistant turn's text
/// and its end-of-turn token, in order.</param>
public sealed record RenderedConversation(string Text, IReadOnlyList<(int Start, int End)> AssistantSpans)
{
    /// <summary>Which assistant turns (1-based, in the conversation's order) <see cref="AssistantSpans"/> are, one number per span.</summary>
    public IReadOnlyList<int> Turns { get; init; } = Array.Empty<int>();
}

/// <summary>
/// A model's conversation format: its chat template with the texts of its BOS and EOS tokens, the end-of-turn token(s)
/// the template closes an assistant turn with, and where in a rendered conversation the assistant's turns are.
/// </summary>
/// <remarks>
/// Assistant turns are found as transformers finds them: from the template's <c>{% generation %}</c> blocks when it has
/// them; otherwise, for each assistant message i, by rendering the conversation up to message i with the generation
/// prompt (and, when that is not how the turn begins, without it) and up to message i + 1: the turn is what the second
/// adds to the first, cut after the first end-of-turn token that follows the message's content (so the newline or
/// space a template writes between turns is not learnt). Text the template writes after the end of the conversation
/// (Phi-3's final EOS) is never part of a turn. A template that writes an earlier turn differently once later messages
/// follow (Qwen3 drops the <c>&lt;think&gt;</c> blocks of earlier replies) is trained per turn: see <see cref="RenderForTraining"/>.
/// </remarks>
public sealed partial class ChatFormat
{
    /// <summary>End-of-turn texts that families use, looked for when the tokenizer files list no special tokens.</summary>
    private static readonly string[] KnownEndOfTurn = { "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|eom_id|>", "<|endoftext|>", "</s>" };

    /// <summary>What the format is made of, read on first use for a model's own template (data without conversations never needs it).</summary>
    private sealed record FormatParts(ChatTemplate Template, string? Bos, string? Eos, IReadOnlyList<string> Specials);

    private readonly Lazy<FormatParts> _parts;
    private readonly Lazy<IReadOnlyList<string>> _endOfTurn;

    /// <summary>A format from a parsed template.</summary>
    /// <param name="template">The chat template.</param>
    /// <param name="bosToken">The BOS token's text (<c>bos_token</c> in the template), or null.</param>
    /// <param name="eosToken">The EOS token's text (<c>eos_token</c>), or null.</param>
    /// <param name="specialTokens">The tokenizer's special token texts, among which the end-of-turn token is looked for.</param>
    /// <param name="origin">Where the template came from, for messages ("model/tokenizer_config.json", "built-in 'chatml'").</param>
    public ChatFormat(ChatTemplate template, string? bosToken, string? eosToken, IEnumerable<string>? specialTokens = null, string? origin = null)
        : this(() => new FormatParts(template, bosToken, eosToken, (specialTokens ?? Array.Empty<string>()).ToList()), origin ?? $"chat template '{template.Name ?? "default"}'")
    {
        ArgumentNullException.ThrowIfNull(template);
    }

    private ChatFormat(Func<FormatParts> parts, string origin)
    {
        _parts = new Lazy<FormatParts>(() =>
        {
            var p = parts();
            return p with { Specials = p.Specials.Where(s => s.Length > 0).Distinct().ToList() };
        });
        Origin = origin;
        _endOfTurn = new Lazy<IReadOnlyList<string>>(DetectEndOfTurn);
    }

    /// <summary>Where the template came from, for messages.</summary>
    public string Origin { get; }

    /// <summary>The template (a model's own template is parsed on first use, so data without conversations never needs it).</summary>
    public ChatTemplate Template => _parts.Value.Template;

    /// <summary>The BOS token's text, or null.</summary>
    public string? BosToken => _parts.Value.Bos;

    /// <summary>The EOS token's text, or null.</summary>
    public string? EosToken => _parts.Value.Eos;

    /// <summary>
    /// The texts that end an assistant turn: the template's own end-of-turn token (<c>&lt;|im_end|&gt;</c>,
    /// <c>&lt;|eot_id|&gt;</c>, <c>&lt;end_of_turn&gt;</c>, <c>&lt;|end|&gt;</c>), found by rendering a probe conversation
    /// and taking the first special token after the reply, then EOS. Generation for chat stops at any of them.
    /// </summary>
    public IReadOnlyList<string> EndOfTurn => _endOfTurn.Value;

    /// <summary>The conversation followed by the header that opens the assistant's reply (<c>add_generation_prompt</c>).</summary>
    /// <param name="messages">The conversation so far, oldest first.</param>
    /// <returns>The prompt text.</returns>
    /// <param name="tools">The tools the model may call (JSON schemas, the <c>tools</c> of transformers' <c>apply_chat_template</c>), or null.</param>
    public string RenderPrompt(IReadOnlyList<ChatMessage> messages, JsonArray? tools = null) =>
        Template.RenderConversation(messages, addGenerationPrompt: true, BosToken, EosToken, Variables(tools));

    /// <summary>The conversation rendered as it is (transformers' <c>apply_chat_template(tokenize=False)</c>), with or without the generation prompt.</summary>
    /// <param name="messages">The conversation, oldest first.</param>
    /// <param name="tools">The tools the model may call, or null.</param>
    /// <param name="addGenerationPrompt">Whether to end with the header that opens the assistant's reply.</param>
    public string RenderText(IReadOnlyList<ChatMessage> messages, JsonArray? tools = null, bool addGenerationPrompt = false) =>
        Template.RenderConversation(messages, addGenerationPrompt, BosToken, EosToken, Variables(tools));

    private static Dictionary<string, object?>? Variables(JsonArray? tools) =>
        tools is null ? null : new Dictionary<string, object?>(StringComparer.Ordinal) { ["tools"] = tools };

    /// <summary>The turn up to and including the first end-of-turn text after the message's content (the whole turn when none follows).</summary>
    private string CutAtEndOfTurn(string segment, string content)
    {
        string c = content.Trim();
        int after = c.Length > 0 ? segment.IndexOf(c, StringComparison.Ordinal) : -1;
        after = after >= 0 ? after + c.Length : 0;
        int end = -1;
        foreach (var marker in EndOfTurn)
        {
            int k = segment.IndexOf(marker, after, StringComparison.Ordinal);
            if (k >= 0 && (end < 0 || k + marker.Length < end)) end = k + marker.Length;
        }
        return end >= 0 ? segment[..end] : segment;
    }

    private IReadOnlyList<string> DetectEndOfTurn()
    {
        var found = new List<string>();
        if (ProbeEndOfTurn() is { } own) found.Add(own);
        if (EosToken is { Length: > 0 } eos && !found.Contains(eos)) found.Add(eos);
        return found;
    }

    /// <summary>The first special token the template writes after an assistant reply, or null (a template that ends turns with plain text).</summary>
    private string? ProbeEndOfTurn()
    {
        const string Reply = "ResLoraProbeReply";
        var candidates = _parts.Value.Specials.Concat(KnownEndOfTurn).Append(EosToken ?? "").Where(s => s.Length > 0).Distinct().ToList();
        var probes = new[]
        {
            new[] { new ChatMessage("user", "Hello"), new ChatMessage("assistant", Reply) },
            new[] { new ChatMessage("system", "Be brief."), new ChatMessage("user", "Hello"), new ChatMessage("assistant", Reply) },
        };
        foreach (var probe in probes)
        {
            string text;
            try
            {
                text = Template.RenderConversation(probe, addGenerationPrompt: false, BosToken, EosToken);
            }
            catch (ChatTemplateException)
            {
                continue;
            }
            int at = text.LastIndexOf(Reply, StringComparison.Ordinal);
            if (at < 0) continue;
            string after = text[(at + Reply.Length)..];
            string? best = null;
            int bestAt = int.MaxValue;
            foreach (var c in candidates)
            {
                int k = after.IndexOf(c, StringComparison.Ordinal);
                if (k >= 0 && (k < bestAt || (k == bestAt && c.Length > best!.Length))) { best = c; bestAt = k; }
            }
            return best;
        }
        return null;
    }

    /// <summary>
    /// The chat format of the model folder <paramref name="modelDir"/>: <paramref name="chatTemplate"/> when given (a file of
    /// Jinja, a JSON file with a <c>chat_template</c> field such as another model's tokenizer_config.json, a built-in name
    /// from <see cref="BuiltInChatTemplates.Names"/>, or the name of one of the model's own named templates), otherwise
    /// the folder's tokenizer_config.json <c>chat_template</c>, parsed on first use. BOS/EOS texts come from
    /// tokenizer_config.json, or from the tokenizer's BOS/EOS ids when it names none.
    /// </summary>
    /// <param name="modelDir">The model folder.</param>
    /// <param name="chatTemplate">The <c>--chat-template</c> value, or null for the model's own.</param>
    /// <returns>The format, or null when the model has no chat template and none was given.</returns>
    /// <exception cref="UserInputException">The given template is not a file, a built-in or a named template of the model, or does not parse.</exception>
    public static ChatFormat? ForModel(string modelDir, string? chatTemplate = null)
    {
        string configPath = Path.Combine(modelDir, "tokenizer_config.json");
        var config = ReadJson(configPath) ?? new JsonObject();
        if (chatTemplate is not { Length: > 0 } option)
        {
            if (config["chat_template"] is null) return null;
            // The model's own template: read (and its tokens looked up) on first use.
            return new ChatFormat(() =>
            {
                var (bos, eos, specials) = Tokens(modelDir, config);
                return new FormatParts(Wrap(configPath, () => ChatTemplates.FromTokenizerConfig(config))!, bos, eos, specials);
            }, configPath);
        }
        ChatTemplate template;
        string origin;
        if (File.Exists(option))
        {
            origin = option;
            template = option.EndsWith(".json", StringComparison.OrdinalIgnoreCase)
                ? Wrap(option, () => ChatTemplates.FromTokenizerConfig(ReadJson(option)!))
                    ?? throw new UserInputException($"--chat-template {option}: the file has no chat_template field.")
                : Wrap(option, () => ChatTemplate.Parse(File.ReadAllText(option), Path.GetFileNameWithoutExtension(option)));
        }
        else if (BuiltInChatTemplates.Source(option) is { } builtIn)
        {
            origin = $"built-in chat template '{option.ToLowerInvariant()}'";
            template = Wrap(origin, () => ChatTemplate.Parse(builtIn, option.ToLowerInvariant()));
        }
        else if (config["chat_template"] is JsonArray named && named.OfType<JsonObject>().Any(e => (string?)e["name"] == option))
        {
            origin = $"{configPath} ({option})";
            template = Wrap(configPath, () => ChatTemplates.FromTokenizerConfig(config, option))!;
        }
        else
        {
            throw new UserInputException($"--chat-template '{option}' is neither a file nor a built-in template ({string.Join(", ", BuiltInChatTemplates.Names)}) nor a template named in {configPath}.");
        }
        var (b, e, s) = Tokens(modelDir, config);
        return new ChatFormat(template, b, e, s, origin);
    }

    /// <summary>BOS/EOS texts (tokenizer_config.json, else the tokenizer's BOS/EOS ids) and the special tokens' texts.</summary>
    private static (string? Bos, string? Eos, List<string> Specials) Tokens(string modelDir, JsonObject config)
    {
        string? bos = TokenText(config["bos_token"]), eos = TokenText(config["eos_token"]);
        if (bos is null || eos is null) (bos, eos) = FromTokenizer(modelDir, bos, eos);
        return (bos, eos, SpecialTokens(modelDir, config));
    }

    private static T Wrap<T>(string where, Func<T> read)
    {
        try
        {
            return read();
        }
        catch (ChatTemplateException e)
        {
            throw new UserInputException($"{where}: {e.Message}", e);
        }
    }

    private static string? TokenText(JsonNode? n) => n switch
    {
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonObject o => (string?)o["content"],
        _ => null,
    };

    /// <summary>BOS/EOS texts from the tokenizer's ids, for a folder whose tokenizer_config.json does not name them.</summary>
    private static (string? Bos, string? Eos) FromTokenizer(string modelDir, string? bos, string? eos)
    {
        if (!File.Exists(Path.Combine(modelDir, "tokenizer.json"))) return (bos, eos);
        var tok = TokenizerLoader.Load(modelDir);
        if (tok is not ITokenOffsets named) return (bos, eos);
        bos ??= tok.BosTokenId is { } b ? named.TokenString(b) : null;
        eos ??= tok.EosTokenIds.Count > 0 ? named.TokenString(tok.EosTokenIds[0]) : null;
        return (bos, eos);
    }

    /// <summary>The special tokens' texts: tokenizer.json's <c>added_tokens</c> marked special, and tokenizer_config.json's <c>added_tokens_decoder</c>.</summary>
    private static List<string> SpecialTokens(string modelDir, JsonObject config)
    {
        var result = new List<string>();
        if (config["added_tokens_decoder"] is JsonObject decoder)
            foreach (var (_, v) in decoder)
                if (v is JsonObject o && ((bool?)o["special"] ?? false) && TokenText(o) is { } s) result.Add(s);
        string tokenizerJson = Path.Combine(modelDir, "tokenizer.json");
        if (File.Exists(tokenizerJson))
        {
            using var stream = File.OpenRead(tokenizerJson);
            JsonDocument doc;
            try
            {
                doc = JsonDocument.Parse(stream, new JsonDocumentOptions { AllowTrailingCommas = true });
            }
            catch (JsonException e)
            {
                throw new UserInputException($"{tokenizerJson}: not valid JSON ({e.Message}).", e);
            }
            using var _ = doc;
            if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
                foreach (var a in added.EnumerateArray())
                    if (a.ValueKind == JsonValueKind.Object && a.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True
                        && a.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String)
                        result.Add(c.GetString()!);
        }
        return result;
    }

    private static JsonObject? ReadJson(string path)
    {
        if (!File.Exists(path)) return null;
        try
        {
            return JsonNode.Parse(File.ReadAllText(path), documentOptions: new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip }) as JsonObject
                ?? throw new UserInputException($"{path}: expected a JSON object.");
        }
        catch (JsonException e)
        {
            throw new UserInputException($"{path}: not valid JSON ({e.Message}).", e);
        }
    }
}
