using System.Text.Json.Nodes;
using ResLora.Text.Tokenizers;
using ResLora.Text;
using static ResLora.Tests.Text.Tokenizers.BertTokenizerFiles;

namespace ResLora.Tests.Text.Tokenizers;

/// <summary>
/// Post-processors (BertProcessing, RobertaProcessing, TemplateProcessing, Sequence) and <c>longest_first</c> truncation,
/// each against ids and type ids worked out by hand.
/// </summary>
public sealed class SentencePairTokenizerTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-pair-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private ISentencePairTokenizer BertPair(string name, JsonNode? post = null, JsonObject? padding = null) =>
        Assert.IsAssignableFrom<ISentencePairTokenizer>(TokenizerLoader.Load(WriteBertJson(Path.Combine(_dir, name), postProcessor: post ?? BertProcessing(), padding: padding)));

    [Fact]
    public void BertProcessing_SingleAndPair_ClsSepAndSegments()
    {
        var tok = BertPair("bert");
        var one = tok.EncodeForModel("hello world", null, 16);
        Assert.Equal(new[] { Cls, Hello, World, Sep }, one.Ids);
        Assert.Equal(new[] { 0, 0, 0, 0 }, one.TypeIds);
        var two = tok.EncodeForModel("hello world", "unaffable!", 16);
        Assert.Equal(new[] { Cls, Hello, World, Sep, Un, Aff, Able, Bang, Sep }, two.Ids);
        Assert.Equal(new[] { 0, 0, 0, 0, 1, 1, 1, 1, 1 }, two.TypeIds);
        Assert.Equal(Pad, tok.PadId);
        // Encode stays without specials.
        Assert.Equal(new[] { Hello, World }, ((ITextTokenizer)tok).Encode("hello world"));
    }

    [Fact]
    public void RobertaProcessing_Pair_DoubleSeparatorAndTypeIdsAllZero()
    {
        var tok = TokenizerLoader.Load(WriteRobertaJson(Path.Combine(_dir, "roberta")));
        var pair = Assert.IsAssignableFrom<ISentencePairTokenizer>(tok);
        // Byte-level BPE: "hello" → 263, " world" → "Ġworld" → 268; "!" is the byte token 4 + 0x21.
        Assert.Equal(new[] { RobertaHello, RobertaSpaceWorld }, tok.Encode("hello world"));
        var one = pair.EncodeForModel("hello world", null, 16);
        Assert.Equal(new[] { RobertaBos, RobertaHello, RobertaSpaceWorld, RobertaEos }, one.Ids);
        Assert.Equal(new[] { 0, 0, 0, 0 }, one.TypeIds);
        var two = pair.EncodeForModel("hello world", "hello!", 16);
        Assert.Equal(new[] { RobertaBos, RobertaHello, RobertaSpaceWorld, RobertaEos, RobertaEos, RobertaHello, RobertaByte('!'), RobertaEos }, two.Ids);
        Assert.Equal(new int[8], two.TypeIds);
        Assert.Equal(RobertaPad, pair.PadId);
        Assert.Equal(RobertaPad, tok.PadTokenId);
        Assert.Equal(RobertaBos, tok.BosTokenId);
        Assert.Equal(new[] { RobertaEos }, tok.EosTokenIds);
        // 4 specials leave a budget of 1 for 2 + 2 text ids: on the tie the first is cut first, so only the second keeps one.
        var cut = pair.EncodeForModel("hello world", "hello!", 5);
        Assert.Equal(new[] { RobertaBos, RobertaEos, RobertaEos, RobertaHello, RobertaEos }, cut.Ids);
        Assert.Equal("hello world", tok.Decode(one.Ids));
    }

    private static JsonObject SpecialToken(string id, int typeId) => new() { ["SpecialToken"] = new JsonObject { ["id"] = id, ["type_id"] = typeId } };

    private static JsonObject Sequence(string id, int typeId) => new() { ["Sequence"] = new JsonObject { ["id"] = id, ["type_id"] = typeId } };

    [Fact]
    public void TemplateProcessing_InSequenceWithByteLevel_ReadAsWritten()
    {
        // single: [CLS]:0 $A:0 [SEP]:0 ; pair: $A:0 [SEP]:0 $B:1 <2sep>:1 where <2sep> stands for two ids (3, 3).
        var template = new JsonObject
        {
            ["type"] = "TemplateProcessing",
            ["single"] = new JsonArray(SpecialToken("[CLS]", 0), Sequence("A", 0), SpecialToken("[SEP]", 0)),
            ["pair"] = new JsonArray(Sequence("A", 0), SpecialToken("[SEP]", 0), Sequence("B", 1), SpecialToken("<2sep>", 1)),
            ["special_tokens"] = new JsonObject
            {
                ["[CLS]"] = new JsonObject { ["id"] = "[CLS]", ["ids"] = new JsonArray(Cls), ["tokens"] = new JsonArray("[CLS]") },
                ["[SEP]"] = new JsonObject { ["id"] = "[SEP]", ["ids"] = new JsonArray(Sep), ["tokens"] = new JsonArray("[SEP]") },
                ["<2sep>"] = new JsonObject { ["id"] = "<2sep>", ["ids"] = new JsonArray(Sep, Sep), ["tokens"] = new JsonArray("[SEP]", "[SEP]") },
            },
        };
        var post = new JsonObject
        {
            ["type"] = "Sequence",
            ["processors"] = new JsonArray(new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true }, template),
        };
        // padding.pad_id wins over the [PAD] name.
        var tok = BertPair("template", post, new JsonObject { ["strategy"] = "BatchLongest", ["pad_id"] = 4, ["pad_token"] = "[MASK]" });
        var one = tok.EncodeForModel("hello", null, 10);
        Assert.Equal(new[] { Cls, Hello, Sep }, one.Ids);
        Assert.Equal(new[] { 0, 0, 0 }, one.TypeIds);
        var two = tok.EncodeForModel("hello", "world", 10);
        Assert.Equal(new[] { Hello, Sep, World, Sep, Sep }, two.Ids);
        Assert.Equal(new[] { 0, 0, 1, 1, 1 }, two.TypeIds);
        Assert.Equal(4, tok.PadId);
        // Pair template adds 3 ids: max length 4 leaves one text id, which goes to the second text on the tie.
        Assert.Equal(new[] { Sep, World, Sep, Sep }, tok.EncodeForModel("hello", "world", 4).Ids);
    }

    [Fact]
    public void LongestFirst_LongerSideOnly_CutsTheLongerText()
    {
        var tok = BertPair("lf-longer");
        // 6 + 2 text ids, 3 specials, max 8 → budget 5: the second keeps its 2, the first keeps 3.
        var enc = tok.EncodeForModel("a b c d e f", "g h", 8);
        Assert.Equal(new[] { Cls, A, B, C, Sep, G, H, Sep }, enc.Ids);
        Assert.Equal(new[] { 0, 0, 0, 0, 0, 1, 1, 1 }, enc.TypeIds);
        // Mirrored: the second text is the longer one.
        Assert.Equal(new[] { Cls, G, H, Sep, A, B, C, Sep }, tok.EncodeForModel("g h", "a b c d e f", 8).Ids);
        // Fits exactly: untouched.
        Assert.Equal(11, tok.EncodeForModel("a b c d e f", "g h", 11).Ids.Length);
    }

    [Fact]
    public void LongestFirst_Tie_FirstTextGivesTheOddToken()
    {
        var tok = BertPair("lf-tie");
        // 4 + 4 into budget 5: 4,4 → 3,4 → 3,3 → 2,3.
        var enc = tok.EncodeForModel("a b c d", "e f g h", 8);
        Assert.Equal(new[] { Cls, A, B, Sep, E, F, G, Sep }, enc.Ids);
        Assert.Equal(new[] { 0, 0, 0, 0, 1, 1, 1, 1 }, enc.TypeIds);
        // 5 + 4 into budget 6: both end at 3.
        Assert.Equal(new[] { Cls, A, B, C, Sep, E, F, G, Sep }, tok.EncodeForModel("a b c d e", "e f g h", 9).Ids);
    }

    [Fact]
    public void LongestFirst_Single_CutAtTheEnd()
    {
        var tok = BertPair("lf-single");
        Assert.Equal(new[] { Cls, A, B, C, Sep }, tok.EncodeForModel("a b c d e f", null, 5).Ids);
        Assert.Equal(new[] { Cls, Sep }, tok.EncodeForModel("a b c d e f", null, 2).Ids);
        Assert.Equal(new[] { Cls, Sep, Sep }, tok.EncodeForModel("a b", "c", 3).Ids);
    }

    [Theory]
    // (first, second, budget) → (first kept, second kept), by tokenizers' closed form (utils/truncation.rs).
    [InlineData(4, 5, 9, 4, 5)] // fits
    [InlineData(10, 3, 9, 6, 3)] // only the longer is cut
    [InlineData(3, 10, 9, 3, 6)]
    [InlineData(0, 12, 9, 0, 9)]
    [InlineData(6, 6, 9, 4, 5)] // tie: the first is cut first
    [InlineData(12, 12, 9, 4, 5)]
    [InlineData(5, 7, 9, 4, 5)]
    // The first started longer and the budget is odd: the longer keeps the odd token, where removing one at a time
    // (ties to the first) would end at 4 + 5.
    [InlineData(7, 5, 9, 5, 4)]
    [InlineData(7, 5, 8, 4, 4)]
    [InlineData(5, 5, 0, 0, 0)]
    public void LongestFirst_Lengths_MatchTokenizers(int n1, int n2, int budget, int keep1, int keep2)
    {
        var a = Enumerable.Range(0, n1).ToList();
        var b = Enumerable.Range(100, n2).ToList();
        PostProcessor.LongestFirst(a, b, budget);
        Assert.Equal(Enumerable.Range(0, keep1), a);
        Assert.Equal(Enumerable.Range(100, keep2), b);
    }

    [Fact]
    public void EncodeForModel_MaxLengthBelowSpecials_ThrowsNamingTheValue()
    {
        var tok = BertPair("small");
        var e = Assert.Throws<UserInputException>(() => tok.EncodeForModel("hello", "world", 2));
        Assert.Contains("max length 2", e.Message);
        Assert.Contains("3 special", e.Message);
        Assert.Contains("max length 1", Assert.Throws<UserInputException>(() => tok.EncodeForModel("hello", null, 1)).Message);
        Assert.Contains("max length 0", Assert.Throws<UserInputException>(() => tok.EncodeForModel("hello", null, 0)).Message);
    }

    [Fact]
    public void Load_NoPostProcessor_IsNotAPairTokenizer()
    {
        var tok = TokenizerLoader.Load(WriteBertJson(Path.Combine(_dir, "plain")));
        Assert.False(tok is ISentencePairTokenizer);
    }

    [Fact]
    public void PairTokenizer_NoPadToken_PadIdErrorNamesTheFix()
    {
        // A template that adds only [CLS], over a vocabulary without [PAD]/<pad> and no config naming one.
        var post = new JsonObject
        {
            ["type"] = "TemplateProcessing",
            ["single"] = new JsonArray(SpecialToken("[CLS]", 0), Sequence("A", 0)),
        };
        string dir = WriteBertJson(Path.Combine(_dir, "nopad"), postProcessor: post);
        string path = Path.Combine(dir, "tokenizer.json");
        var root = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        root["model"]!["vocab"]!.AsObject().Remove("[PAD]");
        root["added_tokens"]!.AsArray().RemoveAt(0);
        File.WriteAllText(path, root.ToJsonString());
        var tok = Assert.IsAssignableFrom<ISentencePairTokenizer>(TokenizerLoader.Load(dir));
        // Without special_tokens the template's [CLS] is found in the vocabulary.
        Assert.Equal(new[] { Cls, Hello }, tok.EncodeForModel("hello", null, 8).Ids);
        Assert.Contains("pad_token", Assert.Throws<UserInputException>(() => tok.PadId).Message);
        Assert.Contains("no pair template", Assert.Throws<UserInputException>(() => tok.EncodeForModel("hello", "world", 8)).Message);
    }

    [Fact]
    public void PostProcessor_Unknown_RefusedByName()
    {
        string dir = WriteBertJson(Path.Combine(_dir, "badpost"), postProcessor: new JsonObject { ["type"] = "Magic" });
        Assert.Contains("'Magic'", Assert.Throws<UserInputException>(() => TokenizerLoader.Load(dir)).Message);
    }
}
