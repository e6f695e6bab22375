using System.Text.Json.Nodes;
using ResLora.Text;
using ResLora.Text.Tokenizers;

namespace ResLora.Tests.Text.Tokenizers;

/// <summary>
/// The Unigram model of tokenizer.json (SentencePiece unigram: T5, XLM-R, DeBERTa-v3) on hand-built vocabularies whose
/// best segmentation is worked out by hand, and a DeBERTa-v3-style tokenizer.json folder loaded end to end.
/// </summary>
public sealed class UnigramTokenizerTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-unigram-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static UnigramModel Model(bool byteFallback = false, int? unk = 0, params (string, double)[] pieces) =>
        new(pieces, unk, byteFallback, "tokenizer.json");

    private static List<int> Ids(UnigramModel m, string word)
    {
        var ids = new List<int>();
        m.Encode(word, ids);
        return ids;
    }

    [Fact]
    public void Viterbi_PicksTheHighestScoringSegmentation()
    {
        // "abc": ab + c = -2 - 3 = -5 beats a + bc = -3 - 4 = -7 and a + b + c = -9.
        var m = Model(pieces: new[] { ("<unk>", 0.0), ("a", -3.0), ("b", -3.0), ("c", -3.0), ("ab", -2.0), ("bc", -4.0) });
        Assert.Equal(new[] { 4, 3 }, Ids(m, "abc"));
        // bc at -1: a + bc = -4 now beats ab + c = -5.
        m = Model(pieces: new[] { ("<unk>", 0.0), ("a", -3.0), ("b", -3.0), ("c", -3.0), ("ab", -2.0), ("bc", -1.0) });
        Assert.Equal(new[] { 1, 5 }, Ids(m, "abc"));
        // Spans follow the segmentation.
        var ids = new List<int>();
        var spans = new List<(int, int)>();
        m.Encode("abc", ids, spans);
        Assert.Equal(new[] { (0, 1), (1, 3) }, spans);
    }

    [Fact]
    public void UnknownCharacters_ScoreMinMinusTen_AndAreFused()
    {
        // Lowest score -30 (z), so an unknown character scores -40, and unk + a scores -40 + 15 = -25. "éa" as one piece
        // at -24.9 beats that; at -25.1 it loses: the penalty is exactly 10 below the lowest score. (A piece that covers
        // the unknown character is itself a score the minimum counts, hence a positive score for a.)
        var pieces = new List<(string, double)> { ("<unk>", 0.0), ("a", 15.0), ("z", -30.0), ("éa", -24.9) };
        Assert.Equal(new[] { 3 }, Ids(new UnigramModel(pieces, 0, false, "t"), "éa"));
        pieces[3] = ("éa", -25.1);
        Assert.Equal(new[] { 0, 1 }, Ids(new UnigramModel(pieces, 0, false, "t"), "éa"));
        // A run of unknown characters (with a surrogate pair) is one unknown token, spanning the whole run.
        var m = Model(pieces: new[] { ("<unk>", 0.0), ("a", -1.0), ("b", -1.0) });
        Assert.Equal(new[] { 1, 0, 2 }, Ids(m, "axy\uD83D\uDE00zb"));
        var ids = new List<int>();
        var spans = new List<(int, int)>();
        m.Encode("axy\uD83D\uDE00zb", ids, spans);
        Assert.Equal(new[] { (0, 1), (1, 6), (6, 7) }, spans);
        // Without unk_id an unknown character cannot be encoded.
        var noUnk = Model(unk: null, pieces: new[] { ("a", -1.0) });
        Assert.Contains("unk_id", Assert.Throws<UserInputException>(() => Ids(noUnk, "ax")).Message);
    }

    [Fact]
    public void ByteFallback_SpellsUnknownRunsAsUtf8Bytes()
    {
        var pieces = new List<(string, double)> { ("<unk>", 0.0), ("a", -1.0) };
        for (int b = 0; b < 256; b++) pieces.Add(($"<0x{b:X2}>", 0.0));
        var m = new UnigramModel(pieces, 0, true, "t");
        // é = C3 A9, ü = C3 BC: the fused run "éü" becomes its four bytes; ids are 2 + byte.
        Assert.Equal(new[] { 1, 2 + 0xC3, 2 + 0xA9, 2 + 0xC3, 2 + 0xBC, 1 }, Ids(m, "aéüa"));
        // Without byte fallback the same vocabulary gives one unknown token.
        Assert.Equal(new[] { 1, 0, 1 }, Ids(new UnigramModel(pieces, 0, false, "t"), "aéüa"));
        // A missing byte piece: the unknown id instead.
        pieces.RemoveAt(2 + 0xA9);
        Assert.Equal(new[] { 1, 0, 1 }, Ids(new UnigramModel(pieces, 0, true, "t"), "aéüa"));
    }

    [Fact]
    public void FromJson_BadVocabOrUnkId_NamesFileAndField()
    {
        JsonObject Json(JsonNode vocab, int unk) => new() { ["type"] = "Unigram", ["unk_id"] = unk, ["vocab"] = vocab };
        var e = Assert.Throws<UserInputException>(() => UnigramModel.FromJson(Json(new JsonArray(new JsonArray("<unk>", 0.0), new JsonArray("a")), 0), "m/tokenizer.json"));
        Assert.Contains("m/tokenizer.json", e.Message);
        Assert.Contains("model.vocab[1]", e.Message);
        e = Assert.Throws<UserInputException>(() => UnigramModel.FromJson(Json(new JsonArray(new JsonArray("<unk>", 0.0), new JsonArray("a", "high")), 0), "m/tokenizer.json"));
        Assert.Contains("model.vocab[1]", e.Message);
        e = Assert.Throws<UserInputException>(() => UnigramModel.FromJson(Json(new JsonArray(new JsonArray("<unk>", 0.0), new JsonArray("a", -1.0)), 2), "m/tokenizer.json"));
        Assert.Contains("model.unk_id", e.Message);
        Assert.Contains("outside", e.Message);
        e = Assert.Throws<UserInputException>(() => UnigramModel.FromJson(new JsonObject { ["type"] = "Unigram", ["vocab"] = new JsonObject() }, "m/tokenizer.json"));
        Assert.Contains("model.vocab", e.Message);
    }

    /// <summary>
    /// A DeBERTa-v3-style folder: Strip, Precompiled (full-width → ASCII), Replace(" {2,}" → " "), Metaspace, Unigram,
    /// [CLS] $A [SEP] template. Ids: [PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3, then the pieces below from 4.
    /// </summary>
    private string WriteDebertaStyle(string? charsmap = null)
    {
        string[] pieces = { "\u2581", "\u2581hello", "\u2581world", "\u2581he", "llo", "h", "e", "l", "o", "w", "r", "d", "A", "B", "X", "\u2581A" };
        var vocab = new JsonArray(new JsonArray("[PAD]", 0.0), new JsonArray("[CLS]", 0.0), new JsonArray("[SEP]", 0.0), new JsonArray("[UNK]", 0.0));
        double[] scores = { -2, -3, -3, -4, -4, -6, -6, -6, -6, -6, -6, -6, -5, -5, -5, -4 };
        for (int i = 0; i < pieces.Length; i++) vocab.Add(new JsonArray(pieces[i], scores[i]));
        JsonObject Added(int id, string s) => new() { ["id"] = id, ["content"] = s, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = true };
        JsonObject Meta() => new() { ["type"] = "Metaspace", ["replacement"] = "\u2581", ["prepend_scheme"] = "always", ["split"] = true };
        JsonObject Special(string id, int typeId) => new() { ["SpecialToken"] = new JsonObject { ["id"] = id, ["type_id"] = typeId } };
        JsonObject Seq(string id, int typeId) => new() { ["Sequence"] = new JsonObject { ["id"] = id, ["type_id"] = typeId } };
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(Added(0, "[PAD]"), Added(1, "[CLS]"), Added(2, "[SEP]"), Added(3, "[UNK]")),
            ["normalizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["normalizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Strip", ["strip_left"] = true, ["strip_right"] = true },
                    new JsonObject { ["type"] = "Precompiled", ["precompiled_charsmap"] = charsmap ?? PrecompiledCharsMapTests.FullWidthBase64 },
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["Regex"] = " {2,}" }, ["content"] = " " }),
            },
            ["pre_tokenizer"] = Meta(),
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(Special("[CLS]", 0), Seq("A", 0), Special("[SEP]", 0)),
                ["pair"] = new JsonArray(Special("[CLS]", 0), Seq("A", 0), Special("[SEP]", 0), Seq("B", 1), Special("[SEP]", 1)),
                ["special_tokens"] = new JsonObject
                {
                    ["[CLS]"] = new JsonObject { ["id"] = "[CLS]", ["ids"] = new JsonArray(1), ["tokens"] = new JsonArray("[CLS]") },
                    ["[SEP]"] = new JsonObject { ["id"] = "[SEP]", ["ids"] = new JsonArray(2), ["tokens"] = new JsonArray("[SEP]") },
                },
            },
            ["decoder"] = Meta(),
            ["model"] = new JsonObject { ["type"] = "Unigram", ["unk_id"] = 3, ["vocab"] = vocab, ["byte_fallback"] = false },
        };
        File.WriteAllText(Path.Combine(_dir, "tokenizer.json"), root.ToJsonString());
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), "{\"pad_token\": \"[PAD]\", \"add_bos_token\": false}");
        return _dir;
    }

    [Fact]
    public void DebertaStyleFolder_NormalizesSplitsEncodesAndDecodes()
    {
        var tok = TokenizerLoader.Load(WriteDebertaStyle());
        // Stripped, spaces collapsed, ▁ prepended to each word: ▁hello ▁world.
        Assert.Equal(new[] { 5, 6 }, tok.Encode("  hello   world \t"));
        Assert.Equal("hello world", tok.Decode(tok.Encode("hello world")));
        // Decoding gives the normalized text: spaces collapsed, the charsmap's replacements (ＡＢ → X, Ａ → A) kept.
        Assert.Equal("hello XA world", tok.Decode(tok.Encode("  hello  \uFF21\uFF22\uFF21 world ")));
        // Full-width letters map to ASCII through the charsmap: ＡＢ is the rule for X (longest match), Ａ alone is A.
        Assert.Equal(new[] { 4, 18, 16 }, tok.Encode("\uFF21\uFF22\uFF21")); // ▁ X A
        Assert.Equal(new[] { 19, 17 }, tok.Encode("\uFF21B"));                 // ▁A (-4) + B (-5) beats ▁ + A + B (-12)
        // A word the pieces cannot spell: "▁héllo" → ▁, h, é unknown, llo (▁he does not match: é is not e).
        Assert.Equal(new[] { 4, 9, 3, 8 }, tok.Encode("héllo"));
        // Offsets: ▁hello covers "hello" in the raw text after the stripped spaces.
        var offsets = ((ITokenOffsets)tok).EncodeWithOffsets("  hello world");
        Assert.Equal((5, 2, 7), (offsets[0].Id, offsets[0].Start, offsets[0].End));
        Assert.Equal((6, 7, 13), (offsets[1].Id, offsets[1].Start, offsets[1].End));
        // The template puts [CLS] … [SEP] around one text and [SEP] between a pair, with type ids 0 then 1.
        var pairs = Assert.IsAssignableFrom<ISentencePairTokenizer>(tok);
        var single = pairs.EncodeForModel("hello", null, 16);
        Assert.Equal(new[] { 1, 5, 2 }, single.Ids);
        var pair = pairs.EncodeForModel("hello", "world", 16);
        Assert.Equal(new[] { 1, 5, 2, 6, 2 }, pair.Ids);
        Assert.Equal(new[] { 0, 0, 0, 1, 1 }, pair.TypeIds);
        Assert.Equal(0, pairs.PadId);
    }

    [Fact]
    public void SentencePieceModelWithoutTokenizerJson_SaysHowToMakeOne()
    {
        File.WriteAllBytes(Path.Combine(_dir, "spm.model"), new byte[] { 10, 0 });
        var e = Assert.Throws<FileNotFoundException>(() => TokenizerLoader.Load(_dir));
        Assert.Contains("spm.model", e.Message);
        Assert.Contains("save_pretrained", e.Message);
    }

    [Fact]
    public void DamagedCharsmapInTokenizerJson_NamesFileAndField()
    {
        var e = Assert.Throws<UserInputException>(() => TokenizerLoader.Load(WriteDebertaStyle(Convert.ToBase64String(new byte[] { 0xFF, 0xFF, 0, 0, 1, 2 }))));
        Assert.Contains("tokenizer.json", e.Message);
        Assert.Contains("normalizer.precompiled_charsmap", e.Message);
    }
}
