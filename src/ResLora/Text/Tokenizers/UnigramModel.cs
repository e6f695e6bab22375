using System.Text;
using System.Text.Json.Nodes;

namespace ResLora.Text.Tokenizers;

/// <summary>
/// SentencePiece's unigram language model as Hugging Face tokenizers' <c>Unigram</c> model (models/unigram/model.rs,
/// which follows sentencepiece's unigram_model.cc EncodeOptimized): every piece has a log-probability score and a word
/// is cut into the pieces whose scores add up highest (Viterbi over a trie of the pieces). A character that starts no
/// piece of its own length is unknown: it scores (lowest piece score − 10), and runs of unknown characters are fused into
/// one unknown token. With <c>byte_fallback</c>, an unknown run that is not itself a piece becomes its UTF-8 bytes as
/// <c>&lt;0xXX&gt;</c> pieces (the unknown id when a byte piece is missing).
/// </summary>
internal sealed class UnigramModel : ITokenModel
{
    // sentencepiece's kUnkPenalty (unigram_model.h), as tokenizers' K_UNK_PENALTY.
    private const double UnkPenalty = 10.0;

    private readonly Dictionary<string, int> _vocab;
    private readonly double[] _scores;
    private readonly int? _unkId;
    private readonly bool _byteFallback;
    private readonly double _unkScore;
    private readonly int[] _byteIds = new int[256];
    private readonly string _source;
    // The pieces as a trie over UTF-16 units: the edge (node, unit) → child node is one dictionary entry, so a
    // 250,000-piece vocabulary (XLM-R) costs one hash entry per trie edge, not a dictionary per node.
    private readonly Dictionary<long, int> _edges = new();
    private readonly List<int> _pieceAt = new() { -1 }; // node → id of the piece that ends there, or -1
    private readonly Dictionary<string, int[]> _cache = new(StringComparer.Ordinal);

    /// <summary>The <c>Unigram</c> model section of tokenizer.json: <c>vocab</c> as [[piece, score], …] (the id is the position), <c>unk_id</c>, <c>byte_fallback</c>.</summary>
    public static UnigramModel FromJson(JsonObject model, string source)
    {
        var list = model["vocab"] as JsonArray ?? throw TokenModelJson.Bad(source, "model.vocab", "missing (a Unigram model lists [piece, score] pairs)");
        var pieces = new List<(string, double)>(list.Count);
        for (int i = 0; i < list.Count; i++)
        {
            if (list[i] is JsonArray { Count: 2 } pair && pair[0] is JsonValue p && p.TryGetValue<string>(out var piece)
                && pair[1] is JsonValue s && s.TryGetValue<double>(out double score) && double.IsFinite(score))
                pieces.Add((piece, score));
            else
                throw TokenModelJson.Bad(source, $"model.vocab[{i}]", $"is {list[i]?.ToJsonString() ?? "null"}; each entry must be [piece string, finite score number]");
        }
        int? unk = null;
        if (model["unk_id"] is JsonValue u)
        {
            if (!u.TryGetValue<int>(out int id)) throw TokenModelJson.Bad(source, "model.unk_id", $"is {u.ToJsonString()}; it must be a whole number");
            unk = id;
        }
        return new UnigramModel(pieces, unk, (bool?)model["byte_fallback"] ?? false, source);
    }

    public UnigramModel(IReadOnlyList<(string Piece, double Score)> pieces, int? unkId, bool byteFallback, string source)
    {
        _source = source;
        if (pieces.Count == 0) throw TokenModelJson.Bad(source, "model.vocab", "is empty");
        if (unkId is { } u && (u < 0 || u >= pieces.Count))
            throw TokenModelJson.Bad(source, "model.unk_id", $"is {u}, outside the vocabulary (ids 0 to {pieces.Count - 1})");
        _unkId = unkId;
        _byteFallback = byteFallback;
        _vocab = new Dictionary<string, int>(pieces.Count, StringComparer.Ordinal);
        _scores = new double[pieces.Count];
        int units = 0;
        foreach (var (piece, _) in pieces) units += piece.Length;
        _edges.EnsureCapacity(units); // at most one edge per UTF-16 unit of the pieces
        _pieceAt.Capacity = units + 1;
        double min = double.MaxValue;
        for (int id = 0; id < pieces.Count; id++)
        {
            var (piece, score) = pieces[id];
            _vocab[piece] = id; // tokenizers' token_to_ids: a repeated piece answers with its last id
            _scores[id] = score;
            min = Math.Min(min, score);
            if (piece.Length > 0) AddToTrie(piece, id);
        }
        _unkScore = min - UnkPenalty;
        for (int b = 0; b < 256; b++) _byteIds[b] = _vocab.TryGetValue($"<0x{b:X2}>", out int bid) ? bid : -1;
    }

    public IReadOnlyDictionary<string, int> Vocab => _vocab;

    private void AddToTrie(string piece, int id)
    {
        int node = 0;
        foreach (char c in piece)
        {
            long key = ((long)node << 16) | c;
            if (!_edges.TryGetValue(key, out int child))
            {
                child = _pieceAt.Count;
                _pieceAt.Add(-1);
                _edges.Add(key, child);
            }
            node = child;
        }
        _pieceAt[node] = id; // pieces go in by id, so a repeated piece ends with its last id, as the lookup by string gives
    }

    public void Encode(string word, List<int> output)
    {
        if (word.Length == 0) return;
        if (_cache.TryGetValue(word, out var hit)) { output.AddRange(hit); return; }
        var ids = new List<int>();
        foreach (var (start, end) in Viterbi(word)) Emit(word, start, end, ids, null);
        if (word.Length <= 64 && _cache.Count < 100_000) _cache[word] = ids.ToArray();
        output.AddRange(ids);
    }

    public void Encode(string word, List<int> output, List<(int Start, int End)> spans)
    {
        foreach (var (start, end) in Viterbi(word)) Emit(word, start, end, output, spans);
    }

    /// <summary>The [start, end) ranges of <paramref name="word"/>'s best segmentation, unknown runs fused.</summary>
    private List<(int Start, int End)> Viterbi(string word)
    {
        int n = word.Length;
        var best = new double[n + 1];
        var from = new int[n + 1]; // where the best path ending here starts; -1 = not reached yet
        var idAt = new int[n + 1];
        Array.Fill(from, -1);
        for (int start = 0; start < n;)
        {
            int charLen = char.IsHighSurrogate(word[start]) && start + 1 < n && char.IsLowSurrogate(word[start + 1]) ? 2 : 1;
            double here = best[start];
            bool wholeChar = false;
            // Pieces starting at `start`, shortest first (the order of a trie's common-prefix search).
            int node = 0;
            for (int k = start; k < n && _edges.TryGetValue(((long)node << 16) | word[k], out node); k++)
            {
                int id = _pieceAt[node];
                if (id < 0) continue;
                int end = k + 1;
                double candidate = here + _scores[id];
                if (from[end] < 0 || candidate > best[end]) { best[end] = candidate; from[end] = start; idAt[end] = id; }
                if (end - start == charLen) wholeChar = true;
            }
            if (!wholeChar)
            {
                int end = start + charLen;
                double candidate = here + _unkScore;
                if (from[end] < 0 || candidate > best[end]) { best[end] = candidate; from[end] = start; idAt[end] = _unkId ?? -1; }
            }
            start += charLen;
        }
        var ranges = new List<(int Start, int End)>();
        bool lastUnknown = false;
        for (int end = n; end > 0;)
        {
            int start = from[end];
            bool unknown = idAt[end] < 0 || idAt[end] == _unkId;
            // The path is walked backwards: an unknown next to the unknown just taken widens it (tokenizers' fuse_unk).
            if (unknown && lastUnknown) ranges[^1] = (start, ranges[^1].End);
            else ranges.Add((start, end));
            lastUnknown = unknown;
            end = start;
        }
        ranges.Reverse();
        return ranges;
    }

    /// <summary>
    /// The ids of one segment, as tokenizers' <c>Unigram::tokenize</c>: the piece it spells when there is one, else its
    /// bytes with byte fallback (when every byte piece exists), else the unknown id.
    /// </summary>
    private void Emit(string word, int start, int end, List<int> ids, List<(int, int)>? spans)
    {
        string piece = word[start..end];
        if (_vocab.TryGetValue(piece, out int id))
        {
            ids.Add(id);
            spans?.Add((start, end));
            return;
        }
        if (_byteFallback)
        {
            var bytes = Encoding.UTF8.GetBytes(piece);
            if (bytes.All(b => _byteIds[b] >= 0))
            {
                foreach (byte b in bytes)
                {
                    ids.Add(_byteIds[b]);
                    spans?.Add((start, end));
                }
                return;
            }
        }
        if (_unkId is not { } unk)
            throw new UserInputException($"{_source}: '{piece}' is not in the vocabulary and the Unigram model has no unk_id{(_byteFallback ? " and lacks some <0xXX> byte pieces" : " and no byte_fallback")}; this text cannot be tokenized with it.");
        ids.Add(unk);
        spans?.Add((start, end));
    }
}
