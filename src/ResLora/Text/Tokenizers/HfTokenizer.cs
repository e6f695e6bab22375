using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace ResLora.Text.Tokenizers;

/// <summary>A token from tokenizer.json's <c>added_tokens</c>: matched in raw text before normal tokenization.</summary>
internal sealed record AddedToken(int Id, string Content, bool Special, bool Lstrip, bool Rstrip, bool Normalized, bool SingleWord);

/// <summary>
/// A Hugging Face <c>tokenizer.json</c> around one model step (<see cref="ITokenModel"/>: <see cref="BpeModel"/> or
/// <see cref="WordPieceModel"/> or <see cref="UnigramModel"/>, one class per <c>model.type</c>), run the way the Rust <c>tokenizers</c> library
/// runs it: added tokens split the text first; each remaining piece is normalized, pre-tokenized and encoded by the
/// model; decoding runs the decoder chain over the token strings. Covers the SentencePiece-style family (Llama 2,
/// TinyLlama, Mistral: Prepend/Replace normalizers or a Metaspace pre-tokenizer, byte fallback), the byte-level family
/// (GPT-2, RoBERTa, Llama 3, Qwen2: Split + ByteLevel), BERT (BertNormalizer, BertPreTokenizer, WordPiece) and
/// SentencePiece Unigram (T5, XLM-R, DeBERTa-v3: Strip, Precompiled, Replace, Metaspace, Unigram). The
/// post-processor (specials around one text or a pair) is read into <see cref="PostProcessor"/>. Unsupported components
/// are refused by name, never silently skipped.
/// </summary>
internal sealed partial class HfTokenizer
{
    private readonly ITokenModel _model;
    private readonly string[] _idToToken;
    private readonly IReadOnlyDictionary<string, int> _vocab;
    private readonly List<AddedToken> _added;
    private readonly Dictionary<int, AddedToken> _addedById;
    private readonly List<Func<string, string>> _normalizers = new();
    private readonly List<Func<List<string>, bool, List<string>>> _preTokenizers = new();
    // The same steps on aligned text (EncodeWithOffsets): each computes its text with the step above and only adds where
    // every unit came from.
    private readonly List<Func<AlignedText, AlignedText>> _alignedNormalizers = new();
    private readonly List<Func<List<AlignedText>, bool, List<AlignedText>>> _alignedPreTokenizers = new();
    private readonly List<JsonObject> _decoders = new();
    private readonly string _source;

    public int VocabSize { get; }

    /// <summary>The post-processor that adds specials around one text or a pair; null when the file defines none.</summary>
    public PostProcessor? PostProcessor { get; }

    /// <summary><c>padding.pad_id</c> when the file enables padding.</summary>
    public int? PaddingId { get; }

    /// <summary>
    /// The tokenizer of <paramref name="root"/> (a tokenizer.json object) around <paramref name="model"/>, the model step
    /// its <c>model</c> section describes (TokenizerLoader picks the class by <c>model.type</c>).
    /// </summary>
    public HfTokenizer(JsonObject root, ITokenModel model, string source)
    {
        _source = source;
        _model = model;
        _vocab = model.Vocab;
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
            case "Prepend":
                {
                    string s = (string)n["prepend"]!;
                    _normalizers.Add(x => x.Length == 0 ? x : s + x);
                    _alignedNormalizers.Add(a => a.Length == 0 ? a : a.Prepend(s));
                    break;
                }
            case "Replace":
                {
                    var (pattern, content) = ReplacePattern(n, "normalizer");
                    string literal = (string?)n["content"] ?? "";
                    _normalizers.Add(x => pattern.Replace(x, content));
                    _alignedNormalizers.Add(a => a.Replace(pattern, literal, pattern.Replace(a.Text, content)));
                    break;
                }
            // string.Normalize is a no-op under InvariantGlobalization (the build sets it): our own tables instead.
            case "NFC": AddLocalNormalizer(UnicodeNfc.Compose); break;
            case "NFD": AddLocalNormalizer(UnicodeNfd.Decompose); break;
            case "NFKC": AddLocalNormalizer(UnicodeNfc.ComposeCompatibility); break;
            case "NFKD": AddLocalNormalizer(UnicodeNfd.DecomposeCompatibility); break;
            case "Lowercase": AddLocalNormalizer(BertText.Lowercase); break;
            case "Precompiled":
                {
                    // SentencePiece's compiled rules (Unigram tokenizers: T5, XLM-R, DeBERTa-v3); not character-local in
                    // general, so offsets follow it per character where the outputs add up, else coarsely (AlignedText.Map).
                    string blob = (string?)n["precompiled_charsmap"] is { Length: > 0 } b ? b : throw Bad("normalizer.precompiled_charsmap", "is missing or empty");
                    AddLocalNormalizer(PrecompiledCharsMap.Parse(blob, $"{_source}: 'normalizer.precompiled_charsmap'").Normalize);
                    break;
                }
            case "Strip":
                {
                    bool left = (bool?)n["strip_left"] ?? true, right = (bool?)n["strip_right"] ?? true;
                    // normalizers/strip.rs: Unicode White_Space, which char.IsWhiteSpace is too.
                    (int Start, int Length) Kept(string x)
                    {
                        int a = 0, e = x.Length;
                        if (left) while (a < e && char.IsWhiteSpace(x[a])) a++;
                        if (right) while (e > a && char.IsWhiteSpace(x[e - 1])) e--;
                        return (a, e - a);
                    }
                    _normalizers.Add(x => { var (a, len) = Kept(x); return x.Substring(a, len); });
                    _alignedNormalizers.Add(t => { var (a, len) = Kept(t.Text); return len == t.Length ? t : t.Slice(a, len); });
                    break;
                }
            case "StripAccents": AddLocalNormalizer(BertText.DropNonSpacingMarks); break; // normalizers/strip.rs: no NFD of its own
            case "BertNormalizer":
                {
                    bool clean = (bool?)n["clean_text"] ?? true, chinese = (bool?)n["handle_chinese_chars"] ?? true, lower = (bool?)n["lowercase"] ?? true;
                    // strip_accents null (the usual value) means "strip when lowercasing", as in tokenizers' deserializer.
                    bool strip = (bool?)n["strip_accents"] ?? lower;
                    AddLocalNormalizer(x => BertText.Normalize(x, clean, chinese, strip, lower));
                    break;
                }
            default: throw Bad("normalizer.type", $"'{t}' is not supported (supported: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase, StripAccents, BertNormalizer, Precompiled, Strip)");
        }
    }

    /// <summary>A normalizer that works character by character (with combining marks), so offsets can follow it.</summary>
    private void AddLocalNormalizer(Func<string, string> f)
    {
        _normalizers.Add(f);
        _alignedNormalizers.Add(a => a.Map(f, f(a.Text)));
    }

    private (Regex Pattern, string Content) ReplacePattern(JsonObject n, string where)
    {
        var p = n["pattern"] as JsonObject ?? throw Bad($"{where}.pattern", "missing");
        string content = (string?)n["content"] ?? "";
        if (p["String"] is JsonValue s) return (new Regex(Regex.Escape((string)s!), RegexOptions.CultureInvariant), content.Replace("$", "$$"));
        if (p["Regex"] is JsonValue r) return (new Regex((string)r!, RegexOptions.CultureInvariant), content.Replace("$", "$$"));
        throw Bad($"{where}.pattern", "needs String or Regex");
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

    /// <summary>
    /// <see cref="Encode"/> with each token's [start, end) range of <paramref name="text"/> (UTF-16 units), as Hugging Face
    /// tokenizers' offsets: a token covers the characters it was made from (a Llama <c>▁</c> the word it starts, a byte
    /// piece the whole character); an added token covers its own text.
    /// </summary>
    public List<(int Id, int Start, int End)> EncodeWithOffsets(string text)
    {
        var result = new List<(int Id, int Start, int End)>();
        var ids = new List<int>();
        var spans = new List<(int Start, int End)>();
        foreach (var (piece, added, start) in SplitOnAdded(text))
        {
            if (added is not null) { result.Add((added.Id, start, start + added.Content.Length)); continue; }
            bool first = start == 0;
            var s = AlignedText.Original(piece, start);
            foreach (var n in _alignedNormalizers) s = n(s);
            var pieces = new List<AlignedText> { s };
            foreach (var p in _alignedPreTokenizers) pieces = p(pieces, first);
            foreach (var w in pieces)
            {
                ids.Clear();
                spans.Clear();
                _model.Encode(w.Text, ids, spans);
                for (int k = 0; k < ids.Count; k++)
                {
                    var (a, b) = w.Span(spans[k].Start, spans[k].End);
                    result.Add((ids[k], a, b));
                }
            }
        }
        // Both paths run the same steps on the same text; a difference would be a bug here, never the user's input.
        if (!Encode(text).SequenceEqual(result.Select(r => r.Id)))
            throw new InvalidOperationException($"{_source}: the offsets encoding disagrees with the plain encoding of the same text.");
        return result;
    }

    /// <summary>The vocabulary entry of <paramref name="id"/> (transformers' <c>convert_ids_to_tokens</c>).</summary>
    public string TokenString(int id) =>
        id >= 0 && id < _idToToken.Length && _idToToken[id] is { } t ? t : throw new UserInputException($"token id {id} is not in the vocabulary (size {VocabSize}).");

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
}
