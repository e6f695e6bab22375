using System.Text.Json.Nodes;
using ResLora.Tests.Infrastructure;
using ResLora.Text;
using ResLora.Text.Templates;
using ResLora.Text.Tokenizers;
using ResLora.Training;
using ResLora.Training.Preference;

namespace ResLora.Tests.Training;

/// <summary>
/// Preference data in TRL's formats: the rendered prompt/chosen/rejected text, the ids and labels DPOTrainer would build,
/// truncation, the batch layout, and every malformed record refused with the file, record and field named.
/// </summary>
public sealed class PreferenceDataTests : IDisposable
{
    private const int Ignore = Tokenization.IgnoreIndex;
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-pref-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string content)
    {
        string p = Path.Combine(_dir, $"p{Guid.NewGuid():N}.jsonl");
        File.WriteAllText(p, content);
        return p;
    }

    private static ChatFormat ChatMl() =>
        new(ChatTemplate.Parse(BuiltInChatTemplates.Source("chatml")!, "chatml"), null, "<|im_end|>", ChatTokenizerFiles.FamilySpecials);

    private static readonly CharTokenizer Chars = new();

    private static int[] Enc(string s) => Chars.Encode(s).ToArray();

    private static int[] Cat(params int[][] parts) => parts.SelectMany(p => p).ToArray();

    private static int[] Masked(int n) => Enumerable.Repeat(Ignore, n).ToArray();

    [Fact]
    public void LoadAndTokenize_TextRecord_PromptMaskedResponsesEndWithEos()
    {
        var data = PreferenceRecords.Load(Write("{\"prompt\":\"The sky is\",\"chosen\":\" blue.\",\"rejected\":\" green.\"}\n"), chat: null);
        var e = Assert.Single(data);
        Assert.Equal(("The sky is", " blue.", " green."), (e.Prompt, e.Chosen, e.Rejected));
        Assert.False(e.IsConversation);

        var pair = PreferenceData.Tokenize(Chars, e, maxLength: 64);
        int[] prompt = Cat(new[] { 1 }, Enc("The sky is")); // BOS: CharTokenizer asks for it
        Assert.Equal(prompt, pair.PromptIds);
        Assert.Equal(Cat(prompt, Enc(" blue."), new[] { 2 }), pair.ChosenIds);
        Assert.Equal(Cat(prompt, Enc(" green."), new[] { 2 }), pair.RejectedIds);
        Assert.Equal(Cat(Masked(11), Enc(" blue."), new[] { 2 }), pair.ChosenLabels);
        Assert.Equal(Cat(Masked(11), Enc(" green."), new[] { 2 }), pair.RejectedLabels);
        Assert.False(pair.Truncated);
        Assert.False(pair.SplitAtBoundary);

        var noBos = PreferenceData.Tokenize(new CharTokenizer { AddBosToken = false }, e, maxLength: 64);
        Assert.Equal(Enc("The sky is"), noBos.PromptIds);
    }

    [Fact]
    public void Load_ImplicitTextPrompt_SharedPrefixWithTheSpaceGivenToTheResponses()
    {
        var e = Assert.Single(PreferenceRecords.Load(Write("{\"chosen\":\"The sky is blue.\",\"rejected\":\"The sky is green.\"}"), null));
        Assert.Equal(("The sky is", " blue.", " green."), (e.Prompt, e.Chosen, e.Rejected));
        // A JSON array file holds the same records.
        var arr = PreferenceRecords.Load(Write("[{\"chosen\":\"2+2=4\",\"rejected\":\"2+2=5\"}, {\"prompt\":\"a\",\"chosen\":\"b\",\"rejected\":\"c\"}]"), null);
        Assert.Equal(new PreferenceExample("2+2=", "4", "5"), arr[0] with { Where = null });
        Assert.Equal("a", arr[1].Prompt);
    }

    [Fact]
    public void Load_ConversationalRecordWithChatMl_RendersPromptWithGenerationHeaderAndResponsesAsTheRest()
    {
        const string record = "{\"prompt\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Sky colour?\"}],"
            + "\"chosen\":[{\"role\":\"assistant\",\"content\":\"Blue.\"}],\"rejected\":[{\"role\":\"assistant\",\"content\":\"Green.\"}]}";
        var e = Assert.Single(PreferenceRecords.Load(Write(record), ChatMl()));
        Assert.True(e.IsConversation);
        Assert.Equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nSky colour?<|im_end|>\n<|im_start|>assistant\n", e.Prompt);
        Assert.Equal("Blue.<|im_end|>\n", e.Chosen);
        Assert.Equal("Green.<|im_end|>\n", e.Rejected);
    }

    [Fact]
    public void Load_ImplicitConversationalPrompt_LongestSharedMessagePrefixIsThePrompt()
    {
        const string u1 = "{\"role\":\"user\",\"content\":\"Hi\"}", a1 = "{\"role\":\"assistant\",\"content\":\"Hello!\"}",
            u2 = "{\"role\":\"user\",\"content\":\"2+2?\"}", good = "{\"role\":\"assistant\",\"content\":\"4\"}", bad = "{\"role\":\"assistant\",\"content\":\"5\"}";
        var e = Assert.Single(PreferenceRecords.Load(Write($"{{\"chosen\":[{u1},{a1},{u2},{good}],\"rejected\":[{u1},{a1},{u2},{bad}]}}"), ChatMl()));
        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n", e.Prompt);
        Assert.Equal(("4<|im_end|>\n", "5<|im_end|>\n"), (e.Chosen, e.Rejected));
        // The same pair written with an explicit prompt renders identically.
        var explicitPrompt = PreferenceRecords.Load(Write($"{{\"prompt\":[{u1},{a1},{u2}],\"chosen\":[{good}],\"rejected\":[{bad}]}}"), ChatMl())[0];
        Assert.Equal((e.Prompt, e.Chosen, e.Rejected), (explicitPrompt.Prompt, explicitPrompt.Chosen, explicitPrompt.Rejected));
    }

    [Fact]
    public void Tokenize_Conversation_IsTheRenderedTextsOwnEncodingWithNoBosOrEosAdded()
    {
        var tok = ByteLevel(out _);
        const string record = "{\"prompt\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"chosen\":[{\"role\":\"assistant\",\"content\":\"Hello\"}],\"rejected\":[{\"role\":\"assistant\",\"content\":\"Go away\"}]}";
        var e = PreferenceRecords.Load(Write(record), ChatMl())[0];
        var pair = PreferenceData.Tokenize(tok, e, maxLength: 256);
        Assert.Equal(tok.Encode(e.Prompt + e.Chosen), pair.ChosenIds);
        Assert.Equal(tok.Encode(e.Prompt + e.Rejected), pair.RejectedIds);
        Assert.Equal(tok.Encode(e.Prompt), pair.PromptIds);
        Assert.Equal("Hello<|im_end|>\n", tok.Decode(pair.ChosenLabels.Where(l => l != Ignore), skipSpecialTokens: false));
        Assert.Equal(pair.PromptIds.Length, pair.ChosenLabels.TakeWhile(l => l == Ignore).Count());
    }

    /// <summary>A byte-level BPE whose merge "a"+"b" can cross a prompt/response boundary inside a word; "&lt;/s&gt;" is EOS.</summary>
    private ITextTokenizer ByteLevel(out Dictionary<string, int> specials)
    {
        string dir = Path.Combine(_dir, "bpe");
        specials = ChatTokenizerFiles.WriteByteLevel(dir, ChatTokenizerFiles.FamilySpecials, new[] { ("a", "b"), ("H", "i") },
            new JsonObject { ["eos_token"] = "</s>", ["add_bos_token"] = false });
        return TokenizerLoader.Load(dir);
    }

    [Fact]
    public void Tokenize_MergeAcrossTheBoundary_PromptAndResponseEncodedApartAndJoinedAsTrlDoes()
    {
        var tok = ByteLevel(out var specials);
        int eos = specials["</s>"];
        Assert.Equal(eos, tok.EosTokenIds[0]);
        // "xa" + "b" encodes as "x","ab": the prompt's last token "a" is not in the whole text's encoding.
        Assert.NotEqual(tok.Encode("xa").ToArray(), tok.Encode("xab").Take(2).ToArray());
        var split = PreferenceData.Tokenize(tok, new PreferenceExample("xa", "b", " c"), maxLength: 64);
        Assert.True(split.SplitAtBoundary);
        Assert.Equal(Cat(tok.Encode("xa").ToArray(), tok.Encode("b").ToArray(), new[] { eos }), split.ChosenIds);
        Assert.Equal(Cat(Masked(2), tok.Encode("b").ToArray(), new[] { eos }), split.ChosenLabels);
        // The rejected side has no merge across the boundary, so its ids are the whole text's encoding (same either way here).
        Assert.Equal(Cat(tok.Encode("xa c").ToArray(), new[] { eos }), split.RejectedIds);

        // No merge across: the response's tokens are what the whole text's encoding adds, and a response that already
        // ends with EOS gets no second one.
        var whole = PreferenceData.Tokenize(tok, new PreferenceExample("Hi", " ab</s>", " x"), maxLength: 64);
        Assert.False(whole.SplitAtBoundary);
        Assert.Equal(tok.Encode("Hi ab</s>"), whole.ChosenIds);
        Assert.Equal(1, whole.ChosenIds.Count(i => i == eos));
    }

    [Fact]
    public void Tokenize_TooLong_PromptCutToMaxPromptLengthKeepingItsEndAndBos_ThenResponsesCut()
    {
        var e = new PreferenceExample("0123456789", "abcde", "vwxyz");
        // 1 + 10 prompt ids, 5 + EOS response ids = 17 > 12: the prompt becomes BOS + its last 3 ids; 4 + 6 fits.
        var keepEnd = PreferenceData.Tokenize(Chars, e, maxLength: 12, maxPromptLength: 4);
        Assert.True(keepEnd.Truncated);
        Assert.Equal(Cat(new[] { 1 }, Enc("789")), keepEnd.PromptIds);
        Assert.Equal(Cat(new[] { 1 }, Enc("789abcde"), new[] { 2 }), keepEnd.ChosenIds);
        Assert.Equal(Cat(Masked(4), Enc("abcde"), new[] { 2 }), keepEnd.ChosenLabels);

        var keepStart = PreferenceData.Tokenize(Chars, e, maxLength: 12, maxPromptLength: 4, PromptTruncation.KeepStart);
        Assert.Equal(Cat(new[] { 1 }, Enc("012")), keepStart.PromptIds);

        // Still too long after the prompt is cut (4 + 6 > 8): each response keeps its first 8 - 4 = 4 ids, EOS lost.
        var both = PreferenceData.Tokenize(Chars, e, maxLength: 8, maxPromptLength: 4);
        Assert.Equal(Cat(new[] { 1 }, Enc("789abcd")), both.ChosenIds);
        Assert.Equal(Cat(new[] { 1 }, Enc("789vwxy")), both.RejectedIds);

        // Default max prompt length is half of max length (TRL's 512 of 1024): 20 → prompt keeps BOS + 9 ids.
        var byDefault = PreferenceData.Tokenize(Chars, new PreferenceExample("0123456789abcdefghij", "x", "y"), maxLength: 20);
        Assert.Equal(Cat(new[] { 1 }, Enc("bcdefghij")), byDefault.PromptIds);

        // Fits: nothing cut.
        var fits = PreferenceData.Tokenize(Chars, e, maxLength: 17, maxPromptLength: 4);
        Assert.False(fits.Truncated);
        Assert.Equal(11, fits.PromptIds.Length);

        var set = PreferenceData.Tokenize(Chars, new[] { e, e with { Prompt = "p" } }, maxLength: 12, maxPromptLength: 4);
        Assert.Equal((2, 1, 0), (set.Pairs.Count, set.Truncated, set.SplitAtBoundary));
        Assert.Contains("--max-prompt-length", Assert.Throws<UserInputException>(() => PreferenceData.Tokenize(Chars, e, maxLength: 8, maxPromptLength: 8)).Message);
    }

    [Fact]
    public void Collate_EachPairsChosenThenRejectedRow_LabelsIgnoredExactlyOnPromptAndPadding()
    {
        var a = PreferenceData.Tokenize(Chars, new PreferenceExample("Q1", " yes", " no"), maxLength: 64);
        var b = PreferenceData.Tokenize(Chars, new PreferenceExample("Question2", " y", " nope!"), maxLength: 64);
        using var batch = PreferenceData.Collate(new[] { a, b }, padId: 0);
        var rows = new[] { (a.ChosenIds, a.ChosenLabels, 3), (a.RejectedIds, a.RejectedLabels, 3), (b.ChosenIds, b.ChosenLabels, 10), (b.RejectedIds, b.RejectedLabels, 10) };
        Assert.Equal(2, batch.RowGroup);
        int t = rows.Max(r => r.Item1.Length);
        Assert.Equal(new long[] { 4, t }, batch.InputIds.shape);
        Assert.Equal(new long[] { 4, t }, batch.Labels.shape);
        var ids = batch.InputIds.data<long>().ToArray();
        var labels = batch.Labels.data<long>().ToArray();
        var mask = batch.AttentionMask.data<long>().ToArray();
        for (int r = 0; r < 4; r++)
        {
            var (rowIds, _, promptLen) = rows[r];
            for (int c = 0; c < t; c++)
            {
                int k = r * t + c;
                bool real = c < rowIds.Length;
                Assert.Equal(real ? rowIds[c] : 0, ids[k]);
                Assert.Equal(real ? 1 : 0, mask[k]);
                Assert.Equal(real && c >= promptLen ? rowIds[c] : Ignore, labels[k]);
            }
        }
        Assert.Equal(5 + 3 + 4 + 7, labels.Count(l => l != Ignore)); // " yes"+EOS, " y"+EOS, " no"+EOS, " nope!"+EOS
    }

    [Theory]
    [InlineData("{\"prompt\":\"p\",\"rejected\":\"r\"}", "missing field 'chosen'")]
    [InlineData("{\"prompt\":\"p\",\"chosen\":\"c\"}", "missing field 'rejected'")]
    [InlineData("{\"chosen\":\"abc\",\"rejected\":\"xyz\"}", "missing field 'prompt'")]
    [InlineData("{\"prompt\":\"p\",\"chosen\":\" same\",\"rejected\":\" same\"}", "are the same response")]
    [InlineData("{\"chosen\":\"The answer\",\"rejected\":\"The answer\"}", "are the same response")]
    [InlineData("{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":[{\"role\":\"assistant\",\"content\":\"r\"}]}", "'rejected' is a message list")]
    [InlineData("{\"prompt\":[{\"role\":\"user\",\"content\":\"q\"}],\"chosen\":[{\"role\":\"assistant\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"more\"}],\"rejected\":[{\"role\":\"assistant\",\"content\":\"b\"}]}", "'chosen' ends with a user message")]
    [InlineData("{\"chosen\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\"}],\"rejected\":[{\"role\":\"user\",\"content\":\"q\"}]}", "'rejected' has no messages after the prompt")]
    [InlineData("{\"prompt\":\"p\",\"chosen\":[{\"role\":\"assistant\",\"content\":\"a\"}],\"rejected\":[{\"role\":\"assistant\",\"content\":\"b\"}]}", "'prompt' is string but 'chosen' is a message list")]
    [InlineData("{\"prompt\":[{\"role\":\"user\"}],\"chosen\":[{\"role\":\"assistant\",\"content\":\"a\"}],\"rejected\":[{\"role\":\"assistant\",\"content\":\"b\"}]}", "field 'prompt': messages[0] has no 'content'")]
    public void Load_BadRecord_NamesFileRecordAndField(string badRecord, string expected)
    {
        string path = Write("{\"prompt\":\"ok\",\"chosen\":\" a\",\"rejected\":\" b\"}\n" + badRecord + "\n");
        // The first (good) record is text; put a conversational bad record after a conversational good one so mixing is not what fails.
        if (badRecord.Contains("\"chosen\":[", StringComparison.Ordinal))
            path = Write("{\"prompt\":[{\"role\":\"user\",\"content\":\"ok\"}],\"chosen\":[{\"role\":\"assistant\",\"content\":\"a\"}],\"rejected\":[{\"role\":\"assistant\",\"content\":\"b\"}]}\n" + badRecord + "\n");
        var e = Assert.Throws<UserInputException>(() => PreferenceRecords.Load(path, ChatMl()));
        Assert.Contains(path, e.Message);
        Assert.Contains("record 2 (line 2)", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Load_TextThenConversationalRecords_RefusedNamingBothRecords()
    {
        string path = Write("{\"prompt\":\"q\",\"chosen\":\" a\",\"rejected\":\" b\"}\n"
            + "{\"prompt\":[{\"role\":\"user\",\"content\":\"q\"}],\"chosen\":[{\"role\":\"assistant\",\"content\":\"a\"}],\"rejected\":[{\"role\":\"assistant\",\"content\":\"b\"}]}\n");
        var e = Assert.Throws<UserInputException>(() => PreferenceRecords.Load(path, ChatMl()));
        Assert.Contains("record 2 (line 2): 'chosen' is a message list (conversational) but", e.Message);
        Assert.Contains("record 1 (line 1) is text", e.Message);
    }

    [Fact]
    public void Load_ConversationWithoutChatTemplate_AsksForChatTemplate()
    {
        string path = Write("{\"prompt\":[{\"role\":\"user\",\"content\":\"q\"}],\"chosen\":[{\"role\":\"assistant\",\"content\":\"a\"}],\"rejected\":[{\"role\":\"assistant\",\"content\":\"b\"}]}\n");
        var e = Assert.Throws<UserInputException>(() => PreferenceRecords.Load(path, chat: null));
        Assert.Contains("record 1", e.Message);
        Assert.Contains("--chat-template", e.Message);
    }

    [Fact]
    public void Tokenize_ResponseThatTokenizesToNothing_RefusedNamingRecordAndField()
    {
        string path = Write("{\"prompt\":\"q\",\"chosen\":\" a\",\"rejected\":\" b\"}\n{\"prompt\":\"q\",\"chosen\":\" a\",\"rejected\":\"\"}\n");
        var data = PreferenceRecords.Load(path, null);
        var e = Assert.Throws<UserInputException>(() => PreferenceData.Tokenize(Chars, data, maxLength: 32));
        Assert.Contains($"{path}: record 2 (line 2): 'rejected' tokenizes to nothing after the prompt", e.Message);
    }

    [Fact]
    public void Tokenize_ConversationWithATokenizerWithoutTokenizerJson_AsksForTokenizerJson()
    {
        var e = new PreferenceExample("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n", "a<|im_end|>\n", "b<|im_end|>\n") { IsConversation = true, Where = "pairs.jsonl: record 7 (line 7)" };
        var error = Assert.Throws<UserInputException>(() => PreferenceData.Tokenize(Chars, e, maxLength: 64));
        Assert.StartsWith("pairs.jsonl: record 7 (line 7): conversational preference data needs the model's Hugging Face tokenizer.json", error.Message);
    }

    [Fact]
    public void Load_TemplateWhoseGenerationPromptDiffersFromTheWrittenReply_PromptIsTheSharedRenderPrefix()
    {
        // Like DeepSeek-R1/Qwen3: the generation prompt opens an empty think block that the written reply does not have.
        const string source = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
            + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{% endif %}";
        var chat = new ChatFormat(ChatTemplate.Parse(source, "thinks"), null, "<|im_end|>", ChatTokenizerFiles.FamilySpecials);
        Assert.EndsWith("<think>\n\n</think>\n\n", chat.RenderPrompt(new[] { new ChatMessage("user", "q") }));
        const string record = "{\"prompt\":[{\"role\":\"user\",\"content\":\"q\"}],\"chosen\":[{\"role\":\"assistant\",\"content\":\"Yes.\"}],\"rejected\":[{\"role\":\"assistant\",\"content\":\"No.\"}]}";
        var e = PreferenceRecords.Load(Write(record), chat)[0];
        Assert.Equal("<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n", e.Prompt);
        Assert.Equal(("Yes.<|im_end|>\n", "No.<|im_end|>\n"), (e.Chosen, e.Rejected));
    }
}
