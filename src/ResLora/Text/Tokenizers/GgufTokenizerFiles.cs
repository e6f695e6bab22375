using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ResLora.IO;
using ResLora.IO.Gguf;

namespace ResLora.Text;

/// <summary>
/// Rebuilds Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json) from a GGUF file's
/// <c>tokenizer.ggml.*</c> vocabulary, as llama.cpp reads it (src/llama-vocab.cpp):
/// <c>gpt2</c> is byte-level BPE (tokens, merges, and the pre-tokenizer regex named by <c>tokenizer.ggml.pre</c>);
/// <c>llama</c> is SentencePiece (tokens with scores and &lt;0xXX&gt; byte tokens), written the way transformers'
/// LlamaConverter writes one: a BPE model with byte fallback whose merges come from the vocabulary ordered by the merged
/// piece's score. CONTROL and USER_DEFINED tokens become added tokens (special and not).
/// </summary>
public static class GgufTokenizerFiles
{
    /// <summary>llama.cpp's token types (gguf-py constants.py TokenType).</summary>
    public const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6;

    /// <summary>tokenizer.ggml.pre values whose regex is known here (llama.cpp's names), and what the rest map to.</summary>
    public static readonly IReadOnlyList<string> KnownPre = new[] { "default", "gpt2", "gpt-2", "llama-bpe", "llama3", "qwen2" };

    // The Llama 3 pre-tokenizer (llama-vocab.cpp LLAMA_VOCAB_PRE_TYPE_LLAMA3; Meta's tokenizer.json Split pattern).
    private const string Llama3Regex = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    // Qwen2's: as Llama 3's, but single digits (LLAMA_VOCAB_PRE_TYPE_QWEN2).
    private const string Qwen2Regex = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>What was rebuilt, for the CLI's report.</summary>
    public sealed record Summary(string Model, string? Pre, int Tokens, int Merges, int AddedTokens);

    /// <summary>
    /// Checks the vocabulary of <paramref name="g"/> against <paramref name="embeddingRows"/> and writes tokenizer.json and
    /// tokenizer_config.json into <paramref name="dir"/>. Every inconsistency is one <see cref="UserInputException"/> naming the file.
    /// </summary>
    public static Summary Write(GgufFile g, string dir, int embeddingRows, int? contextLength)
    {
        string src = g.Path;
        string model = g.GetString("tokenizer.ggml.model") ?? throw new UserInputException($"{src}: no tokenizer.ggml.model; the file has no vocabulary to rebuild a tokenizer from.");
        if (model is not ("gpt2" or "llama"))
            throw new UserInputException($"{src}: tokenizer.ggml.model '{model}' is not supported (supported: gpt2 = byte-level BPE, llama = SentencePiece).");
        var tokens = Strings(g, "tokenizer.ggml.tokens", required: true)!;
        if (tokens.Count != embeddingRows)
            throw new UserInputException($"{src}: the vocabulary has {tokens.Count} tokens but token_embd.weight has {embeddingRows} rows; the file is inconsistent.");
        var types = Ints(g, "tokenizer.ggml.token_type", tokens.Count) ?? Enumerable.Repeat(Normal, tokens.Count).ToArray();
        int? Id(string key)
        {
            long? v = g.GetInteger(key);
            if (v is null) return null;
            if (v < 0 || v >= tokens.Count) throw new UserInputException($"{src}: {key} is {v}, outside the vocabulary of {tokens.Count} tokens.");
            return (int)v;
        }
        int? bos = Id("tokenizer.ggml.bos_token_id"), eos = Id("tokenizer.ggml.eos_token_id"), unk = Id("tokenizer.ggml.unknown_token_id"), pad = Id("tokenizer.ggml.padding_token_id");
        bool addBos = Bool(g, "tokenizer.ggml.add_bos_token") ?? model == "llama";
        bool addEos = Bool(g, "tokenizer.ggml.add_eos_token") ?? false;

        var vocab = new JsonObject();
        foreach (var (t, i) in tokens.Select((t, i) => (t, i)))
            if (!vocab.ContainsKey(t)) vocab[t] = i; // a repeated string keeps its first id (llama.cpp's lookup does the same)
        var added = new JsonArray();
        for (int i = 0; i < tokens.Count; i++)
            if (types[i] is Control or UserDefined || (model == "llama" && types[i] == Unknown))
                added.Add(new JsonObject
                {
                    ["id"] = i, ["content"] = tokens[i], ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false,
                    ["normalized"] = false, ["special"] = types[i] != UserDefined,
                });

        string? pre = g.GetString("tokenizer.ggml.pre");
        List<JsonArray> merges;
        JsonObject root;
        if (model == "gpt2")
        {
            merges = GptMerges(g, src);
            root = ByteLevelJson(pre, src);
            root["model"] = BpeModelJson(vocab, merges, unkToken: null, byteFallback: false, ignoreMerges: pre is "llama-bpe" or "llama3");
        }
        else
        {
            var scores = Floats(g, "tokenizer.ggml.scores", tokens.Count) ?? new float[tokens.Count];
            merges = SentencePieceMerges(tokens, types, scores);
            bool allBytes = Enumerable.Range(0, 256).All(b => vocab.ContainsKey($"<0x{b:X2}>"));
            bool prefix = Bool(g, "tokenizer.ggml.add_space_prefix") ?? true;
            root = SentencePieceJson(prefix);
            root["model"] = BpeModelJson(vocab, merges, unk is { } u ? tokens[u] : null, allBytes, ignoreMerges: false);
        }
        var rootFull = new JsonObject { ["version"] = "1.0", ["truncation"] = null, ["padding"] = null, ["added_tokens"] = added };
        foreach (var kv in root.ToList()) { root.Remove(kv.Key); rootFull[kv.Key] = kv.Value; }
        if (addBos && bos is { } b) rootFull["post_processor"] = BosTemplate(tokens[b], b);
        AtomicFile.WriteAllText(Path.Combine(dir, "tokenizer.json"), rootFull.ToJsonString(Indented));

        var cfg = new JsonObject
        {
            ["tokenizer_class"] = model == "llama" ? "LlamaTokenizerFast" : "PreTrainedTokenizerFast",
            ["add_bos_token"] = addBos,
            ["add_eos_token"] = addEos,
            ["clean_up_tokenization_spaces"] = false,
        };
        if (bos is { } bi) cfg["bos_token"] = tokens[bi];
        if (eos is { } ei) cfg["eos_token"] = tokens[ei];
        if (unk is { } ui) cfg["unk_token"] = tokens[ui];
        if (pad is { } pi) cfg["pad_token"] = tokens[pi];
        if (contextLength is { } ctx) cfg["model_max_length"] = ctx;
        if (g.GetString("tokenizer.chat_template") is { } tpl) cfg["chat_template"] = tpl;
        AtomicFile.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), cfg.ToJsonString(Indented));
        return new Summary(model, pre, tokens.Count, merges.Count, added.Count);
    }

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    private static JsonObject BpeModelJson(JsonObject vocab, List<JsonArray> merges, string? unkToken, bool byteFallback, bool ignoreMerges) => new()
    {
        ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = unkToken, ["continuing_subword_prefix"] = null, ["end_of_word_suffix"] = null,
        ["fuse_unk"] = byteFallback, ["byte_fallback"] = byteFallback, ["ignore_merges"] = ignoreMerges,
        ["vocab"] = vocab, ["merges"] = new JsonArray(merges.ToArray<JsonNode?>()),
    };

    private static JsonObject BosTemplate(string bos, int id) => new()
    {
        ["type"] = "TemplateProcessing",
        ["single"] = new JsonArray(
            new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = bos, ["type_id"] = 0 } },
            new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
        ["pair"] = new JsonArray(
            new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = bos, ["type_id"] = 0 } },
            new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } },
            new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = bos, ["type_id"] = 1 } },
            new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "B", ["type_id"] = 1 } }),
        ["special_tokens"] = new JsonObject { [bos] = new JsonObject { ["id"] = bos, ["ids"] = new JsonArray(id), ["tokens"] = new JsonArray(bos) } },
    };

    /// <summary>Normalizer, pre-tokenizer and decoder of a byte-level BPE tokenizer for <c>tokenizer.ggml.pre</c>.</summary>
    private static JsonObject ByteLevelJson(string? pre, string src)
    {
        string? regex = pre switch
        {
            null or "default" or "gpt2" or "gpt-2" => null, // llama.cpp names GPT-2's pre-tokenizer "gpt-2"
            "llama-bpe" or "llama3" => Llama3Regex,
            "qwen2" => Qwen2Regex,
            _ => throw new UserInputException($"{src}: tokenizer.ggml.pre '{pre}' is not supported (supported: {string.Join(", ", KnownPre)}); its pre-tokenizer regex is not known here."),
        };
        JsonObject byteLevel(bool useRegex) => new() { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = useRegex };
        JsonNode preTok = regex is null
            ? byteLevel(true)
            : new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = regex }, ["behavior"] = "Isolated", ["invert"] = false },
                    byteLevel(false)),
            };
        return new JsonObject
        {
            ["normalizer"] = pre == "qwen2" ? new JsonObject { ["type"] = "NFC" } : null,
            ["pre_tokenizer"] = preTok,
            ["decoder"] = byteLevel(true),
        };
    }

    /// <summary>LlamaConverter's pipeline: spaces become ▁ (one prepended when the model adds a space prefix), byte fallback on decode.</summary>
    private static JsonObject SentencePieceJson(bool prefix)
    {
        var norms = new JsonArray();
        if (prefix) norms.Add(new JsonObject { ["type"] = "Prepend", ["prepend"] = "\u2581" });
        norms.Add(new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = "\u2581" });
        var decoders = new JsonArray(
            new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = "\u2581" }, ["content"] = " " },
            new JsonObject { ["type"] = "ByteFallback" },
            new JsonObject { ["type"] = "Fuse" });
        if (prefix) decoders.Add(new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 });
        return new JsonObject
        {
            ["normalizer"] = new JsonObject { ["type"] = "Sequence", ["normalizers"] = norms },
            ["pre_tokenizer"] = null,
            ["decoder"] = new JsonObject { ["type"] = "Sequence", ["decoders"] = decoders },
        };
    }

    /// <summary>tokenizer.ggml.merges ("a b", spaces inside a part written as U+0120 by the converter) as [a, b] pairs.</summary>
    private static List<JsonArray> GptMerges(GgufFile g, string src)
    {
        var merges = Strings(g, "tokenizer.ggml.merges", required: true)!;
        var result = new List<JsonArray>(merges.Count);
        foreach (var m in merges)
        {
            int sp = m.IndexOf(' ', 1);
            if (sp < 0 || sp == m.Length - 1 || m.IndexOf(' ', sp + 1) >= 0)
                throw new UserInputException($"{src}: tokenizer.ggml.merges entry '{m}' is not two parts separated by one space.");
            result.Add(new JsonArray(m[..sp], m[(sp + 1)..]));
        }
        return result;
    }

    /// <summary>
    /// transformers' SentencePieceExtractor with scores: for each normal piece, every split into two normal pieces is a
    /// merge; merges are ranked by the merged piece's score (highest first; ties in vocabulary order), and the splits of
    /// one piece by the ids of their parts. This is the merge order SentencePiece's own BPE applies.
    /// </summary>
    public static List<JsonArray> SentencePieceMerges(IReadOnlyList<string> tokens, IReadOnlyList<int> types, IReadOnlyList<float> scores)
    {
        var ids = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < tokens.Count; i++)
            if (types[i] == Normal) ids.TryAdd(tokens[i], i);
        var found = new List<(int Piece, int Left, int Right)>();
        for (int i = 0; i < tokens.Count; i++)
        {
            if (types[i] != Normal) continue;
            string p = tokens[i];
            var local = new List<(int Piece, int Left, int Right)>();
            for (int k = 1; k < p.Length; k++)
            {
                if (char.IsLowSurrogate(p[k])) continue;
                if (ids.TryGetValue(p[..k], out int l) && ids.TryGetValue(p[k..], out int r)) local.Add((i, l, r));
            }
            found.AddRange(local.OrderBy(x => x.Left).ThenBy(x => x.Right));
        }
        return found.Select((m, order) => (m, order))
            .OrderByDescending(x => scores[x.m.Piece]).ThenBy(x => x.order)
            .Select(x => new JsonArray(tokens[x.m.Left], tokens[x.m.Right])).ToList();
    }

    private static List<string>? Strings(GgufFile g, string key, bool required)
    {
        var a = g.GetArray(key);
        if (a is null) return required ? throw new UserInputException($"{g.Path}: no {key}; the vocabulary is incomplete.") : null;
        if (a.ElementType != GgufValueType.String) throw new UserInputException($"{g.Path}: {key} holds {a.ElementType} values, not strings.");
        return a.Items.Cast<string>().ToList();
    }

    private static int[]? Ints(GgufFile g, string key, int count)
    {
        var a = g.GetArray(key);
        if (a is null) return null;
        if (a.Items.Count != count) throw new UserInputException($"{g.Path}: {key} has {a.Items.Count} entries for {count} tokens.");
        if (a.ElementType is GgufValueType.String or GgufValueType.Float32 or GgufValueType.Float64 or GgufValueType.Bool or GgufValueType.Array)
            throw new UserInputException($"{g.Path}: {key} holds {a.ElementType} values, not integers.");
        return a.Items.Select(x => (int)Convert.ToInt64(x, CultureInfo.InvariantCulture)).ToArray();
    }

    private static float[]? Floats(GgufFile g, string key, int count)
    {
        var a = g.GetArray(key);
        if (a is null) return null;
        if (a.Items.Count != count) throw new UserInputException($"{g.Path}: {key} has {a.Items.Count} entries for {count} tokens.");
        if (a.ElementType is not (GgufValueType.Float32 or GgufValueType.Float64)) throw new UserInputException($"{g.Path}: {key} holds {a.ElementType} values, not floats.");
        return a.Items.Select(x => (float)Convert.ToDouble(x, CultureInfo.InvariantCulture)).ToArray();
    }

    private static bool? Bool(GgufFile g, string key) => g.Metadata.TryGetValue(key, out var v) ? v as bool? ?? throw new UserInputException($"{g.Path}: {key} is not a bool.") : null;
}
