using System.Text;
using System.Text.Json.Nodes;
using ResLora.Demo;
using ResLora.Text.Tokenizers;
using ResLora.Text;

namespace ResLora.Tests.Text.Tokenizers;

public sealed class TokenizerLoaderTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-tok-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static JsonObject Special(int id, string content) => new()
    {
        ["id"] = id,
        ["content"] = content,
        ["single_word"] = false,
        ["lstrip"] = false,
        ["rstrip"] = false,
        ["normalized"] = false,
        ["special"] = true,
    };

    /// <summary>Llama-2 style: Prepend("▁") + Replace(" ", "▁"), byte fallback, decoder strips the leading space.</summary>
    private string WriteSentencePieceStyle()
    {
        var vocab = new JsonObject { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 };
        for (int b = 0; b < 256; b++) vocab[$"<0x{b:X2}>"] = 3 + b;
        string[] pieces = { "\u2581", "h", "e", "l", "o", "w", "r", "d", "\u2581h", "ll", "\u2581he", "\u2581hell", "\u2581hello", "\u2581w", "or", "\u2581wor", "ld", "\u2581world" };
        for (int i = 0; i < pieces.Length; i++) vocab[pieces[i]] = 259 + i;
        var merges = new JsonArray("\u2581 h", "l l", "\u2581h e", "\u2581he ll", "\u2581hell o", "\u2581 w", "o r", "\u2581w or", "l d", "\u2581wor ld");
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(Special(0, "<unk>"), Special(1, "<s>"), Special(2, "</s>")),
            ["normalizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["normalizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Prepend", ["prepend"] = "\u2581" },
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = "\u2581" }),
            },
            ["pre_tokenizer"] = null,
            ["decoder"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["decoders"] = new JsonArray(
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = "\u2581" }, ["content"] = " " },
                    new JsonObject { ["type"] = "ByteFallback" },
                    new JsonObject { ["type"] = "Fuse" },
                    new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 }),
            },
            ["model"] = new JsonObject { ["type"] = "BPE", ["unk_token"] = "<unk>", ["byte_fallback"] = true, ["fuse_unk"] = true, ["vocab"] = vocab, ["merges"] = merges },
        };
        string dir = Path.Combine(_dir, "sp");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), root.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"add_bos_token\": true, \"bos_token\": \"<s>\", \"eos_token\": {\"content\": \"</s>\"}}");
        return dir;
    }

    /// <summary>GPT-2 / Llama 3 style byte-level BPE: every byte has a token; a Llama-3-like Split regex then ByteLevel.</summary>
    private string WriteByteLevel(bool llama3Split)
    {
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++) vocab[ByteLevelAlphabet.ByteToChar[b].ToString()] = b;
        string[] merged = { "he", "ll", "llo", "hello", "\u0120w", "or", "\u0120wor", "ld", "\u0120world", "12", "123" };
        for (int i = 0; i < merged.Length; i++) vocab[merged[i]] = 256 + i;
        var merges = new JsonArray(new JsonArray("h", "e"), new JsonArray("l", "l"), new JsonArray("ll", "o"), new JsonArray("he", "llo"), new JsonArray("\u0120", "w"), new JsonArray("o", "r"), new JsonArray("\u0120w", "or"), new JsonArray("l", "d"), new JsonArray("\u0120wor", "ld"), new JsonArray("1", "2"), new JsonArray("12", "3"));
        JsonNode pre = llama3Split
            ? new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+" }, ["behavior"] = "Isolated", ["invert"] = false },
                    new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false }),
            }
            : new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true };
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(Special(267, "<|begin_of_text|>"), Special(268, "<|end_of_text|>")),
            ["normalizer"] = null,
            ["pre_tokenizer"] = pre,
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true },
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<|begin_of_text|>", ["type_id"] = 0 } }, new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
            },
            ["model"] = new JsonObject { ["type"] = "BPE", ["unk_token"] = null, ["byte_fallback"] = false, ["ignore_merges"] = llama3Split, ["vocab"] = vocab, ["merges"] = merges },
        };
        string dir = Path.Combine(_dir, llama3Split ? "l3" : "bl");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), root.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"bos_token\": \"<|begin_of_text|>\", \"eos_token\": \"<|end_of_text|>\"}");
        File.WriteAllText(Path.Combine(dir, "generation_config.json"), "{\"bos_token_id\": 267, \"eos_token_id\": [268, 7]}");
        return dir;
    }

    [Fact]
    public void SentencePieceStyle_MergesByRank_FallsBackToBytes_AndStripsTheLeadingSpace()
    {
        var tok = TokenizerLoader.Load(WriteSentencePieceStyle());
        int hello = 259 + 12, world = 259 + 17, space = 259;
        Assert.Equal(new[] { hello }, tok.Encode("hello"));
        Assert.Equal(new[] { hello, world }, tok.Encode("hello world"));
        // 'é' is not a piece: its UTF-8 bytes C3 A9 become <0xC3> <0xA9>.
        Assert.Equal(new[] { hello, space, 3 + 0xC3, 3 + 0xA9 }, tok.Encode("hello é"));
        Assert.Equal("hello é", tok.Decode(tok.Encode("hello é")));
        // Leading and repeated spaces survive the round trip; the decoder strips only the prepended one.
        Assert.Equal(new[] { space, space, hello }, tok.Encode("  hello").Take(3));
        Assert.Equal("  hello  world", tok.Decode(tok.Encode("  hello  world")));
        // Special tokens written in the text are recognised; each text piece between them gets its own ▁.
        Assert.Equal(new[] { 1, hello, 2 }, tok.Encode("<s>hello</s>"));
        Assert.Equal("hello", tok.Decode(new[] { 1, hello, 2 }));
        Assert.Equal("<s> hello</s>", tok.Decode(new[] { 1, hello, 2 }, skipSpecialTokens: false));
        Assert.Equal(1, tok.BosTokenId);
        Assert.Equal(new[] { 2 }, tok.EosTokenIds);
        Assert.True(tok.AddBosToken);
        Assert.Equal(277, tok.VocabSize);
        Assert.Empty(tok.Encode(""));
    }

    [Fact]
    public void SentencePieceStyle_RoundTripsRandomUnicode()
    {
        var tok = TokenizerLoader.Load(WriteSentencePieceStyle());
        var r = new Random(11);
        string[] alphabet = { "h", "e", "l", "o", " ", "w", "é", "ß", "\n", "\t", "中", "😀", "d", "r", "  " };
        for (int i = 0; i < 300; i++)
        {
            var sb = new StringBuilder();
            int n = r.Next(0, 25);
            for (int k = 0; k < n; k++) sb.Append(alphabet[r.Next(alphabet.Length)]);
            string s = sb.ToString();
            Assert.Equal(s, tok.Decode(tok.Encode(s)));
        }
    }

    [Fact]
    public void ByteLevel_Gpt2Style_EncodesByHand_AndRoundTripsAnyText()
    {
        var tok = TokenizerLoader.Load(WriteByteLevel(llama3Split: false));
        Assert.Equal(new[] { 259, 264 }, tok.Encode("hello world"));
        // 'é' = C3 A9 → the byte tokens Ã (0xC3) and © (0xA9); an emoji is 4 byte tokens.
        Assert.Equal(new[] { 0xC3, 0xA9 }, tok.Encode("é"));
        Assert.Equal(4, tok.Encode("😀").Count);
        Assert.Equal(new[] { 267, 259, 268 }, tok.Encode("<|begin_of_text|>hello<|end_of_text|>"));
        var r = new Random(5);
        for (int i = 0; i < 300; i++)
        {
            var sb = new StringBuilder();
            int n = r.Next(0, 20);
            for (int k = 0; k < n; k++)
            {
                int cp = r.Next(4) switch { 0 => r.Next(0x20, 0x7F), 1 => r.Next(0xA0, 0x800), 2 => r.Next(0x4E00, 0x9FFF), _ => r.Next(0x1F300, 0x1F600) };
                sb.Append(char.ConvertFromUtf32(cp));
                if (r.Next(5) == 0) sb.Append(r.Next(2) == 0 ? " " : "\n");
            }
            string s = sb.ToString();
            Assert.Equal(s, tok.Decode(tok.Encode(s)));
        }
    }

    [Fact]
    public void ByteLevel_Llama3Split_GroupsDigitsInThrees_AndReadsConfigs()
    {
        var tok = TokenizerLoader.Load(WriteByteLevel(llama3Split: true));
        // \p{N}{1,3}: "12345" → "123" + "45"; "123" is one token by its merges, "45" stays two bytes.
        Assert.Equal(new[] { 266, '4', '5' }, tok.Encode("12345"));
        Assert.Equal(new[] { 259, 264 }, tok.Encode("hello world"));
        Assert.Equal(267, tok.BosTokenId);
        Assert.Equal(new[] { 268, 7 }, tok.EosTokenIds);
        // No add_bos_token in tokenizer_config.json: the post-processor template starts with BOS.
        Assert.True(tok.AddBosToken);
        Assert.Equal("hello", tok.Decode(new[] { 267, 259, 268 }));
    }

    [Fact]
    public void DemoTokenizer_LoadsAndRoundTrips()
    {
        string dir = Path.Combine(_dir, "demo");
        DemoTokenizerFiles.Write(dir);
        var tok = TokenizerLoader.Load(dir);
        Assert.Equal(DemoTokenizerFiles.VocabSize, tok.VocabSize);
        string s = "Each box holds 3 pens. How many pens are in 4 boxes? Answer: 12";
        var ids = tok.Encode(s);
        Assert.Equal(s.Length, ids.Count);
        Assert.Equal(s, tok.Decode(ids));
        Assert.Equal(tok.Encode(" 12"), tok.Encode(s).Skip(ids.Count - 3));
        Assert.Equal(DemoTokenizerFiles.BosId, tok.BosTokenId);
        Assert.Equal(new[] { DemoTokenizerFiles.EosId }, tok.EosTokenIds);
        Assert.Equal("é~", tok.Decode(tok.Encode("é~")));
    }

    [Fact]
    public void BadFolders_GetClearErrors()
    {
        Assert.Contains("no tokenizer.json, tokenizer.model or vocab.txt", Assert.Throws<FileNotFoundException>(() => TokenizerLoader.Load(_dir)).Message);
        string bad = Path.Combine(_dir, "bad");
        Directory.CreateDirectory(bad);
        File.WriteAllText(Path.Combine(bad, "tokenizer.json"), "{\"model\": {\"type\": \"WordLevel\", \"vocab\": {}}}");
        Assert.Contains("'model.type'", Assert.Throws<UserInputException>(() => TokenizerLoader.Load(bad)).Message);
        File.WriteAllText(Path.Combine(bad, "tokenizer.json"), "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}");
        Assert.Contains("'model.vocab' is empty", Assert.Throws<UserInputException>(() => TokenizerLoader.Load(bad)).Message);
        File.WriteAllText(Path.Combine(bad, "tokenizer.json"), "{oops");
        Assert.Contains("not valid JSON", Assert.Throws<UserInputException>(() => TokenizerLoader.Load(bad)).Message);
        File.Delete(Path.Combine(bad, "tokenizer.json"));
        File.WriteAllBytes(Path.Combine(bad, "tokenizer.model"), new byte[] { 1, 2, 3, 4, 5 });
        Assert.Contains("tokenizer.model", Assert.Throws<UserInputException>(() => TokenizerLoader.Load(bad)).Message);
    }
}
