using System.Text.Json.Nodes;
using ResLora.Text;
using static ResLora.Tests.Text.Tokenizers.BertTokenizerFiles;

namespace ResLora.Tests.Text.Tokenizers;

/// <summary>
/// BERT's WordPiece tokenizer (tokenizer.json and vocab.txt folders) against ids worked out by hand from Hugging Face
/// tokenizers' algorithm over the tiny vocabulary in <see cref="BertTokenizerFiles"/>.
/// </summary>
public sealed class WordPieceTokenizerTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-wp-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private ITextTokenizer Bert(string name, JsonObject? normalizer = null, JsonObject? preTokenizer = null) =>
        TokenizerLoader.Load(WriteBertJson(Path.Combine(_dir, name), normalizer, preTokenizer));

    [Fact]
    public void BertNormalizer_LowercaseWithStripAccentsNull_StripsAccents()
    {
        var tok = Bert("lower");
        // NFD "He\u0301llo", Mn U+0301 dropped, lowercased: "hello".
        Assert.Equal(new[] { Hello }, tok.Encode("Héllo"));
        Assert.Equal(new[] { Hello }, tok.Encode("HE\u0301LLO"));
    }

    [Fact]
    public void BertNormalizer_StripAccentsFalse_KeepsAccents()
    {
        var tok = Bert("keep", BertNormalizer(lowercase: true, stripAccents: false));
        Assert.Equal(new[] { HelloAccent }, tok.Encode("Héllo"));
        // Neither lowercased nor stripped: "Héllo" is not in the vocabulary.
        var cased = Bert("cased", BertNormalizer(lowercase: false));
        Assert.Equal(new[] { Unk }, cased.Encode("Héllo"));
        Assert.Equal(new[] { HelloAccent }, cased.Encode("héllo"));
    }

    [Fact]
    public void NormalizerSequence_NfdLowercaseStripAccents_StripsAccents()
    {
        // The DistilBERT-style spelling of the same thing: Sequence[NFD, Lowercase, StripAccents].
        var seq = new JsonObject
        {
            ["type"] = "Sequence",
            ["normalizers"] = new JsonArray(new JsonObject { ["type"] = "NFD" }, new JsonObject { ["type"] = "Lowercase" }, new JsonObject { ["type"] = "StripAccents" }),
        };
        Assert.Equal(new[] { Hello, World }, Bert("seq", seq).Encode("Héllo WÖRLD"));
    }

    [Fact]
    public void BertPreTokenizer_Punctuation_EachCharIsItsOwnToken()
    {
        var tok = Bert("punct");
        Assert.Equal(new[] { Don, Apostrophe, T, Bang }, tok.Encode("don't!"));
        // ASCII symbols that Unicode calls Sc/Sm count as punctuation (33-47, 58-64, 91-96, 123-126); so does Unicode Pi.
        Assert.Equal(new[] { A, Dollar, B }, tok.Encode("a$b"));
        Assert.Equal(new[] { Guillemet, Hello }, tok.Encode("«hello"));
        Assert.Equal(new[] { Hello, Comma, World, Dot }, tok.Encode("hello,world."));
    }

    [Fact]
    public void BertNormalizer_ChineseChars_AreSplitApart()
    {
        var tok = Bert("cjk");
        Assert.Equal(new[] { Zhong, Guo }, tok.Encode("中国"));
        Assert.Equal(new[] { Hello, Zhong, World }, tok.Encode("hello中world"));
        // CJK extension B (outside the BMP) is one character, not two surrogate halves.
        Assert.Equal(new[] { ExtB, ExtB }, tok.Encode("\U00020000\U00020000"));
        // Without handle_chinese_chars "中国" is one word: 中 matches, "##国" does not, so the whole word is [UNK].
        var off = Bert("cjk-off", BertNormalizer(chinese: false));
        Assert.Equal(new[] { Unk }, off.Encode("中国"));
    }

    [Fact]
    public void WordPiece_UnknownWord_IsOneUnk()
    {
        var tok = Bert("unk");
        Assert.Equal(new[] { Hello, Unk, World }, tok.Encode("hello qwerty world"));
        // A partial match is not kept: "un" + "##aff" match but "##x" does not, so the word is one [UNK].
        Assert.Equal(new[] { Unk }, tok.Encode("unaffx"));
    }

    [Fact]
    public void WordPiece_WordOver100Chars_IsOneUnk()
    {
        var tok = Bert("long");
        // 100 chars: "a" then 99 × "##a".
        var hundred = tok.Encode(new string('a', 100));
        Assert.Equal(100, hundred.Count);
        Assert.Equal(A, hundred[0]);
        Assert.All(hundred.Skip(1), id => Assert.Equal(ContA, id));
        Assert.Equal(new[] { Unk }, tok.Encode(new string('a', 101)));
        Assert.Equal(new[] { Hello, Unk, Hello }, tok.Encode("hello " + new string('a', 150) + " hello"));
    }

    [Fact]
    public void WordPiece_ContinuationPieces_LongestMatchFirst()
    {
        var tok = Bert("cont");
        Assert.Equal(new[] { Un, Aff, Able }, tok.Encode("unaffable"));
        Assert.Equal(new[] { Un, Aff, Able }, tok.Encode("UNAFFABLE"));
    }

    [Fact]
    public void BertNormalizer_ControlChars_AreRemovedAndWhitespaceSplits()
    {
        var tok = Bert("ctrl");
        // NUL (Cc), soft hyphen (Cf) and U+FFFD are dropped inside the word; tab and ideographic space become spaces.
        Assert.Equal(new[] { Hello }, tok.Encode("hel\0l\u00ADo\uFFFD"));
        Assert.Equal(new[] { Hello, World }, tok.Encode("hello\tworld\u0007"));
        Assert.Equal(new[] { Hello, World }, tok.Encode("hello\u3000\r\nworld"));
        // Without clean_text the bell stays in the word, which then has no piece.
        var raw = Bert("ctrl-off", BertNormalizer(clean: false));
        Assert.Equal(new[] { Unk }, raw.Encode("hello\u0007"));
    }

    [Fact]
    public void WhitespacePreTokenizers_SplitAsTokenizersDoes()
    {
        // Whitespace = \w+|[^\w\s]+ ; WhitespaceSplit = split on whitespace only.
        var ws = Bert("ws", preTokenizer: new JsonObject { ["type"] = "Whitespace" });
        Assert.Equal(new[] { It, Apostrophe, S, Go }, ws.Encode("it's  go"));
        var split = Bert("wss", preTokenizer: new JsonObject { ["type"] = "WhitespaceSplit" });
        Assert.Equal(new[] { DontWhole, Go }, split.Encode("don't \t go"));
    }

    [Fact]
    public void Decode_WordPiece_StripsPrefixAndCleansUp()
    {
        var tok = Bert("dec");
        Assert.Equal("unaffable", tok.Decode(new[] { Cls, Un, Aff, Able, Sep }));
        Assert.Equal("[CLS] unaffable [SEP]", tok.Decode(new[] { Cls, Un, Aff, Able, Sep }, skipSpecialTokens: false));
        // cleanup glues " ," and " ." to the previous word (per token, as tokenizers does).
        Assert.Equal("hello, world.", tok.Decode(tok.Encode("Hello , world .")));
        // The decoder works token by token, so " ' " spanning three tokens is not glued back (tokenizers gives the same).
        Assert.Equal("don ' t!", tok.Decode(new[] { Don, Apostrophe, T, Bang }));
        // Only tokens after the first lose "##" (decoders/wordpiece.rs leaves the first as it is).
        Assert.Equal("##affable", tok.Decode(new[] { Aff, Able }));
        Assert.Equal(Vocab.Length, tok.VocabSize);
    }

    [Fact]
    public void Encode_SpecialsWrittenInText_AreRecognised_AndNoBosEos()
    {
        var tok = Bert("spec");
        Assert.Equal(new[] { Cls, Hello, Sep }, tok.Encode("[CLS] hello[SEP]"));
        Assert.Null(tok.BosTokenId);
        Assert.Empty(tok.EosTokenIds);
        Assert.False(tok.AddBosToken);
    }

    private string WriteVocabTxt(string name, string? config, string newline = "\n")
    {
        string dir = Path.Combine(_dir, name);
        Directory.CreateDirectory(dir);
        // Vocab plus cased "Héllo" and alternative specials at the end.
        var lines = Vocab.Concat(new[] { "Héllo", "<cls>", "<sep>" });
        File.WriteAllText(Path.Combine(dir, "vocab.txt"), string.Join(newline, lines) + newline);
        if (config is not null) File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), config);
        return dir;
    }

    private const int CasedHello = 35, AltCls = 36, AltSep = 37;

    [Fact]
    public void VocabTxtFolder_DoLowerCaseDefaultAndTrue_Lowercases()
    {
        foreach (var config in new[] { null, "{\"do_lower_case\": true, \"model_max_length\": 512}" })
        {
            string dir = WriteVocabTxt(config is null ? "vt-default" : "vt-true", config);
            var tok = TokenizerLoader.Load(dir);
            Assert.Equal(new[] { Hello, Un, Aff, Able, Don, Apostrophe, T }, tok.Encode("Héllo unaffable don't"));
            var pair = Assert.IsAssignableFrom<ISentencePairTokenizer>(tok);
            var enc = pair.EncodeForModel("Hello", "WORLD!", 16);
            Assert.Equal(new[] { Cls, Hello, Sep, World, Bang, Sep }, enc.Ids);
            Assert.Equal(new[] { 0, 0, 0, 1, 1, 1 }, enc.TypeIds);
            Assert.Equal(Pad, pair.PadId);
            Assert.Equal(Pad, tok.PadTokenId);
            Assert.Null(tok.BosTokenId);
            Assert.Empty(tok.EosTokenIds);
            Assert.False(tok.AddBosToken);
            Assert.Equal(Vocab.Length + 3, tok.VocabSize);
            Assert.Equal("hello unaffable", tok.Decode(tok.Encode("Hello unaffable")));
            Assert.Equal(config is null ? null : 512, TokenizerLoader.ReadModelMaxLength(dir));
        }
    }

    [Fact]
    public void VocabTxtFolder_DoLowerCaseFalse_KeepsCaseAndAccents()
    {
        // strip_accents absent follows do_lower_case, so accents stay too; CRLF line ends read like LF.
        string dir = WriteVocabTxt("vt-false", "{\"do_lower_case\": false, \"model_max_length\": 1000000000000000019884624838656}", "\r\n");
        var tok = TokenizerLoader.Load(dir);
        Assert.Equal(new[] { CasedHello, HelloAccent, Unk }, tok.Encode("Héllo héllo Hello"));
        Assert.Null(TokenizerLoader.ReadModelMaxLength(dir));
    }

    [Fact]
    public void VocabTxtFolder_ConfigNamesSpecials_UsesThem()
    {
        string dir = WriteVocabTxt("vt-named", "{\"cls_token\": \"<cls>\", \"sep_token\": {\"content\": \"<sep>\", \"__type\": \"AddedToken\"}}");
        var pair = Assert.IsAssignableFrom<ISentencePairTokenizer>(TokenizerLoader.Load(dir));
        var enc = pair.EncodeForModel("hello", "world", 8);
        Assert.Equal(new[] { AltCls, Hello, AltSep, World, AltSep }, enc.Ids);
        Assert.Equal(new[] { 0, 0, 0, 1, 1 }, enc.TypeIds);
    }

    [Fact]
    public void VocabTxtFolder_MissingSpecial_ClearError()
    {
        string dir = WriteVocabTxt("vt-bad", "{\"cls_token\": \"<nope>\"}");
        var e = Assert.Throws<UserInputException>(() => TokenizerLoader.Load(dir));
        Assert.Contains("cls_token '<nope>'", e.Message);
    }
}
