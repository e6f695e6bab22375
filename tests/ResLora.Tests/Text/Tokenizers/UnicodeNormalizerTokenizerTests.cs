using System.Text.Json.Nodes;
using ResLora.Text;

namespace ResLora.Tests.Text.Tokenizers;

/// <summary>
/// The NFC, NFKC, NFD and NFKD normalizers of tokenizer.json run through our own Unicode tables: under the build's
/// InvariantGlobalization, string.Normalize returns its input unchanged, so "e" + U+0301 used to miss the "é" token.
/// </summary>
public sealed class UnicodeNormalizerTokenizerTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-nfc-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private const int Unk = 0, E = 1, EAcute = 2, Acute = 3, F = 4, I = 5, Fi = 6, A = 7, ARing = 8, Ga = 9;

    /// <summary>A character-level BPE vocabulary (no merges but f i → fi) behind one normalizer of the given type.</summary>
    private ITextTokenizer Load(string normalizer)
    {
        var vocab = new JsonObject
        {
            ["<unk>"] = Unk, ["e"] = E, ["\u00E9"] = EAcute, ["\u0301"] = Acute, ["f"] = F, ["i"] = I, ["fi"] = Fi,
            ["A"] = A, ["\u00C5"] = ARing, ["\uAC00"] = Ga,
        };
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(),
            ["normalizer"] = new JsonObject { ["type"] = normalizer },
            ["pre_tokenizer"] = null,
            ["decoder"] = null,
            ["model"] = new JsonObject { ["type"] = "BPE", ["unk_token"] = "<unk>", ["vocab"] = vocab, ["merges"] = new JsonArray("f i") },
        };
        string dir = Path.Combine(_dir, normalizer);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), root.ToJsonString());
        return TokenizerLoader.Load(dir);
    }

    [Fact]
    public void Nfc_ComposesDecomposedText_IntoThePrecomposedToken()
    {
        var tok = Load("NFC");
        Assert.Equal(new[] { EAcute }, tok.Encode("e\u0301"));
        Assert.Equal(new[] { EAcute }, tok.Encode("\u00E9"));
        // Å sign (a singleton) and A + ring both become U+00C5; Hangul jamo L V compose to the syllable 가.
        Assert.Equal(new[] { ARing, ARing, Ga }, tok.Encode("\u212BA\u030A\u1100\u1161"));
        // The ligature is not canonically equivalent to "fi": NFC leaves it, and it is unknown.
        Assert.Equal(new[] { Unk }, tok.Encode("\uFB01"));
        // The composed token covers both characters it came from.
        Assert.Equal(new[] { new TokenOffset(EAcute, 0, 2) }, ((ITokenOffsets)tok).EncodeWithOffsets("e\u0301"));
    }

    [Fact]
    public void Nfkc_AlsoFoldsCompatibilityCharacters()
    {
        var tok = Load("NFKC");
        Assert.Equal(new[] { EAcute, Fi }, tok.Encode("e\u0301\uFB01"));
    }

    [Fact]
    public void Nfd_And_Nfkd_Decompose()
    {
        Assert.Equal(new[] { E, Acute }, Load("NFD").Encode("\u00E9"));
        Assert.Equal(new[] { E, Acute, Fi }, Load("NFKD").Encode("\u00E9\uFB01"));
    }
}
