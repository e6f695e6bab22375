using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace ResLora.IO.Tokenizers;

/// <summary>A token from tokenizer.json's <c>added_tokens</c>: matched in raw text before normal tokenization.</summary>
internal sealed record AddedToken(int Id, string Content, bool Special, bool Lstrip, bool Rstrip, bool Normalized, bool SingleWord);

/// <summary>
/// A Hugging Face <c>tokenizer.json</c> with a BPE or WordPiece model, run the way the Rust <c>tokenizers</c> library
/// runs it: added tokens split the text first; each remaining piece is normalized, pre-tokenized and encoded by the
/// model; decoding runs the decoder chain over the token strings. Covers the SentencePiece-style family (Llama 2,
/// TinyLlama, Mistral: Prepend/Replace normalizers or a Metaspace pre-tokenizer, byte fallback), the byte-level family
/// (GPT-2, RoBERTa, Llama 3, Qwen2: Split + ByteLevel) and BERT (BertNormalizer, BertPreTokenizer, WordPiece). The
/// post-processor (specials around one text or a pair) is read into <see cref="PostProcessor"/>. Unsupported components
/// are refused by name, never silently skipped.
/// </summary>
internal sealed class HfTokenizer
{
    private readonly ITokenModel _model;
    private readonly string[] _idToToken;
    private readonly Dictionary<string, int> _vocab;
    private readonly List<AddedToken> _added;
    private readonly Dictionary<int, AddedToken> _addedById;
    private readonly List<Func<string, string>> _normalizers = new();
    private readonly List<Func<List<string>, bool, List<string>>> _preTokenizers = new();
    private readonly List<JsonObject> _decoders = new();
    private readonly string _source;

    public int VocabSize { get; }

    /// <summary>The post-processor that adds specials around one text or a pair; null when the file defines none.</summary>
    public PostProcessor? PostProcessor { get; }

    /// <summary><c>padding.pad_id</c> when the file enables padding.</summary>
    public int? PaddingId { get; }

    public HfTokenizer(JsonObject root, string source)
    {
        _source = source;
        var model = root["model"] as JsonObject ?? throw Bad("model", "missing");
        string type = (string?)model["type"] ?? "BPE";
        if (type is not ("BPE" or "WordPiece")) throw Bad("model.type", $"'{type}' is not supported (supported: BPE for the Llama, Mistral, Qwen2, GPT-2 and RoBERTa families; WordPiece for BERT)");
        if (type == "BPE" && model["continuing_subword_prefix"] is JsonValue csp && ((string?)csp)?.Length > 0) throw Bad("model.continuing_subword_prefix", "is not supported for BPE");
        if (model["end_of_word_suffix"] is JsonValue ews && ((string?)ews)?.Length > 0) throw Bad("model.end_of_word_suffix", "is not supported");
        _vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (k, v) in model["vocab"] as JsonObject ?? throw Bad("model.vocab", "missing")) _vocab[k] = (int)v!;
        var merges = new List<(string, string)>();
        foreach (var m in model["merges"] as JsonArray ?? new JsonArray())
        {
            if (m is JsonArray pair && pair.Count == 2) merges.Add(((string)pair[0]!, (string)pair[1]!));
            else if (m is JsonValue s && ((string?)s) is { } str)
            {
                int sp = str.IndexOf(' ', 1);
                if (sp < 0) throw Bad("model.merges", $"entry '{str}' is not 'a b'");
                merges.Add((str[..sp], str[(sp + 1)..]));
            }
            else throw Bad("model.merges", "entries must be \"a b\" strings or [a, b] pairs");
        }
        _added = new List<AddedToken>();
        foreach (var a in root["added_tokens"] as JsonArray ?? new JsonArray())
        {
            var o = (JsonObject)a!;
            _added.Add(new AddedToken((int)o["id"]!, (string)o["content"]!, (bool?)o["special"] ?? false, (bool?)o["lstrip"] ?? false, (bool?)o["rstrip"] ?? false, (bool?)o["normalized"] ?? false, (bool?)o["single_word"] ?? false));
        }
        _addedById = _added.ToDictionary(a => a.Id);
        _added.Sort((x, y) => y.Content.Length.CompareTo(x.Content.Length));
        int max = Math.Max(_vocab.Count == 0 ? -1 : _vocab.Values.Max(), _added.Count == 0 ? -1 : _added.Max(a => a.Id));
        VocabSize = max + 1;
        _idToToken = new string[VocabSize];
        foreach (var (k, v) in _vocab) _idToToken[v] = k;
        foreach (var a in _added) _idToToken[a.Id] = a.Content;
        _model = type == "WordPiece"
            ? new WordPieceModel(_vocab, (string?)model["unk_token"] ?? "[UNK]", (string?)model["continuing_subword_prefix"] ?? "##", (int?)model["max_input_chars_per_word"] ?? 100, source)
            : new BpeModel(_vocab, merges, (string?)model["unk_token"], (bool?)model["byte_fallback"] ?? false, (bool?)model["ignore_merges"] ?? false, source);
        if (root["normalizer"] is JsonObject n) AddNormalizer(n);
        if (root["pre_tokenizer"] is JsonObject p) AddPreTokenizer(p);
        if (root["decoder"] is JsonObject d) AddDecoder(d);
        PostProcessor = PostProcessor.Parse(root["post_processor"] as JsonObject, TokenId, source);
        if (root["padding"] is JsonObject pad && pad["pad_id"] is JsonValue pid)
        {
            PaddingId = (int)pid;
            if (PaddingId < 0 || PaddingId >= VocabSize) throw Bad("padding.pad_id", $"{PaddingId} is outside the vocabulary (size {VocabSize})");
        }
    }

    private UserInputException Bad(string field, string what) => new($"{_source}: '{field}' {what}.");

    public bool IsSpecial(int id) => _addedById.TryGetValue(id, out var a) && a.Special;

    public int? TokenId(string token) => _vocab.TryGetValue(token, out int id) ? id : _added.FirstOrDefault(a => a.Content == token)?.Id;

    private void AddNormalizer(JsonObject n)
    {
        string t = (string?)n["type"] ?? "";
        switch (t)
        {
            case "Sequence": foreach (var x in (JsonArray)n["normalizers"]!) AddNormalizer((JsonObject)x!); break;
            case "Prepend": { string s = (string)n["prepend"]!; _normalizers.Add(x => x.Length == 0 ? x : s + x); break; }
            case "Replace": { var (pattern, content) = ReplacePattern(n, "normalizer"); _normalizers.Add(x => pattern.Replace(x, content)); break; }
            case "NFC": _normalizers.Add(x => x.Normalize(NormalizationForm.FormC)); break;
            case "NFD": _normalizers.Add(UnicodeNfd.Decompose); break; // string.Normalize is a no-op under InvariantGlobalization
            case "NFKC": _normalizers.Add(x => x.Normalize(NormalizationForm.FormKC)); break;
            case "NFKD": _normalizers.Add(x => x.Normalize(NormalizationForm.FormKD)); break;
            case "Lowercase": _normalizers.Add(BertText.Lowercase); break;
            case "StripAccents": _normalizers.Add(BertText.DropNonSpacingMarks); break; // normalizers/strip.rs: no NFD of its own
            case "BertNormalizer":
                {
                    bool clean = (bool?)n["clean_text"] ?? true, chinese = (bool?)n["handle_chinese_chars"] ?? true, lower = (bool?)n["lowercase"] ?? true;
                    // strip_accents null (the usual value) means "strip when lowercasing", as in tokenizers' deserializer.
                    bool strip = (bool?)n["strip_accents"] ?? lower;
                    _normalizers.Add(x => BertText.Normalize(x, clean, chinese, strip, lower));
                    break;
                }
            default: throw Bad("normalizer.type", $"'{t}' is not supported (supported: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, BertNormalizer)");
        }
    }

    private (Regex Pattern, string Content) ReplacePattern(JsonObject n, string where)
    {
        var p = n["pattern"] as JsonObject ?? throw Bad($"{where}.pattern", "missing");
        string content = (string?)n["content"] ?? "";
        if (p["String"] is JsonValue s) return (new Regex(Regex.Escape((string)s!), RegexOptions.CultureInvariant), content.Replace("$", "$$"));
        if (p["Regex"] is JsonValue r) return (new Regex((string)r!, RegexOptions.CultureInvariant), content.Replace("$", "$$"));
        throw Bad($"{where}.pattern", "needs String or Regex");
    }

    // GPT-2's pre-tokenization pattern (tokenizers' ByteLevel with use_regex).
    private const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private void AddPreTokenizer(JsonObject p)
    {
        string t = (string?)p["type"] ?? "";
        switch (t)
        {
            case "Sequence": foreach (var x in (JsonArray)p["pretokenizers"]!) AddPreTokenizer((JsonObject)x!); break;
            case "ByteLevel":
                {
                    bool prefix = (bool?)p["add_prefix_space"] ?? false, useRegex = (bool?)p["use_regex"] ?? true;
                    var re = new Regex(Gpt2Pattern, RegexOptions.CultureInvariant);
                    _preTokenizers.Add((pieces, first) =>
                    {
                        var outp = new List<string>();
                        for (int i = 0; i < pieces.Count; i++)
                        {
                            string s = pieces[i];
                            if (prefix && i == 0 && !s.StartsWith(' ')) s = " " + s;
                            if (useRegex) foreach (Match m in re.Matches(s)) outp.Add(ByteLevelAlphabet.Encode(m.Value));
                            else outp.Add(ByteLevelAlphabet.Encode(s));
                        }
                        return outp;
                    });
                    break;
                }
            case "Split":
                {
                    var (re, _) = ReplacePattern(new JsonObject { ["pattern"] = p["pattern"]!.DeepClone(), ["content"] = "" }, "pre_tokenizer");
                    string behavior = (string?)p["behavior"] ?? "Isolated";
                    if ((bool?)p["invert"] ?? false) throw Bad("pre_tokenizer.invert", "true is not supported");
                    _preTokenizers.Add((pieces, _) => pieces.SelectMany(s => Split(s, re, behavior)).ToList());
                    break;
                }
            case "Digits":
                {
                    bool individual = (bool?)p["individual_digits"] ?? false;
                    var re = new Regex(individual ? @"\p{Nd}" : @"\p{Nd}+", RegexOptions.CultureInvariant);
                    _preTokenizers.Add((pieces, _) => pieces.SelectMany(s => Split(s, re, "Isolated")).ToList());
                    break;
                }
            case "Metaspace":
                {
                    string rep = (string?)p["replacement"] ?? "\u2581";
                    string scheme = (string?)p["prepend_scheme"] ?? (((bool?)p["add_prefix_space"] ?? true) ? "always" : "never");
                    bool split = (bool?)p["split"] ?? true;
                    _preTokenizers.Add((pieces, first) =>
                    {
                        var outp = new List<string>();
                        for (int i = 0; i < pieces.Count; i++)
                        {
                            string s = pieces[i].Replace(" ", rep, StringComparison.Ordinal);
                            bool prepend = scheme == "always" || (scheme == "first" && first && i == 0);
                            if (prepend && s.Length > 0 && !s.StartsWith(rep, StringComparison.Ordinal)) s = rep + s;
                            if (!split) { outp.Add(s); continue; }
                            int start = 0;
                            for (int k = 1; k <= s.Length; k++)
                                if (k == s.Length || string.CompareOrdinal(s, k, rep, 0, rep.Length) == 0)
                                {
                                    if (k > start) outp.Add(s[start..k]);
                                    start = k;
                                }
                        }
                        return outp;
                    });
                    break;
                }
            case "BertPreTokenizer": _preTokenizers.Add((pieces, _) => Each(pieces, BertText.BertPreTokenize)); break;
            case "WhitespaceSplit": _preTokenizers.Add((pieces, _) => Each(pieces, BertText.WhitespaceSplit)); break;
            case "Whitespace": _preTokenizers.Add((pieces, _) => Each(pieces, BertText.WhitespaceWords)); break;
            default: throw Bad("pre_tokenizer.type", $"'{t}' is not supported (supported: Sequence, ByteLevel, Split, Digits, Metaspace, BertPreTokenizer, WhitespaceSplit, Whitespace)");
        }
    }

    private static List<string> Each(List<string> pieces, Action<string, List<string>> split)
    {
        var outp = new List<string>();
        foreach (var s in pieces) split(s, outp);
        return outp;
    }

    private static IEnumerable<string> Split(string s, Regex re, string behavior)
    {
        int last = 0;
        var parts = new List<(string Text, bool Match)>();
        foreach (Match m in re.Matches(s))
        {
            if (m.Length == 0) continue;
            if (m.Index > last) parts.Add((s[last..m.Index], false));
            parts.Add((m.Value, true));
            last = m.Index + m.Length;
        }
        if (last < s.Length) parts.Add((s[last..], false));
        switch (behavior)
        {
            case "Isolated": return parts.Select(p => p.Text);
            case "Removed": return parts.Where(p => !p.Match).Select(p => p.Text);
            case "MergedWithPrevious":
                {
                    var o = new List<string>();
                    foreach (var p in parts) { if (p.Match && o.Count > 0) o[^1] += p.Text; else o.Add(p.Text); }
                    return o;
                }
            case "MergedWithNext":
                {
                    var o = new List<string>();
                    string carry = "";
                    foreach (var p in parts) { if (p.Match) carry += p.Text; else { o.Add(carry + p.Text); carry = ""; } }
                    if (carry.Length > 0) o.Add(carry);
                    return o;
                }
            case "Contiguous":
                {
                    var o = new List<(string Text, bool Match)>();
                    foreach (var p in parts) { if (o.Count > 0 && o[^1].Match == p.Match) o[^1] = (o[^1].Text + p.Text, p.Match); else o.Add(p); }
                    return o.Select(p => p.Text);
                }
            default: throw new UserInputException($"tokenizer.json: pre_tokenizer Split behavior '{behavior}' is not supported.");
        }
    }

    private void AddDecoder(JsonObject d)
    {
        string t = (string?)d["type"] ?? "";
        if (t == "Sequence") { foreach (var x in (JsonArray)d["decoders"]!) AddDecoder((JsonObject)x!); return; }
        if (t is not ("Replace" or "ByteFallback" or "Fuse" or "Strip" or "ByteLevel" or "Metaspace" or "WordPiece"))
            throw Bad("decoder.type", $"'{t}' is not supported (supported: Sequence, Replace, ByteFallback, Fuse, Strip, ByteLevel, Metaspace, WordPiece)");
        _decoders.Add(d);
    }

    public List<int> Encode(string text)
    {
        var ids = new List<int>();
        foreach (var (piece, added, start) in SplitOnAdded(text))
        {
            if (added is not null) { ids.Add(added.Id); continue; }
            bool first = start == 0; // Metaspace "first" prepends only to text that starts the input (tokenizers checks offset 0).
            string s = piece;
            foreach (var n in _normalizers) s = n(s);
            var pieces = new List<string> { s };
            foreach (var p in _preTokenizers) pieces = p(pieces, first);
            foreach (var w in pieces) _model.Encode(w, ids);
        }
        return ids;
    }

    /// <summary>Splits raw text on added tokens (longest first, left to right), honouring lstrip/rstrip/single_word.</summary>
    private List<(string Text, AddedToken? Token, int Start)> SplitOnAdded(string text)
    {
        var result = new List<(string, AddedToken?, int)>();
        if (_added.Count == 0) { if (text.Length > 0) result.Add((text, null, 0)); return result; }
        int pos = 0, segStart = 0;
        while (pos < text.Length)
        {
            AddedToken? hit = null;
            foreach (var a in _added)
            {
                if (a.Content.Length == 0 || string.CompareOrdinal(text, pos, a.Content, 0, a.Content.Length) != 0) continue;
                if (a.SingleWord && ((pos > 0 && char.IsLetterOrDigit(text[pos - 1])) || (pos + a.Content.Length < text.Length && char.IsLetterOrDigit(text[pos + a.Content.Length])))) continue;
                hit = a;
                break;
            }
            if (hit is null) { pos++; continue; }
            int segEnd = pos;
            if (hit.Lstrip) while (segEnd > segStart && char.IsWhiteSpace(text[segEnd - 1])) segEnd--;
            if (segEnd > segStart) result.Add((text[segStart..segEnd], null, segStart));
            result.Add((hit.Content, hit, pos));
            pos += hit.Content.Length;
            if (hit.Rstrip) while (pos < text.Length && char.IsWhiteSpace(text[pos])) pos++;
            segStart = pos;
        }
        if (segStart < text.Length) result.Add((text[segStart..], null, segStart));
        return result;
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
