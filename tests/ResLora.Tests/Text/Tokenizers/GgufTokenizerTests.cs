using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using ResLora.IO.Gguf;
using ResLora.Tests.Infrastructure;
using ResLora.Tests.Models;
using ResLora.Text;
using Xunit.Abstractions;

namespace ResLora.Tests.Text.Tokenizers;

/// <summary>
/// The tokenizer half of <c>convert gguf</c>: a vocabulary written as convert_hf_to_gguf writes it comes back as a
/// tokenizer.json that encodes 120+ varied texts to the same ids as the original — a byte-level BPE tokenizer.json
/// (Llama 3 and Qwen2 pre-tokenizers, control and user-defined added tokens), and a SentencePiece vocabulary with scores
/// and byte tokens, checked against an independent implementation of llama.cpp's SentencePiece tokenizer (merge the
/// adjacent pair whose concatenation is the highest-scoring token, leftmost first; unknown symbols as &lt;0xXX&gt;).
/// </summary>
public sealed class GgufTokenizerTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = TestDirs.InMemory("reslora-ggtok-");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private const string Llama3 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    private const string Qwen2 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private static char[] ByteChars()
    {
        var map = new char[256];
        int extra = 0;
        for (int b = 0; b < 256; b++)
            map[b] = (b is >= '!' and <= '~') || (b is >= 0xA1 and <= 0xAC) || b >= 0xAE ? (char)b : (char)(256 + extra++);
        return map;
    }

    private string RebuildFrom(GgufFixture.Vocab v, string name)
    {
        string path = Path.Combine(_dir, name + ".gguf"), dir = Path.Combine(_dir, name);
        var w = new GgufWriter();
        w.Set("general.architecture", "llama");
        GgufFixture.SetVocab(w, v);
        w.Write(path);
        Directory.CreateDirectory(dir);
        using var g = GgufFile.Open(path);
        GgufTokenizerFiles.Write(g, dir, v.Tokens.Count, 128);
        return dir;
    }

    [Theory]
    [InlineData("llama-bpe")]
    [InlineData("qwen2")]
    public void ByteLevelBpe_RebuiltTokenizer_EncodesLikeTheOriginal(string pre)
    {
        var bytes = ByteChars();
        string Bl(string s) => new(Encoding.UTF8.GetBytes(s).Select(b => bytes[b]).ToArray());
        var re = new Regex(pre == "qwen2" ? Qwen2 : Llama3);
        var merges = GgufFixture.TrainBpe(re.Matches(GgufFixture.Corpus).Select(m => Bl(m.Value).Select(c => c.ToString()).ToList()), 150);
        var tokens = bytes.Select(c => c.ToString()).ToList();
        foreach (var (l, r) in merges) if (!tokens.Contains(l + r)) tokens.Add(l + r);
        int normal = tokens.Count;
        tokens.AddRange(new[] { "<|begin|>", "<|end|>", "<tool>" });
        var types = tokens.Select((_, i) => i < normal ? GgufTokenizerFiles.Normal : i == normal + 2 ? GgufTokenizerFiles.UserDefined : GgufTokenizerFiles.Control).ToList();

        // The original tokenizer.json (as Meta's / Qwen's are laid out).
        string orig = Path.Combine(_dir, "orig");
        Directory.CreateDirectory(orig);
        var vocab = new JsonObject();
        for (int i = 0; i < tokens.Count; i++) vocab[tokens[i]] = i;
        var added = new JsonArray();
        for (int i = normal; i < tokens.Count; i++)
            added.Add(new JsonObject { ["id"] = i, ["content"] = tokens[i], ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = types[i] == GgufTokenizerFiles.Control });
        var root = new JsonObject
        {
            ["added_tokens"] = added,
            ["normalizer"] = pre == "qwen2" ? new JsonObject { ["type"] = "NFC" } : null,
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = pre == "qwen2" ? Qwen2 : Llama3 }, ["behavior"] = "Isolated", ["invert"] = false },
                    new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false }),
            },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel" },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["ignore_merges"] = pre == "llama-bpe", ["vocab"] = vocab,
                ["merges"] = new JsonArray(merges.Select(m => (JsonNode)new JsonArray(m.A, m.B)).ToArray()),
            },
        };
        File.WriteAllText(Path.Combine(orig, "tokenizer.json"), root.ToJsonString());
        var v = new GgufFixture.Vocab("gpt2", tokens, types, Merges: merges.Select(m => $"{m.A} {m.B}").ToList(), Pre: pre, Bos: normal, Eos: normal + 1, AddBos: false);
        var a = TokenizerLoader.Load(orig);
        var b2 = TokenizerLoader.Load(RebuildFrom(v, "rebuilt"));
        var texts = GgufFixture.Texts(120, seed: 1);
        texts.AddRange(new[] { "<|begin|>hello<|end|>", "call <tool> now", "x<|end|> <|begin|>" });
        int same = texts.Count(t => a.Encode(t).SequenceEqual(b2.Encode(t)));
        int merged = texts.Sum(t => b2.Encode(t).Count(id => id >= 256 && id < normal));
        output.WriteLine($"{pre}: {same}/{texts.Count} texts encode identically ({merges.Count} merges; {merged} merged tokens used)");
        foreach (var t in texts) Assert.Equal(a.Encode(t), b2.Encode(t));
        Assert.True(merged > 200);
        Assert.Equal(normal, b2.BosTokenId);
        Assert.Equal(new[] { normal + 1 }, b2.EosTokenIds);
        Assert.Equal(texts[5], b2.Decode(b2.Encode(texts[5])));
    }

    [Fact]
    public void SentencePiece_RebuiltTokenizer_EncodesLikeLlamaCppsSpm()
    {
        // A SentencePiece-style BPE vocabulary: <unk>, <s>, </s>, 256 byte pieces, learned pieces (score = −merge index), then characters.
        var words = GgufFixture.Corpus.Split(' ').Select(w => ("\u2581" + w).Select(c => c.ToString()).ToList());
        var merges = GgufFixture.TrainBpe(words, 200);
        var tokens = new List<string> { "<unk>", "<s>", "</s>" };
        var types = new List<int> { GgufTokenizerFiles.Unknown, GgufTokenizerFiles.Control, GgufTokenizerFiles.Control };
        var scores = new List<float> { 0, 0, 0 };
        for (int b = 0; b < 256; b++) { tokens.Add($"<0x{b:X2}>"); types.Add(GgufTokenizerFiles.Byte); scores.Add(0); }
        foreach (var (a, b) in merges)
            if (!tokens.Contains(a + b)) { tokens.Add(a + b); types.Add(GgufTokenizerFiles.Normal); scores.Add(-tokens.Count); }
        foreach (char c in ("\u2581" + GgufFixture.Corpus.Replace(" ", "")).Distinct())
            if (!tokens.Contains(c.ToString())) { tokens.Add(c.ToString()); types.Add(GgufTokenizerFiles.Normal); scores.Add(-1000 - tokens.Count); }
        var v = new GgufFixture.Vocab("llama", tokens, types, scores, Unk: 0);
        var tok = TokenizerLoader.Load(RebuildFrom(v, "spm"));
        var texts = GgufFixture.Texts(150, seed: 2);
        int same = 0, bytePieces = 0, merged = 0;
        foreach (var t in texts)
        {
            var expected = Spm(tokens, types, scores, t);
            var got = tok.Encode(t);
            if (expected.SequenceEqual(got)) same++;
            bytePieces += got.Count(id => id is >= 3 and < 259);
            merged += got.Count(id => id >= 259 && tokens[id].Length > 1);
        }
        output.WriteLine($"SentencePiece: {same}/{texts.Count} texts encode as llama.cpp's SPM algorithm does ({tokens.Count} tokens; {merged} merged pieces, {bytePieces} byte pieces used)");
        foreach (var t in texts) Assert.Equal(Spm(tokens, types, scores, t), tok.Encode(t));
        Assert.True(merged > 200 && bytePieces > 20);
        Assert.Equal(1, tok.BosTokenId);
        Assert.True(tok.AddBosToken);
        Assert.Equal(texts[1], tok.Decode(tok.Encode(texts[1])));
    }

    /// <summary>llama.cpp's SentencePiece tokenization (llm_tokenizer_spm), written from its description for this test.</summary>
    private static List<int> Spm(IReadOnlyList<string> tokens, IReadOnlyList<int> types, IReadOnlyList<float> scores, string text)
    {
        var ids = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < tokens.Count; i++) ids.TryAdd(tokens[i], i);
        string s = (" " + text).Replace(" ", "\u2581");
        var sym = new List<string>();
        for (int i = 0; i < s.Length; i++)
            if (char.IsHighSurrogate(s[i])) { sym.Add(s.Substring(i, 2)); i++; }
            else sym.Add(s[i].ToString());
        while (true)
        {
            int best = -1;
            float bestScore = float.NegativeInfinity;
            for (int i = 0; i + 1 < sym.Count; i++)
                if (ids.TryGetValue(sym[i] + sym[i + 1], out int id) && scores[id] > bestScore) { best = i; bestScore = scores[id]; }
            if (best < 0) break;
            sym[best] += sym[best + 1];
            sym.RemoveAt(best + 1);
        }
        var result = new List<int>();
        foreach (var p in sym)
            if (ids.TryGetValue(p, out int id)) result.Add(id);
            else result.AddRange(Encoding.UTF8.GetBytes(p).Select(b => ids[$"<0x{b:X2}>"]));
        return result;
    }
}
