using System.Text.Json.Nodes;
using ResLora.IO;
using ResLora.Text.Templates;
using ResLora.Tests.Infrastructure;
using ResLora.Tests.IO.Templates;
using ResLora.Text;
using ResLora.Training;

namespace ResLora.Tests.Training;

/// <summary>
/// Conversation records rendered with each family's chat template: the loss covers every assistant turn and its
/// end-of-turn token, nothing else, whatever the tokenizer merges.
/// </summary>
public sealed class ChatDataTests : IDisposable
{
    /// <summary>Merges that make multi-character tokens of the assistant's words and of the glue around them.</summary>
    private static readonly (string, string)[] Merges =
    {
        ("H", "e"), ("He", "l"), ("Hel", "l"), ("Hell", "o"), (" ", "H"), (" H", "ow"), ("o", "w"), ("\n", "\n"), (" ", "c"), (" c", "an"), ("a", "n"),
        ("W", "h"), ("Wh", "y"), (" ", "t"), (" t", "he"), ("h", "e"), ("i", "s"), ("s", "t"), ("a", "s"), ("u", "s"), ("e", "r"),
    };

    /// <summary>Each family's fixture, BOS/EOS texts, whether it takes a system message, and the text each assistant turn must train on.</summary>
    private static readonly Dictionary<string, (string File, string? Bos, string Eos, bool System, Func<string, string> Turn)> Families = new()
    {
        ["qwen2"] = ("qwen2.jinja", null, "<|im_end|>", true, a => a + "<|im_end|>"),
        ["llama3"] = ("llama3.jinja", "<|begin_of_text|>", "<|eot_id|>", true, a => a + "<|eot_id|>"),
        ["llama2"] = ("llama2.jinja", "<s>", "</s>", true, a => " " + a + " </s>"),
        ["mistral"] = ("mistral.jinja", "<s>", "</s>", false, a => a + "</s>"),
        ["zephyr"] = ("zephyr.jinja", "<s>", "</s>", true, a => a + "</s>"),
        ["gemma"] = ("gemma.jinja", "<bos>", "<eos>", false, a => a + "<end_of_turn>"),
        ["phi3"] = ("phi3.jinja", "<s>", "<|endoftext|>", true, a => a + "<|end|>"),
    };

    private const string Answer1 = "Hello! How can I help?", Answer2 = "Why did the chicken cross the road?";

    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-chat-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, string content)
    {
        string p = Path.Combine(_dir, name);
        File.WriteAllText(p, content);
        return p;
    }

    private ITextTokenizer ByteLevel()
    {
        string dir = Path.Combine(_dir, "tok");
        if (!File.Exists(Path.Combine(dir, "tokenizer.json"))) ChatTokenizerFiles.WriteByteLevel(dir, ChatTokenizerFiles.FamilySpecials, Merges);
        return TokenizerLoader.Load(dir);
    }

    private static ChatFormat Format(string family)
    {
        var (file, bos, eos, _, _) = Families[family];
        return new ChatFormat(ChatTemplate.Parse(ChatTemplateTestKit.Fixture(file), family), bos, eos, ChatTokenizerFiles.FamilySpecials);
    }

    /// <summary>The decoded text of each maximal run of loss-carrying tokens.</summary>
    private static List<string> LossRuns(ITextTokenizer tok, TokenizedExample ex)
    {
        var runs = new List<string>();
        var current = new List<int>();
        for (int i = 0; i <= ex.Ids.Length; i++)
        {
            if (i < ex.Ids.Length && ex.Labels[i] != Tokenization.IgnoreIndex) { current.Add(ex.Ids[i]); continue; }
            if (current.Count > 0) runs.Add(tok.Decode(current, skipSpecialTokens: false));
            current.Clear();
        }
        return runs;
    }

    public static TheoryData<string> FamilyNames() => new(Families.Keys);

    [Theory, MemberData(nameof(FamilyNames))]
    public void Tokenize_FamilyTemplateMultiTurn_OnlyAssistantTurnsAndTheirEndOfTurnCarryLoss(string family)
    {
        var (_, _, _, system, turn) = Families[family];
        string sys = system ? "{\"role\":\"system\",\"content\":\"Be kind.\"}," : "";
        string data = Write("chat.jsonl",
            $"{{\"messages\":[{sys}{{\"role\":\"user\",\"content\":\"Hi there\"}},{{\"role\":\"assistant\",\"content\":\"{Answer1}\"}},"
            + $"{{\"role\":\"user\",\"content\":\"Tell me a joke.\"}},{{\"role\":\"assistant\",\"content\":\"{Answer2}\"}}]}}\n");
        var examples = DataSet.Load(data, new DataTemplates { Chat = Format(family) });
        var tok = ByteLevel();
        var set = Tokenization.Tokenize(examples, tok, seqLen: 512);
        Assert.Single(set.Examples);
        Assert.Equal(new[] { turn(Answer1), turn(Answer2) }, LossRuns(tok, set.Examples[0]));
        // The ids are the rendered text's own encoding, with no BOS or EOS added around it.
        Assert.Equal(tok.Encode(examples[0].Completion), set.Examples[0].Ids);
    }

    [Fact]
    public void Tokenize_TrainOnPrompt_PutsEveryTurnOfTheConversationUnderTheLoss()
    {
        string data = Write("chat-all.jsonl",
            $"{{\"messages\":[{{\"role\":\"system\",\"content\":\"Be kind.\"}},{{\"role\":\"user\",\"content\":\"Hi there\"}},{{\"role\":\"assistant\",\"content\":\"{Answer1}\"}}]}}\n");
        var examples = DataSet.Load(data, new DataTemplates { Chat = Format("qwen2") });
        var tok = ByteLevel();
        var masked = Tokenization.Tokenize(examples, tok, seqLen: 512).Examples[0];
        var all = Tokenization.Tokenize(examples, tok, seqLen: 512, trainOnPrompt: true).Examples[0];
        Assert.Equal(masked.Ids, all.Ids);
        Assert.Equal(new[] { Answer1 + "<|im_end|>" }, LossRuns(tok, masked));
        // With the flag the whole rendered conversation is one run of loss tokens: system and user turns included.
        Assert.Equal(all.Ids, all.Labels);
        Assert.Equal(new[] { tok.Decode(all.Ids, skipSpecialTokens: false) }, LossRuns(tok, all));
        Assert.Contains("Be kind.", LossRuns(tok, all)[0]);
    }

        [Theory]
    [InlineData("qwen2", "<|im_end|>")]
    [InlineData("llama3", "<|eot_id|>")]
    [InlineData("llama2", "</s>")]
    [InlineData("mistral", "</s>")]
    [InlineData("zephyr", "</s>")]
    [InlineData("gemma", "<end_of_turn>|<eos>")]
    [InlineData("phi3", "<|end|>|<|endoftext|>")]
    public void EndOfTurn_FamilyTemplate_IsItsTurnClosingTokenThenEos(string family, string expected)
    {
        Assert.Equal(expected, string.Join("|", Format(family).EndOfTurn));
    }

    [Fact]
    public void Tokenize_SentencePieceMergeAcrossTheTurnBoundary_NeitherLeaksNorShiftsTheMask()
    {
        // "assistant\nHi": with no pre-tokenizer the merge "\n"+"H" makes one token across the boundary. It starts in the
        // template's text, so it carries no loss; "i" and <|im_end|> do.
        string dir = Path.Combine(_dir, "sp");
        var ids = ChatTokenizerFiles.WriteSentencePiece(dir, new[] { "<|im_start|>", "<|im_end|>" },
            new[] { "\u2581", "a", "s", "i", "t", "n", "u", "e", "r", "\n", "H" }, new[] { ("\n", "H") });
        var tok = TokenizerLoader.Load(dir);
        var chat = new ChatFormat(ChatTemplate.Parse(BuiltInChatTemplates.Source("chatml")!), null, "<|im_end|>", new[] { "<|im_start|>", "<|im_end|>" });
        string data = Write("sp.jsonl", "{\"messages\":[{\"role\":\"user\",\"content\":\"use\"},{\"role\":\"assistant\",\"content\":\"Hi\"}]}\n");
        var ex = DataSet.Load(data, new DataTemplates { Chat = chat });
        var t = Tokenization.TokenizeOne(ex[0], tok);
        int straddling = Array.IndexOf(t.Ids, ids["\nH"]);
        Assert.True(straddling > 0);
        Assert.Equal(Tokenization.IgnoreIndex, t.Labels[straddling]);
        Assert.Equal(new[] { ids["i"], ids["<|im_end|>"] }, t.Labels.Where(l => l != Tokenization.IgnoreIndex));
    }

    [Fact]
    public void Load_ShareGptAndSystemField_BecomeTheSameConversationAsMessages()
    {
        var chat = Format("qwen2");
        string messages = Write("m.jsonl", "{\"messages\":[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"assistant\",\"content\":\"A\"}]}\n");
        string shareGpt = Write("s.json", "[{\"system\":\"S\",\"conversations\":[{\"from\":\"human\",\"value\":\"Q\"},{\"from\":\"gpt\",\"value\":\"A\"}]}]");
        var a = DataSet.Load(messages, new DataTemplates { Chat = chat })[0];
        var b = DataSet.Load(shareGpt, new DataTemplates { Chat = chat })[0];
        Assert.Equal("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n", a.Completion);
        Assert.Equal(a.Completion, b.Completion);
        Assert.Equal(a.LossSpans, b.LossSpans);
        Assert.True(a.IsConversation);
        Assert.Equal("A<|im_end|>", a.Completion[a.LossSpans![0].Start..a.LossSpans[0].End]);
    }

    [Fact]
    public void Render_TemplateWithGenerationBlocks_UsesTheMarkedText()
    {
        const string Source = "{% for m in messages %}{% if m.role == 'assistant' %}A: {% generation %}{{ m.content }}.{% endgeneration %}{{ '\\n' }}"
            + "{% else %}U: {{ m.content }}\n{% endif %}{% endfor %}";
        var chat = new ChatFormat(ChatTemplate.Parse(Source), null, null);
        var r = chat.Render(new[] { new ChatMessage("user", "q"), new ChatMessage("assistant", "a"), new ChatMessage("user", "r"), new ChatMessage("assistant", "b") });
        Assert.Equal("U: q\nA: a.\nU: r\nA: b.\n", r.Text);
        Assert.Equal(new[] { "a.", "b." }, r.AssistantSpans.Select(s => r.Text[s.Start..s.End]));
    }

    [Fact]
    public void Render_TemplateWithoutEndTokens_TrainsOnTheWholeTurnItWrites()
    {
        var chat = new ChatFormat(ChatTemplate.Parse("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"), null, null);
        var r = chat.Render(new[] { new ChatMessage("user", "q"), new ChatMessage("assistant", "a") });
        Assert.Empty(chat.EndOfTurn);
        Assert.Equal("a\n", r.Text[r.AssistantSpans[0].Start..r.AssistantSpans[0].End]);
    }

    [Fact]
    public void Load_BadRole_IsOneLineNamingFileAndLine()
    {
        string p = Write("bad.jsonl", "{\"messages\":[{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"assistant\",\"content\":\"A\"}]}\n"
            + "{\"messages\":[{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"bot\",\"content\":\"A\"}]}\n");
        var e = Assert.Throws<UserInputException>(() => DataSet.Load(p, new DataTemplates { Chat = Format("qwen2") }));
        Assert.Equal($"{p}: record 2 (line 2): messages[1].role 'bot' is not a chat role; use system, user, assistant or tool.", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void Load_TemplateThatRaises_IsOneLineNamingFileLineAndTheTemplatesMessage()
    {
        string p = Write("sys.jsonl", "{\"messages\":[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"assistant\",\"content\":\"A\"}]}\n");
        var e = Assert.Throws<UserInputException>(() => DataSet.Load(p, new DataTemplates { Chat = Format("gemma") }));
        Assert.StartsWith($"{p}: record 1 (line 1): chat template 'gemma' line 1: ", e.Message);
        Assert.EndsWith("System role not supported", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Theory]
    [InlineData("{\"messages\":[{\"role\":\"user\",\"content\":\"Q\"}]}", "no assistant message")]
    [InlineData("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]},{\"role\":\"assistant\",\"content\":\"A\"}]}", "messages[0].content must be a string, got array")]
    [InlineData("{\"conversations\":[{\"from\":\"robot\",\"value\":\"Q\"}]}", "conversations[0].from 'robot' is not a ShareGPT speaker")]
    [InlineData("{\"messages\":[]}", "'messages' is empty")]
    [InlineData("{\"messages\":\"hi\"}", "'messages' must be a list of messages, got string")]
    public void Load_MalformedConversation_NamesTheRecordAndTheField(string record, string expected)
    {
        string p = Write("m.jsonl", record + "\n");
        var e = Assert.Throws<UserInputException>(() => DataSet.Load(p, new DataTemplates { Chat = Format("qwen2") }));
        Assert.StartsWith($"{p}: record 1 (line 1): ", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Load_ConversationWithoutChatTemplate_AsksForChatTemplate()
    {
        string p = Write("c.jsonl", "{\"messages\":[{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"assistant\",\"content\":\"A\"}]}\n");
        var e = Assert.Throws<UserInputException>(() => DataSet.Load(p));
        Assert.Contains("--chat-template", e.Message);
        Assert.Contains("chatml", e.Message);
    }

    [Fact]
    public void Tokenize_ConversationWithATokenizerWithoutOffsets_IsRefusedWithTheFix()
    {
        var ex = new TextExample("", "<|im_start|>user\nQ") { LossSpans = new[] { (0, 1) } };
        var e = Assert.Throws<UserInputException>(() => Tokenization.Tokenize(new[] { ex }, new CharTokenizer(), 64));
        Assert.Contains("tokenizer.json", e.Message);
    }

    [Fact]
    public void ForModel_ReadsTheFoldersTemplateAndTokens_AndChatTemplateOptionOverridesIt()
    {
        string dir = Path.Combine(_dir, "model");
        ChatTokenizerFiles.WriteByteLevel(dir, ChatTokenizerFiles.FamilySpecials, Merges, new JsonObject
        {
            ["bos_token"] = "<|begin_of_text|>",
            ["eos_token"] = new JsonObject { ["content"] = "<|eot_id|>" },
            ["chat_template"] = ChatTemplateTestKit.Fixture("llama3.jinja"),
        });
        var own = ChatFormat.ForModel(dir)!;
        Assert.Equal("<|begin_of_text|>", own.BosToken);
        Assert.Equal("<|eot_id|>", own.EosToken);
        Assert.StartsWith("<|begin_of_text|><|start_header_id|>user", own.RenderPrompt(new[] { new ChatMessage("user", "Q") }));
        var chatml = ChatFormat.ForModel(dir, "chatml")!;
        Assert.Equal("<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n", chatml.RenderPrompt(new[] { new ChatMessage("user", "Q") }));
        Assert.Equal(new[] { "<|im_end|>", "<|eot_id|>" }, chatml.EndOfTurn);
        string file = Write("t.jinja", "{% for m in messages %}[{{ m.content }}]{% endfor %}");
        Assert.Equal("[Q]", ChatFormat.ForModel(dir, file)!.RenderPrompt(new[] { new ChatMessage("user", "Q") }));
        Assert.Contains("neither a file nor a built-in template", Assert.Throws<UserInputException>(() => ChatFormat.ForModel(dir, "nosuch")).Message);
        string bad = Write("bad.jinja", "{% macro x() %}{% endmacro %}");
        Assert.Contains("'macro' tag is not supported", Assert.Throws<UserInputException>(() => ChatFormat.ForModel(dir, bad)).Message);
        Assert.Null(ChatFormat.ForModel(Path.Combine(_dir, "tok-none")));
    }

    public static TheoryData<string, string, bool> BuiltInsAndFixtures() => new()
    {
        { "chatml", "qwen2.jinja", true },
        { "llama3", "llama3.jinja", true },
        { "llama2", "llama2.jinja", true },
        { "mistral", "mistral.jinja", false },
        { "gemma", "gemma.jinja", false },
        { "phi3", "phi3.jinja", true },
        { "zephyr", "zephyr.jinja", true },
    };

    [Theory, MemberData(nameof(BuiltInsAndFixtures))]
    public void BuiltIn_RendersLikeTheFamilysOwnTemplate(string name, string fixture, bool system)
    {
        var builtIn = ChatTemplate.Parse(BuiltInChatTemplates.Source(name)!, name);
        var own = ChatTemplate.Parse(ChatTemplateTestKit.Fixture(fixture));
        var turns = new List<ChatMessage> { new("user", "Hi"), new("assistant", "Hello! How can I help?"), new("user", "Tell me a joke.") };
        if (system) turns.Insert(0, new ChatMessage("system", "You are a bot."));
        foreach (bool generationPrompt in new[] { false, true })
            Assert.Equal(own.RenderConversation(turns, generationPrompt, "<s>", "</s>"), builtIn.RenderConversation(turns, generationPrompt, "<s>", "</s>"));
    }
}
