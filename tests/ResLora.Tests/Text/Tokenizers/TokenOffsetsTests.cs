using System.Text;
using System.Text.Json.Nodes;
using ResLora.Tests.Infrastructure;
using ResLora.Text;

namespace ResLora.Tests.Text.Tokenizers;

/// <summary>
/// EncodeWithOffsets: the same ids as Encode, each with the characters it was made from, as Hugging Face tokenizers'
/// offsets (a ▁ prepended or replacing a space belongs to the character it stands for; byte pieces cover their character).
/// </summary>
public sealed class TokenOffsetsTests : IDisposable
{
    private static readonly (string, string)[] ByteMerges =
    {
        ("h", "e"), ("l", "l"), ("ll", "o"), ("he", "llo"), (" ", "w"), ("o", "r"), (" w", "or"), ("l", "d"), (" wor", "ld"),
    };

    private static readonly (string, string)[] SpMerges =
    {
        ("\u2581", "h"), ("l", "l"), ("\u2581h", "e"), ("\u2581he", "ll"), ("\u2581hell", "o"), ("\u2581", "w"), ("o", "r"), ("\u2581w", "or"), ("l", "d"), ("\u2581wor", "ld"),
    };

    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-offsets-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private ITextTokenizer ByteLevel()
    {
        string dir = Path.Combine(_dir, "bl");
        ChatTokenizerFiles.WriteByteLevel(dir, new[] { "<|im_start|>", "<|im_end|>" }, ByteMerges);
        return TokenizerLoader.Load(dir);
    }

    private ITextTokenizer SentencePiece(Action<JsonObject>? edit = null)
    {
        string dir = Path.Combine(_dir, edit is null ? "sp" : "sp2");
        ChatTokenizerFiles.WriteSentencePiece(dir, new[] { "<s>", "</s>" }, new[] { "\u2581", "h", "e", "l", "o", "w", "r", "d" }, SpMerges);
        if (edit is not null)
        {
            string path = Path.Combine(dir, "tokenizer.json");
            var root = (JsonObject)JsonNode.Parse(File.ReadAllText(path))!;
            edit(root);
            File.WriteAllText(path, root.ToJsonString());
        }
        return TokenizerLoader.Load(dir);
    }

    private static (int Start, int End)[] Offsets(ITextTokenizer tok, string text)
    {
        var o = ((ITokenOffsets)tok).EncodeWithOffsets(text);
        Assert.Equal(tok.Encode(text), o.Select(t => t.Id));
        return o.Select(t => (t.Start, t.End)).ToArray();
    }

    [Fact]
    public void ByteLevel_WordsBytesAndSpecials_CoverTheirCharacters()
    {
        var tok = ByteLevel();
        Assert.Equal(new[] { (0, 5), (5, 11) }, Offsets(tok, "hello world"));
        // 'é' is two byte tokens, both covering the one character; an emoji is four covering its surrogate pair.
        Assert.Equal(new[] { (0, 1), (0, 1) }, Offsets(tok, "é"));
        Assert.Equal(new[] { (1, 3), (1, 3), (1, 3), (1, 3) }, Offsets(tok, "a😀").Skip(1));
        Assert.Equal(new[] { (0, 12), (12, 17), (17, 27) }, Offsets(tok, "<|im_start|>hello<|im_end|>"));
        Assert.Equal("Ġworld", ((ITokenOffsets)tok).TokenString(tok.Encode(" world")[0]));
        Assert.True(((ITokenOffsets)tok).IsSpecial(tok.Encode("<|im_end|>")[0]));
        Assert.False(((ITokenOffsets)tok).IsSpecial(tok.Encode("h")[0]));
    }

    [Fact]
    public void SentencePiece_PrependedAndReplacedMetaspaces_BelongToTheirCharacters()
    {
        var tok = SentencePiece();
        Assert.Equal(new[] { (0, 5), (5, 11) }, Offsets(tok, "hello world"));
        // ▁hello ▁ <0xC3> <0xA9>: the ▁ is the space, both byte pieces cover 'é'.
        Assert.Equal(new[] { (0, 5), (5, 6), (6, 7), (6, 7) }, Offsets(tok, "hello é"));
        // "  hello": the prepended ▁ takes the first character's range; the third token is the second space + hello.
        Assert.Equal(new[] { (0, 1), (0, 1), (1, 7) }, Offsets(tok, "  hello"));
        // Each piece between specials gets its own ▁, aligned to the piece's first character.
        Assert.Equal(new[] { (0, 3), (3, 8), (8, 12) }, Offsets(tok, "<s>hello</s>"));
    }

    [Fact]
    public void Metaspace_PreTokenizer_GivesTheSameOffsets()
    {
        var tok = SentencePiece(root =>
        {
            root["normalizer"] = null;
            root["pre_tokenizer"] = new JsonObject { ["type"] = "Metaspace", ["replacement"] = "\u2581", ["prepend_scheme"] = "always", ["split"] = true };
        });
        Assert.Equal(new[] { (0, 5), (5, 11) }, Offsets(tok, "hello world"));
        Assert.Equal(new[] { (0, 5), (5, 6), (6, 7), (6, 7) }, Offsets(tok, "hello é"));
    }

    [Theory]
    [InlineData("Isolated", "ab| |cd", "ab| | |cd")]
    [InlineData("Removed", "ab|cd", "ab|cd")]
    [InlineData("MergedWithPrevious", "ab |cd", "ab | |cd")]
    [InlineData("MergedWithNext", "ab| cd", "ab| | cd")]
    [InlineData("Contiguous", "ab| |cd", "ab|  |cd")]
    // invert: the pattern marks the pieces and the text between matches is the delimiter (o200k's tokenizer.json).
    [InlineData("Isolated", "ab| |cd", "ab| | |cd", true)]
    [InlineData("Removed", " ", " | ", true)]
    [InlineData("MergedWithPrevious", "ab| cd", "ab| | cd", true)]
    [InlineData("MergedWithNext", "ab |cd", "ab | |cd", true)]
    public void SplitPreTokenizer_EachBehaviour_CutsWhereTokenizersDoes(string behavior, string oneSpace, string twoSpaces, bool invert = false)
    {
        // Pieces are made visible by merges that exist only for them ("ab ", " cd", "  "); each piece's tokens cover it.
        string dir = Path.Combine(_dir, behavior + (invert ? "-inverted" : ""));
        ChatTokenizerFiles.WriteSentencePiece(dir, Array.Empty<string>(), new[] { "a", "b", "c", "d", " " },
            new[] { ("a", "b"), ("c", "d"), ("ab", " "), (" ", "cd"), (" ", " ") });
        string path = Path.Combine(dir, "tokenizer.json");
        var root = (JsonObject)JsonNode.Parse(File.ReadAllText(path))!;
        root["normalizer"] = null;
        root["pre_tokenizer"] = new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["String"] = " " }, ["behavior"] = behavior, ["invert"] = invert };
        File.WriteAllText(path, root.ToJsonString());
        var tok = TokenizerLoader.Load(dir);
        foreach (var (text, expected) in new[] { ("ab cd", oneSpace), ("ab  cd", twoSpaces) })
        {
            var pieces = ((ITokenOffsets)tok).EncodeWithOffsets(text).Select(t => text[t.Start..t.End]);
            Assert.Equal(expected, string.Join("|", pieces));
        }
    }

    [Fact]
    public void Bert_LowercasedAccentStrippedAndSplitText_MapsBackToTheOriginal()
    {
        string dir = Path.Combine(_dir, "bert");
        BertTokenizerFiles.WriteBertJson(dir);
        var tok = TokenizerLoader.Load(dir);
        Assert.Equal(new[] { (0, 5), (5, 6), (7, 12), (12, 13) }, Offsets(tok, "Hello, world!"));
        Assert.Equal(new[] { (0, 5) }, Offsets(tok, "HÉllo"));
        Assert.Equal(new[] { (0, 1), (1, 2) }, Offsets(tok, "中国"));
        Assert.Equal(new[] { (1, 3), (3, 6), (6, 10) }, Offsets(tok, " unaffable"));
    }

    [Fact]
    public void RandomText_OffsetsAreOrderedInRange_AndByteLevelPiecesDecodeToTheirText()
    {
        var byteLevel = ByteLevel();
        var sp = SentencePiece();
        var r = new Random(17);
        string[] alphabet = { "h", "e", "l", "o", " ", "w", "r", "d", "é", "\n", "中", "😀", "  ", "<|im_end|>", "<s>", "hello", " world" };
        for (int n = 0; n < 300; n++)
        {
            var sb = new StringBuilder();
            int len = r.Next(0, 16);
            for (int k = 0; k < len; k++) sb.Append(alphabet[r.Next(alphabet.Length)]);
            string s = sb.ToString();
            foreach (var tok in new[] { byteLevel, sp })
            {
                var o = Offsets(tok, s);
                for (int i = 0; i < o.Length; i++)
                {
                    Assert.InRange(o[i].Start, 0, s.Length);
                    Assert.InRange(o[i].End, o[i].Start, s.Length);
                    if (i > 0) Assert.True(o[i].Start >= o[i - 1].Start, $"'{s}': token {i} starts before token {i - 1}");
                }
            }
            // Byte-level tokens that share a range are one character's bytes; together they decode to exactly that text.
            var bo = ((ITokenOffsets)byteLevel).EncodeWithOffsets(s);
            foreach (var group in bo.GroupBy(t => (t.Start, t.End)))
                Assert.Equal(s[group.Key.Start..group.Key.End], byteLevel.Decode(group.Select(t => t.Id), skipSpecialTokens: false));
        }
    }
}
