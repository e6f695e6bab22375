using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.Text;
using ResLora.IO;
using ResLora.Text.Templates;
using ResLora.Models;
using ResLora.Training;

namespace ResLora.Pipelines;

/// <summary>A conversation ready to generate from: the prompt's ids and what ends the reply.</summary>
/// <param name="Text">The rendered prompt, ending with the header that opens the assistant's reply.</param>
/// <param name="Ids">Its token ids (the template writes BOS itself when the model uses one).</param>
/// <param name="StopIds">EOS ids and the ids of the template's end-of-turn tokens that are one token in the vocabulary.</param>
/// <param name="StopTexts">End-of-turn texts that are several tokens in the vocabulary (a built-in template on a base
/// model whose vocabulary lacks its markers): the reply ends when its text contains one.</param>
public sealed record ChatPrompt(string Text, IReadOnlyList<int> Ids, IReadOnlyList<int> StopIds, IReadOnlyList<string> StopTexts)
{
    /// <summary>Generation options' stop condition for <see cref="StopTexts"/> (null when there are none).</summary>
    public Func<IReadOnlyList<int>, bool>? StopWhen(ITextTokenizer tokenizer) => StopTexts.Count == 0
        ? null
        : output => StopTexts.Any(t => tokenizer.Decode(output, skipSpecialTokens: false).Contains(t, StringComparison.Ordinal));

    /// <summary>The reply's text: <paramref name="output"/> without its stop ids and cut before the first stop text, special tokens skipped.</summary>
    public string Reply(ITextTokenizer tokenizer, IReadOnlyList<int> output)
    {
        var kept = output.Where(t => !StopIds.Contains(t)).ToList();
        if (StopTexts.Count > 0)
        {
            string all = tokenizer.Decode(kept, skipSpecialTokens: false);
            int cut = StopTexts.Select(t => all.IndexOf(t, StringComparison.Ordinal)).Where(i => i >= 0).DefaultIfEmpty(-1).Min();
            if (cut >= 0)
            {
                // Keep the tokens that lie wholly before the stop text.
                int m = kept.Count;
                while (m > 0 && tokenizer.Decode(kept.Take(m), skipSpecialTokens: false).Length > cut) m--;
                kept = kept.Take(m).ToList();
            }
        }
        return tokenizer.Decode(kept);
    }

    /// <summary>This conversation as the decode engine's prompt: its ids, stop ids and texts, and <see cref="Reply"/> as its text.</summary>
    public GenerationPrompt ForGeneration(ITextTokenizer tokenizer) => new(Ids, StopIds, t => Reply(tokenizer, t), StopWhen(tokenizer), StopTexts);
}

/// <summary>How a prompt becomes token ids for generation and probing.</summary>
public static class Prompts
{
    /// <summary>BOS (when the tokenizer config asks for it) + the encoded prompt (<see cref="GenerationPrompt.PlainIds"/>).</summary>
    public static IReadOnlyList<int> Ids(ITextTokenizer tokenizer, string prompt) => GenerationPrompt.PlainIds(tokenizer, prompt);

    /// <summary>
    /// The chat format to answer with: <paramref name="chatTemplate"/> when given (a Jinja file, a JSON file with
    /// chat_template, or a built-in name), else the model's own template, else the one the adapter was trained with (recorded
    /// beside it), else null.
    /// </summary>
    /// <param name="modelDir">The model folder (its tokenizer_config.json).</param>
    /// <param name="adapterDir">The adapter folder, or null.</param>
    /// <param name="chatTemplate">The --chat-template value, or null.</param>
    public static ChatFormat? ChatFormatFor(string modelDir, string? adapterDir, string? chatTemplate = null) =>
        ChatFormat.ForModel(modelDir, chatTemplate) ?? (adapterDir is not null ? TrainingDataRecord.Read(adapterDir)?.Templates.Chat : null);

    /// <summary>The error for a chat request when <see cref="ChatFormatFor"/> found no template.</summary>
    public static UserInputException NoChatTemplate(string modelDir, string flag = "--chat-template") =>
        new($"{modelDir} has no chat_template in tokenizer_config.json; give one with {flag} NAME|FILE (built-in: {string.Join(", ", BuiltInChatTemplates.Names)}).");

    /// <summary>
    /// A conversation from a --messages file or one user message, with an optional system message put first (refused
    /// when the conversation already starts with one).
    /// </summary>
    /// <param name="messagesFile">A conversation file (see <see cref="ReadMessages"/>), or null.</param>
    /// <param name="prompt">The user's message when there is no file ("" for none).</param>
    /// <param name="system">A system message, or null.</param>
    public static List<ChatMessage> Conversation(string? messagesFile, string prompt, string? system)
    {
        if (messagesFile is not null && prompt.Length > 0)
            throw new UserInputException("give the conversation as --messages FILE or the user's message as --prompt, not both.");
        var conversation = messagesFile is not null ? ReadMessages(messagesFile).ToList() : new List<ChatMessage>();
        if (messagesFile is null)
        {
            if (prompt.Length == 0) throw new UserInputException("--chat needs the user's message: --prompt TEXT (or --messages FILE).");
            conversation.Add(new ChatMessage("user", prompt));
        }
        if (system is not null)
        {
            if (conversation.Count > 0 && conversation[0].Role == "system")
                throw new UserInputException("--system: the conversation already starts with a system message.");
            conversation.Insert(0, new ChatMessage("system", system));
        }
        return conversation;
    }

    /// <summary>
    /// A conversation rendered with <paramref name="format"/> and the generation prompt, encoded as transformers'
    /// <c>apply_chat_template(add_generation_prompt=True)</c> does (no BOS added: the template writes it); generation stops
    /// at EOS and at each end-of-turn token of the template (by id when it is one token in the vocabulary, otherwise by
    /// its text).
    /// </summary>
    /// <param name="tokenizer">The model's tokenizer.</param>
    /// <param name="format">The chat format.</param>
    /// <param name="messages">The conversation so far.</param>
    /// <param name="tools">The tools the template is given (null: none).</param>
    public static ChatPrompt Chat(ITextTokenizer tokenizer, ChatFormat format, IReadOnlyList<ChatMessage> messages, System.Text.Json.Nodes.JsonArray? tools = null)
    {
        if (messages.Count == 0) throw new UserInputException("the conversation is empty; give --prompt or --messages.");
        return ChatFromText(tokenizer, format, format.RenderPrompt(messages, tools));
    }

    /// <summary>
    /// <see cref="Chat"/> for a prompt already rendered with <see cref="ChatFormat.RenderPrompt"/>: tokenizes it and
    /// finds the stop tokens. Lets a caller that shares one tokenizer render the (untrusted, possibly slow) template
    /// before it takes the tokenizer's lock.
    /// </summary>
    public static ChatPrompt ChatFromText(ITextTokenizer tokenizer, ChatFormat format, string text)
    {
        var ids = tokenizer.Encode(text);
        if (ids.Count == 0) throw new UserInputException($"{format.Origin}: the conversation renders to no tokens.");
        var stops = tokenizer.EosTokenIds.ToList();
        var texts = new List<string>();
        foreach (var marker in format.EndOfTurn)
        {
            var m = tokenizer.Encode(marker);
            if (m.Count == 1) { if (!stops.Contains(m[0])) stops.Add(m[0]); }
            else texts.Add(marker);
        }
        return new ChatPrompt(text, ids, stops, texts);
    }

    /// <summary>
    /// Reads a conversation file: a JSON list of <c>{"role", "content"}</c> messages, or one record as training data
    /// holds it (<c>{"messages": [...]}</c>, ShareGPT <c>{"conversations": [...]}</c>, optional <c>"system"</c>).
    /// </summary>
    public static IReadOnlyList<ChatMessage> ReadMessages(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"--messages {path}: no such file; give a JSON list of {{\"role\", \"content\"}} messages.", path);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllText(path), new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new UserInputException($"{path}: not valid JSON ({e.Message}).", e);
        }
        using var _ = doc;
        var root = doc.RootElement;
        if (root.ValueKind == JsonValueKind.Array)
        {
            using var wrapped = JsonDocument.Parse("{\"messages\":" + root.GetRawText() + "}");
            return ChatRecords.Messages(wrapped.RootElement, path);
        }
        if (root.ValueKind == JsonValueKind.Object && ChatRecords.IsConversation(root)) return ChatRecords.Messages(root, path);
        throw new UserInputException($"{path}: expected a JSON list of {{\"role\", \"content\"}} messages or an object with \"messages\".");
    }

    /// <summary>
    /// What a conversation data file renders to, record by record (<c>reslora tokenize --data FILE --chat-renders</c>), for
    /// checking the template engine against Jinja: the whole conversation, the render of the messages up to each
    /// assistant turn (what training uses for a template that rewrites earlier turns), and the training examples.
    /// A record the template or the checks refuse carries the message in <see cref="ConversationRenders.Error"/>.
    /// </summary>
    /// <param name="dataPath">A JSONL or JSON-array file of conversation records.</param>
    /// <param name="format">The chat format.</param>
    public static IEnumerable<ConversationRenders> Renders(string dataPath, ChatFormat format)
    {
        IO.InputPaths.DataFile(dataPath, expected: "a JSONL or JSON-array file of conversation records");
        int n = 0;
        foreach (var (rec, where) in DataSet.ObjectRecords(dataPath, "data set"))
        {
            n++;
            if (!ChatRecords.IsConversation(rec)) throw new UserInputException($"{where}: --chat-renders shows conversation records ({{\"messages\"}} or {{\"conversations\"}}); this one is not.");
            var messages = ChatRecords.Messages(rec, where);
            var tools = ChatRecords.Tools(rec, where);
            var result = new ConversationRenders(n);
            try
            {
                result = result with
                {
                    Full = format.RenderText(messages, tools),
                    Turns = Enumerable.Range(0, messages.Count).Where(i => messages[i].Role == "assistant")
                        .Select(i => format.RenderText(messages.Take(i + 1).ToList(), tools)).ToList(),
                    Examples = format.RenderForTraining(messages, tools)
                        .Select(e => new ConversationExample(e.Text, e.Turns, e.AssistantSpans.Select(s => new[] { s.Start, s.End }).ToList())).ToList(),
                };
            }
            catch (UserInputException e)
            {
                result = result with { Error = e.Message };
            }
            yield return result;
        }
    }
}

/// <summary>One record's renders (<see cref="Prompts.Renders"/>).</summary>
/// <param name="Record">The record's number in the file, from 1.</param>
public sealed record ConversationRenders([property: JsonPropertyName("record")] int Record)
{
    /// <summary>The whole conversation, no generation prompt.</summary>
    [JsonPropertyName("full")] public string? Full { get; init; }

    /// <summary>For each assistant turn, the render of the messages up to and including it.</summary>
    [JsonPropertyName("turns")] public IReadOnlyList<string>? Turns { get; init; }

    /// <summary>The training examples the record becomes.</summary>
    [JsonPropertyName("examples")] public IReadOnlyList<ConversationExample>? Examples { get; init; }

    /// <summary>Why the record cannot be rendered, or null.</summary>
    [JsonPropertyName("error")] public string? Error { get; init; }
}

/// <summary>One training example of a conversation: its text, the assistant turns it trains (1-based) and their [start, end) ranges.</summary>
public sealed record ConversationExample(
    [property: JsonPropertyName("text")] string Text,
    [property: JsonPropertyName("turns")] IReadOnlyList<int> Turns,
    [property: JsonPropertyName("loss")] IReadOnlyList<int[]> Loss);
