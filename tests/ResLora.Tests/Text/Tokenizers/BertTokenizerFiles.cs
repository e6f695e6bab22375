using System.Text.Json.Nodes;
using ResLora.Text.Tokenizers;

namespace ResLora.Tests.Text.Tokenizers;

/// <summary>Tiny BERT and RoBERTa tokenizer folders written by the tests; every id in the tests is an index in these lists.</summary>
internal static class BertTokenizerFiles
{
    /// <summary>The WordPiece vocabulary: id = index.</summary>
    public static readonly string[] Vocab =
    {
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", // 0-4
        "hello", "héllo", "don", "'", "t", // 5-9
        "!", "un", "##aff", "##able", "中", // 10-14
        "国", "world", "a", "##a", ",", // 15-19
        ".", "$", "«", "\U00020000", "b", // 20-24
        "c", "d", "e", "f", "g", // 25-29
        "h", "it", "s", "don't", "go", // 30-34
    };

    public const int Pad = 0, Unk = 1, Cls = 2, Sep = 3, Hello = 5, HelloAccent = 6, Don = 7, Apostrophe = 8, T = 9, Bang = 10;
    public const int Un = 11, Aff = 12, Able = 13, Zhong = 14, Guo = 15, World = 16, A = 17, ContA = 18, Comma = 19, Dot = 20;
    public const int Dollar = 21, Guillemet = 22, ExtB = 23, B = 24, C = 25, D = 26, E = 27, F = 28, G = 29, H = 30;
    public const int It = 31, S = 32, DontWhole = 33, Go = 34;

    public static JsonObject AddedSpecial(int id, string content) => new()
    {
        ["id"] = id,
        ["content"] = content,
        ["single_word"] = false,
        ["lstrip"] = false,
        ["rstrip"] = false,
        ["normalized"] = false,
        ["special"] = true,
    };

    public static JsonObject BertNormalizer(bool lowercase = true, bool? stripAccents = null, bool chinese = true, bool clean = true) => new()
    {
        ["type"] = "BertNormalizer",
        ["clean_text"] = clean,
        ["handle_chinese_chars"] = chinese,
        ["strip_accents"] = stripAccents,
        ["lowercase"] = lowercase,
    };

    public static JsonObject BertProcessing() => new() { ["type"] = "BertProcessing", ["sep"] = new JsonArray("[SEP]", Sep), ["cls"] = new JsonArray("[CLS]", Cls) };

    /// <summary>A bert-base-uncased-shaped tokenizer.json over <see cref="Vocab"/>, with the given parts swapped in.</summary>
    public static string WriteBertJson(string dir, JsonObject? normalizer = null, JsonObject? preTokenizer = null, JsonNode? postProcessor = null, JsonObject? padding = null)
    {
        var vocab = new JsonObject();
        for (int i = 0; i < Vocab.Length; i++) vocab[Vocab[i]] = i;
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = padding,
            ["added_tokens"] = new JsonArray(AddedSpecial(0, "[PAD]"), AddedSpecial(1, "[UNK]"), AddedSpecial(2, "[CLS]"), AddedSpecial(3, "[SEP]"), AddedSpecial(4, "[MASK]")),
            ["normalizer"] = normalizer ?? BertNormalizer(),
            ["pre_tokenizer"] = preTokenizer ?? new JsonObject { ["type"] = "BertPreTokenizer" },
            ["post_processor"] = postProcessor,
            ["decoder"] = new JsonObject { ["type"] = "WordPiece", ["prefix"] = "##", ["cleanup"] = true },
            ["model"] = new JsonObject { ["type"] = "WordPiece", ["unk_token"] = "[UNK]", ["continuing_subword_prefix"] = "##", ["max_input_chars_per_word"] = 100, ["vocab"] = vocab },
        };
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), root.ToJsonString());
        return dir;
    }

    public const int RobertaBos = 0, RobertaPad = 1, RobertaEos = 2, RobertaUnk = 3;
    public const int RobertaHello = 263, RobertaSpaceWorld = 268;

    /// <summary>Byte id in the RoBERTa-style vocabulary: specials take 0-3, byte b is 4 + b.</summary>
    public static int RobertaByte(char c) => 4 + c;

    /// <summary>
    /// roberta-base-shaped tokenizer.json: &lt;s&gt; &lt;pad&gt; &lt;/s&gt; &lt;unk&gt; = 0-3, the 256 byte symbols = 4-259, then merges
    /// building "hello" (263) and "Ġworld" (268); ByteLevel pre-tokenizer and decoder; RobertaProcessing.
    /// </summary>
    public static string WriteRobertaJson(string dir)
    {
        var vocab = new JsonObject { ["<s>"] = 0, ["<pad>"] = 1, ["</s>"] = 2, ["<unk>"] = 3 };
        for (int b = 0; b < 256; b++) vocab[ByteLevelAlphabet.ByteToChar[b].ToString()] = 4 + b;
        string[] merged = { "he", "ll", "llo", "hello", "\u0120w", "or", "\u0120wor", "ld", "\u0120world" };
        for (int i = 0; i < merged.Length; i++) vocab[merged[i]] = 260 + i;
        var merges = new JsonArray("h e", "l l", "ll o", "he llo", "\u0120 w", "o r", "\u0120w or", "l d", "\u0120wor ld");
        var byteLevel = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true };
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(AddedSpecial(0, "<s>"), AddedSpecial(1, "<pad>"), AddedSpecial(2, "</s>"), AddedSpecial(3, "<unk>")),
            ["normalizer"] = null,
            ["pre_tokenizer"] = byteLevel,
            ["post_processor"] = new JsonObject { ["type"] = "RobertaProcessing", ["sep"] = new JsonArray("</s>", 2), ["cls"] = new JsonArray("<s>", 0), ["trim_offsets"] = true, ["add_prefix_space"] = true },
            ["decoder"] = byteLevel.DeepClone(),
            ["model"] = new JsonObject { ["type"] = "BPE", ["unk_token"] = null, ["byte_fallback"] = false, ["vocab"] = vocab, ["merges"] = merges },
        };
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), root.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"),
            "{\"bos_token\": \"<s>\", \"eos_token\": \"</s>\", \"pad_token\": \"<pad>\", \"cls_token\": \"<s>\", \"sep_token\": \"</s>\", \"model_max_length\": 512}");
        return dir;
    }
}
