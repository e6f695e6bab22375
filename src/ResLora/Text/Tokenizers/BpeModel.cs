using System.Text;
using System.Text.Json.Nodes;

namespace ResLora.Text.Tokenizers;

/// <summary>
/// Byte-pair encoding as Hugging Face tokenizers' <c>BPE</c> model: a word starts as its characters and the pair with
/// the lowest merge rank is merged repeatedly (a heap over a linked list of symbols, O(n log n), so a long
/// SentencePiece-style "word" — a whole line — stays fast). Symbols missing from the vocabulary fall back to UTF-8
/// byte pieces <c>&lt;0xXX&gt;</c> when <c>byte_fallback</c> is set, otherwise to the unknown token.
/// </summary>
internal sealed class BpeModel : ITokenModel
{
    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<(string, string), int> _ranks;
    private readonly int? _unkId;
    private readonly bool _byteFallback;
    private readonly bool _ignoreMerges;
    private readonly int[] _byteIds = new int[256];
    private readonly Dictionary<string, int[]> _cache = new(StringComparer.Ordinal);

    /// <summary>The <c>BPE</c> model section of tokenizer.json: vocabulary, merges ("a b" strings or [a, b] pairs) and options.</summary>
    public static BpeModel FromJson(JsonObject model, string source)
    {
        if (model["continuing_subword_prefix"] is JsonValue csp && ((string?)csp)?.Length > 0) throw TokenModelJson.Bad(source, "model.continuing_subword_prefix", "is not supported for BPE");
        var vocab = TokenModelJson.Vocab(model, source);
        var merges = new List<(string, string)>();
        foreach (var m in model["merges"] as JsonArray ?? new JsonArray())
        {
            if (m is JsonArray pair && pair.Count == 2) merges.Add(((string)pair[0]!, (string)pair[1]!));
            else if (m is JsonValue s && ((string?)s) is { } str)
            {
                int sp = str.IndexOf(' ', 1);
                if (sp < 0) throw TokenModelJson.Bad(source, "model.merges", $"entry '{str}' is not 'a b'");
                merges.Add((str[..sp], str[(sp + 1)..]));
            }
            else throw TokenModelJson.Bad(source, "model.merges", "entries must be \"a b\" strings or [a, b] pairs");
        }
        return new BpeModel(vocab, merges, (string?)model["unk_token"], (bool?)model["byte_fallback"] ?? false, (bool?)model["ignore_merges"] ?? false, source);
    }

    public IReadOnlyDictionary<string, int> Vocab => _vocab;

    public BpeModel(Dictionary<string, int> vocab, IReadOnlyList<(string A, string B)> merges, string? unkToken, bool byteFallback, bool ignoreMerges, string source)
    {
        _vocab = vocab;
        _ranks = new Dictionary<(string, string), int>(merges.Count);
        for (int i = 0; i < merges.Count; i++) _ranks.TryAdd(merges[i], i);
        _byteFallback = byteFallback;
        _ignoreMerges = ignoreMerges;
        if (unkToken is not null)
        {
            if (!vocab.TryGetValue(unkToken, out int u)) throw new UserInputException($"{source}: model.unk_token '{unkToken}' is not in the vocabulary.");
            _unkId = u;
        }
        for (int b = 0; b < 256; b++) _byteIds[b] = vocab.TryGetValue($"<0x{b:X2}>", out int id) ? id : -1;
        if (byteFallback && _byteIds.Any(i => i < 0))
            throw new UserInputException($"{source}: model.byte_fallback is true but the vocabulary lacks some <0xXX> byte pieces.");
    }

    public void Encode(string word, List<int> output)
    {
        if (word.Length == 0) return;
        if (_cache.TryGetValue(word, out var hit)) { output.AddRange(hit); return; }
        var ids = new List<int>();
        if (_ignoreMerges && _vocab.TryGetValue(word, out int whole)) ids.Add(whole);
        else foreach (var sym in Merge(word)) Emit(sym, ids);
        if (word.Length <= 64 && _cache.Count < 100_000) _cache[word] = ids.ToArray();
        output.AddRange(ids);
    }

    public void Encode(string word, List<int> output, List<(int Start, int End)> spans)
    {
        if (word.Length == 0) return;
        if (_ignoreMerges && _vocab.TryGetValue(word, out int whole))
        {
            output.Add(whole);
            spans.Add((0, word.Length));
            return;
        }
        int pos = 0;
        foreach (var sym in Merge(word))
        {
            // Byte-fallback pieces of one symbol all cover the symbol's characters.
            int before = output.Count;
            Emit(sym, output);
            for (int k = before; k < output.Count; k++) spans.Add((pos, pos + sym.Length));
            pos += sym.Length;
        }
    }

    private void Emit(string symbol, List<int> ids)
    {
        if (_vocab.TryGetValue(symbol, out int id)) { ids.Add(id); return; }
        if (_byteFallback)
        {
            foreach (byte b in Encoding.UTF8.GetBytes(symbol)) ids.Add(_byteIds[b]);
            return;
        }
        if (_unkId is { } u) { ids.Add(u); return; }
        throw new UserInputException($"tokenizer: '{symbol}' is not in the vocabulary and the model has neither byte_fallback nor unk_token.");
    }

    /// <summary>The symbols of <paramref name="word"/> after all merges (characters are whole code points).</summary>
    private List<string> Merge(string word)
    {
        var sym = new List<string>();
        for (int i = 0; i < word.Length; i++)
        {
            if (char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1])) { sym.Add(word.Substring(i, 2)); i++; }
            else sym.Add(word[i].ToString());
        }
        int n = sym.Count;
        if (n < 2) return sym;
        var prev = new int[n];
        var next = new int[n];
        var alive = new bool[n];
        for (int i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; alive[i] = true; }
        // Heap of (rank, left index, right text at push time) — an entry is stale when either side changed since.
        var heap = new PriorityQueue<(int Left, string LeftText, string RightText), (int Rank, int Pos)>();
        void Push(int left)
        {
            int right = next[left];
            if (right < 0) return;
            if (_ranks.TryGetValue((sym[left], sym[right]), out int rank)) heap.Enqueue((left, sym[left], sym[right]), (rank, left));
        }
        for (int i = 0; i + 1 < n; i++) Push(i);
        while (heap.TryDequeue(out var e, out _))
        {
            int l = e.Left;
            if (!alive[l] || sym[l] != e.LeftText) continue;
            int r = next[l];
            if (r < 0 || sym[r] != e.RightText) continue;
            sym[l] = sym[l] + sym[r];
            alive[r] = false;
            next[l] = next[r];
            if (next[r] >= 0) prev[next[r]] = l;
            if (prev[l] >= 0) Push(prev[l]);
            Push(l);
        }
        var result = new List<string>();
        for (int i = 0; i >= 0; i = next[i]) result.Add(sym[i]);
        return result;
    }
}

/// <summary>GPT-2's reversible byte ↔ printable-unicode map used by byte-level BPE (openai/gpt-2 encoder.py bytes_to_unicode).</summary>
internal static class ByteLevelAlphabet
{
    public static readonly char[] ByteToChar = Build();
    public static readonly Dictionary<char, byte> CharToByte = ByteToChar.Select((c, i) => (c, (byte)i)).ToDictionary(x => x.c, x => x.Item2);

    private static char[] Build()
    {
        var map = new char[256];
        var direct = new HashSet<int>();
        for (int b = '!'; b <= '~'; b++) direct.Add(b);
        for (int b = 0xA1; b <= 0xAC; b++) direct.Add(b);
        for (int b = 0xAE; b <= 0xFF; b++) direct.Add(b);
        int extra = 0;
        for (int b = 0; b < 256; b++) map[b] = direct.Contains(b) ? (char)b : (char)(256 + extra++);
        return map;
    }

    public static string Encode(string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = ByteToChar[bytes[i]];
        return new string(chars);
    }
}
