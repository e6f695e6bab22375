using System.Text.Json.Nodes;
using ResLora.Text.Tokenizers;

namespace ResLora.Tests.Infrastructure;

/// <summary>
/// Small tokenizer.json folders for chat tests: a GPT-2-style byte-level BPE (ids 0-255 are the bytes, then one id per
/// merge, then the special tokens) and a Llama-2-style SentencePiece BPE (Prepend/Replace normalizers, byte fallback).
/// </summary>
internal static class ChatTokenizerFiles
{
    /// <summary>Every family's special tokens, so one tokenizer serves all chat templates.</summary>
    public static readonly string[] FamilySpecials =
    {
        "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
        "<|eot_id|>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>",
    };

    public static JsonObject Special(int id, string content) => new()
    {
        ["id"] = id,
        ["content"] = content,
        ["single_word"] = false,
        ["lstrip"] = false,
        ["rstrip"] = false,
        ["normalized"] = false,
        ["special"] = true,
    };

    /// <summary>
    /// Writes a byte-level BPE tokenizer.json into <paramref name="dir"/>. <paramref name="merges"/> are pairs of plain
    /// text (" w" is written Ġw). Returns the id of each special token.
    /// </summary>
    public static Dictionary<string, int> WriteByteLevel(string dir, IReadOnlyList<string> specials, IReadOnlyList<(string A, string B)> merges,
        JsonObject? tokenizerConfig = null)
    {
        Directory.CreateDirectory(dir);
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++) vocab[ByteLevelAlphabet.ByteToChar[b].ToString()] = b;
        var mergeList = new JsonArray();
        int next = 256;
        foreach (var (a, b) in merges)
        {
            string x = ByteLevelAlphabet.Encode(a), y = ByteLevelAlphabet.Encode(b);
            mergeList.Add(new JsonArray(x, y));
            if (!vocab.ContainsKey(x + y)) vocab[x + y] = next++;
        }
        var ids = new Dictionary<string, int>();
        var added = new JsonArray();
        foreach (var s in specials)
        {
            ids[s] = next;
            added.Add(Special(next++, s));
        }
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = added,
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true },
            ["model"] = new JsonObject { ["type"] = "BPE", ["unk_token"] = null, ["byte_fallback"] = false, ["vocab"] = vocab, ["merges"] = mergeList },
        };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), root.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), (tokenizerConfig ?? new JsonObject()).ToJsonString());
        return ids;
    }

    /// <summary>The vocabulary size of <see cref="WriteByteLevel"/>'s tokenizer.</summary>
    public static int ByteLevelVocabSize(IReadOnlyList<string> specials, IReadOnlyList<(string A, string B)> merges) =>
        256 + merges.Select(m => m.A + m.B).Distinct().Count() + specials.Count;

    /// <summary>
    /// Writes a Llama-2-style tokenizer.json (Prepend ▁, spaces → ▁, byte fallback): ids 0 &lt;unk&gt;, then the specials,
    /// then the 256 byte pieces, then single characters and merges (written with ▁ for a space).
    /// </summary>
    public static Dictionary<string, int> WriteSentencePiece(string dir, IReadOnlyList<string> specials, IReadOnlyList<string> chars,
        IReadOnlyList<(string A, string B)> merges, JsonObject? tokenizerConfig = null)
    {
        Directory.CreateDirectory(dir);
        var vocab = new JsonObject { ["<unk>"] = 0 };
        var added = new JsonArray(Special(0, "<unk>"));
        var ids = new Dictionary<string, int>();
        int next = 1;
        foreach (var s in specials)
        {
            ids[s] = next;
            vocab[s] = next;
            added.Add(Special(next++, s));
        }
        for (int b = 0; b < 256; b++) vocab[$"<0x{b:X2}>"] = next++;
        foreach (var c in chars)
            if (!vocab.ContainsKey(c)) vocab[c] = next++;
        var mergeList = new JsonArray();
        foreach (var (a, b) in merges)
        {
            mergeList.Add(new JsonArray(a, b));
            if (!vocab.ContainsKey(a + b)) vocab[a + b] = next++;
        }
        foreach (var (k, v) in vocab) ids.TryAdd(k, (int)v!);
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = added,
            ["normalizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["normalizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Prepend", ["prepend"] = "\u2581" },
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = "\u2581" }),
            },
            ["pre_tokenizer"] = null,
            ["decoder"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["decoders"] = new JsonArray(
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = "\u2581" }, ["content"] = " " },
                    new JsonObject { ["type"] = "ByteFallback" },
                    new JsonObject { ["type"] = "Fuse" },
                    new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 }),
            },
            ["model"] = new JsonObject { ["type"] = "BPE", ["unk_token"] = "<unk>", ["byte_fallback"] = true, ["vocab"] = vocab, ["merges"] = mergeList },
        };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), root.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), (tokenizerConfig ?? new JsonObject()).ToJsonString());
        return ids;
    }
}
