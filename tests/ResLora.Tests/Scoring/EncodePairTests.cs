using System.Text.Json.Nodes;
using ResLora.Scoring;
using ResLora.Tests.Infrastructure;
using ResLora.Text;
using ResLora.Text.Tokenizers;

namespace ResLora.Tests.Scoring;

/// <summary>
/// lm-eval's <c>_encode_pair</c> by hand on a real GPT-2-style byte-level BPE (ids 0-255 are the bytes) with two merges:
/// " 4" (a space attaches to the word after it, as in GPT-2) and "bc" (a merge across the context/continuation boundary).
/// </summary>
public sealed class EncodePairTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-encodepair-").FullName;
    private readonly ITextTokenizer _tok;
    private readonly int _space4, _bc, _bos, _eos;

    public EncodePairTests()
    {
        var ids = ChatTokenizerFiles.WriteByteLevel(_dir, new[] { "<s>", "</s>" }, new[] { (" ", "4"), ("b", "c") },
            new JsonObject { ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["add_bos_token"] = false });
        _tok = TokenizerLoader.Load(_dir);
        (_space4, _bc, _bos, _eos) = (256, 257, ids["<s>"], ids["</s>"]);
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>Byte ids of ASCII text (ids 0-255 are the bytes in this tokenizer).</summary>
    private static int[] Bytes(string s) => s.Select(c => (int)c).ToArray();

    [Fact]
    public void TrailingSpace_MovesToTheContinuation_SoTheSpaceJoinsTheAnswerWord()
    {
        // "Q: 2+2= 4": GPT-2 pre-tokens Q | : | ␠2 | + | 2 | = | ␠4, and ␠4 is one token (256).
        Assert.Equal(Bytes("Q: 2+2=").Append(_space4), _tok.Encode("Q: 2+2= 4"));
        var (ctx, cont) = EncodePair.Encode(_tok, "Q: 2+2= ", "4");
        Assert.Equal(Bytes("Q: 2+2="), ctx);
        Assert.Equal(new[] { _space4 }, cont);
        // Encoding the two texts apart would have left a lone space in the context and a bare "4" in the continuation.
        Assert.Equal((int)' ', _tok.Encode("Q: 2+2= ")[^1]);
        Assert.Equal(new[] { (int)'4' }, _tok.Encode("4"));
    }

    [Fact]
    public void SeveralTrailingWhiteSpaces_AllMove()
    {
        var (ctx, cont) = EncodePair.Encode(_tok, "x\n ", "4");
        Assert.Equal(new[] { (int)'x' }, ctx);
        Assert.Equal(_tok.Encode("\n 4"), cont);
        Assert.Equal(new[] { (int)'\n', _space4 }, cont);
    }

    [Fact]
    public void ContinuationTokens_AreTheWholeEncodingMinusTheContextsCount()
    {
        // "abcd" is one pre-token: a | bc | d. The context "ab" alone is a | b (2 tokens), so the continuation is what
        // follows the first 2 tokens of the whole: just d. (lm-eval's rule; the "c" went into the merged token.)
        Assert.Equal(new[] { 'a', _bc, 'd' }, _tok.Encode("abcd"));
        var (ctx, cont) = EncodePair.Encode(_tok, "ab", "cd");
        Assert.Equal(new[] { (int)'a', (int)'b' }, ctx);
        Assert.Equal(new[] { (int)'d' }, cont);
    }

    [Fact]
    public void EmptyContext_IsThePrefixToken_BosElseEos()
    {
        var (ctx, cont) = EncodePair.Encode(_tok, "", " 4x");
        Assert.Equal(new[] { _bos }, ctx);
        Assert.Equal(new[] { _space4, (int)'x' }, cont);
        var noBos = new Wrapped(_tok) { Bos = null };
        Assert.Equal(new[] { _eos }, EncodePair.Encode(noBos, "", "4").Context);
        var neither = new Wrapped(_tok) { Bos = null, Eos = Array.Empty<int>() };
        var e = Assert.Throws<UserInputException>(() => EncodePair.Encode(neither, "", "4"));
        Assert.Contains("neither", e.Message);
        // A context of white space only becomes empty once its spaces move: scored after the prefix token too.
        var (wsCtx, wsCont) = EncodePair.Encode(_tok, " ", "4");
        Assert.Equal(new[] { _bos }, wsCtx);
        Assert.Equal(new[] { _space4 }, wsCont);
    }

    [Fact]
    public void AddBosToken_PrefixesTheContextOnly()
    {
        var withBos = new Wrapped(_tok) { AddBos = true };
        var (ctx, cont) = EncodePair.Encode(withBos, "Q: 2+2= ", "4");
        Assert.Equal(Bytes("Q: 2+2=").Prepend(_bos), ctx);
        Assert.Equal(new[] { _space4 }, cont);
    }

    /// <summary>The same tokenizer with other special-token settings.</summary>
    private sealed class Wrapped : ITextTokenizer
    {
        private readonly ITextTokenizer _inner;

        public Wrapped(ITextTokenizer inner)
        {
            _inner = inner;
            Bos = inner.BosTokenId;
            Eos = inner.EosTokenIds;
        }

        public int? Bos { get; init; }
        public IReadOnlyList<int> Eos { get; init; }
        public bool AddBos { get; init; }
        public int VocabSize => _inner.VocabSize;
        public int? BosTokenId => Bos;
        public IReadOnlyList<int> EosTokenIds => Eos;
        public int? PadTokenId => _inner.PadTokenId;
        public bool AddBosToken => AddBos;
        public IReadOnlyList<int> Encode(string text) => _inner.Encode(text);
        public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true) => _inner.Decode(ids, skipSpecialTokens);
    }
}
