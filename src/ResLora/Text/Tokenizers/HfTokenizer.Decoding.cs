using System.Text;
using System.Text.Json.Nodes;

namespace ResLora.Text.Tokenizers;

/// <summary>The decoder chain of tokenizer.json (Replace, ByteFallback, Fuse, Strip, ByteLevel, Metaspace, WordPiece): ids back to text.</summary>
internal sealed partial class HfTokenizer
{
    private void AddDecoder(JsonObject d)
    {
        string t = (string?)d["type"] ?? "";
        if (t == "Sequence") { foreach (var x in (JsonArray)d["decoders"]!) AddDecoder((JsonObject)x!); return; }
        if (t is not ("Replace" or "ByteFallback" or "Fuse" or "Strip" or "ByteLevel" or "Metaspace" or "WordPiece"))
            throw Bad("decoder.type", $"'{t}' is not supported (supported: Sequence, Replace, ByteFallback, Fuse, Strip, ByteLevel, Metaspace, WordPiece)");
        _decoders.Add(d);
    }

    public string Decode(IEnumerable<int> ids, bool skipSpecial)
    {
        var tokens = new List<string>();
        foreach (int id in ids)
        {
            if (id < 0 || id >= _idToToken.Length || _idToToken[id] is null) throw new UserInputException($"token id {id} is not in the vocabulary (size {VocabSize}).");
            if (skipSpecial && IsSpecial(id)) continue;
            tokens.Add(_idToToken[id]);
        }
        foreach (var d in _decoders) tokens = ApplyDecoder(d, tokens);
        return string.Concat(tokens);
    }

    private List<string> ApplyDecoder(JsonObject d, List<string> tokens)
    {
        switch ((string)d["type"]!)
        {
            case "Replace":
                {
                    var (re, content) = ReplacePattern(d, "decoder");
                    return tokens.Select(t => re.Replace(t, content)).ToList();
                }
            case "Fuse": return new List<string> { string.Concat(tokens) };
            case "Strip":
                {
                    string c = (string?)d["content"] ?? " ";
                    int start = (int?)d["start"] ?? 0, stop = (int?)d["stop"] ?? 0;
                    return tokens.Select(t =>
                    {
                        int a = 0, b = t.Length;
                        for (int i = 0; i < start && a < b && string.CompareOrdinal(t, a, c, 0, c.Length) == 0; i++) a += c.Length;
                        for (int i = 0; i < stop && b - c.Length >= a && string.CompareOrdinal(t, b - c.Length, c, 0, c.Length) == 0; i++) b -= c.Length;
                        return t[a..b];
                    }).ToList();
                }
            case "ByteFallback":
                {
                    var outp = new List<string>();
                    var bytes = new List<byte>();
                    void Flush()
                    {
                        if (bytes.Count == 0) return;
                        var arr = bytes.ToArray();
                        try { outp.Add(new UTF8Encoding(false, true).GetString(arr)); }
                        catch (DecoderFallbackException) { foreach (var _ in arr) outp.Add("\uFFFD"); }
                        bytes.Clear();
                    }
                    foreach (var t in tokens)
                    {
                        if (t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>' && byte.TryParse(t.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b)) bytes.Add(b);
                        else { Flush(); outp.Add(t); }
                    }
                    Flush();
                    return outp;
                }
            case "ByteLevel":
                {
                    var bytes = new List<byte>();
                    foreach (var t in tokens)
                        foreach (char ch in t)
                        {
                            if (ByteLevelAlphabet.CharToByte.TryGetValue(ch, out byte b)) bytes.Add(b);
                            else bytes.AddRange(Encoding.UTF8.GetBytes(ch.ToString()));
                        }
                    return new List<string> { Encoding.UTF8.GetString(bytes.ToArray()) };
                }
            case "Metaspace":
                {
                    string rep = (string?)d["replacement"] ?? "\u2581";
                    string scheme = (string?)d["prepend_scheme"] ?? (((bool?)d["add_prefix_space"] ?? true) ? "always" : "never");
                    return tokens.Select((t, i) =>
                    {
                        string s = t.Replace(rep, " ", StringComparison.Ordinal);
                        return i == 0 && scheme != "never" && s.StartsWith(' ') ? s[1..] : s;
                    }).ToList();
                }
            case "WordPiece":
                {
                    // decoders/wordpiece.rs: every token but the first loses one leading prefix or gains a leading space (a
                    // first token keeps its "##"); cleanup then glues punctuation and English contractions back on.
                    string prefix = (string?)d["prefix"] ?? "##";
                    bool cleanup = (bool?)d["cleanup"] ?? true;
                    return tokens.Select((t, i) =>
                    {
                        if (i > 0) t = t.StartsWith(prefix, StringComparison.Ordinal) ? t[prefix.Length..] : " " + t;
                        return cleanup ? WordPieceCleanup(t) : t;
                    }).ToList();
                }
            default: throw new InvalidOperationException("unreachable");
        }
    }

    private static string WordPieceCleanup(string s) => s
        .Replace(" .", ".", StringComparison.Ordinal).Replace(" ?", "?", StringComparison.Ordinal).Replace(" !", "!", StringComparison.Ordinal)
        .Replace(" ,", ",", StringComparison.Ordinal).Replace(" ' ", "'", StringComparison.Ordinal).Replace(" n't", "n't", StringComparison.Ordinal)
        .Replace(" 'm", "'m", StringComparison.Ordinal).Replace(" do not", " don't", StringComparison.Ordinal).Replace(" 's", "'s", StringComparison.Ordinal)
        .Replace(" 've", "'ve", StringComparison.Ordinal).Replace(" 're", "'re", StringComparison.Ordinal);
}
