using System.Text.Json;
using System.Text.Json.Nodes;

namespace ResLora.Demo;

/// <summary>
/// Writes the demo model's tokenizer as real Hugging Face files (tokenizer.json, tokenizer_config.json,
/// special_tokens_map.json) in the SentencePiece-style BPE family with byte fallback, the family of Llama 2 and
/// TinyLlama: ids 0..2 are &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;, ids 3..258 the byte pieces &lt;0x00&gt;..&lt;0xFF&gt;, then
/// "▁" and one piece per character of <see cref="DemoCorpus.Alphabet"/>, with no merges (character level).
/// Spaces become "▁" (no "▁" is prepended, so a completion " 12" tokenizes the same alone as after its prompt).
/// The demo thus loads its tokenizer through the same code path as a user's model folder.
/// </summary>
public static class DemoTokenizerFiles
{
    public const int UnkId = 0, BosId = 1, EosId = 2;

    /// <summary>The vocabulary in id order.</summary>
    public static IReadOnlyList<string> Vocabulary()
    {
        var v = new List<string> { "<unk>", "<s>", "</s>" };
        for (int b = 0; b < 256; b++) v.Add($"<0x{b:X2}>");
        v.Add("\u2581");
        foreach (char c in DemoCorpus.Alphabet)
            if (c != ' ') v.Add(c.ToString());
        return v;
    }

    public static int VocabSize => Vocabulary().Count;

    public static void Write(string dir)
    {
        Directory.CreateDirectory(dir);
        var vocab = Vocabulary();
        var vocabObj = new JsonObject();
        for (int i = 0; i < vocab.Count; i++) vocabObj[vocab[i]] = i;
        JsonObject Special(int id, string content) => new()
        {
            ["id"] = id,
            ["content"] = content,
            ["single_word"] = false,
            ["lstrip"] = false,
            ["rstrip"] = false,
            ["normalized"] = false,
            ["special"] = true,
        };
        var tok = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new JsonArray(Special(UnkId, "<unk>"), Special(BosId, "<s>"), Special(EosId, "</s>")),
            ["normalizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["normalizers"] = new JsonArray(new JsonObject
                {
                    ["type"] = "Replace",
                    ["pattern"] = new JsonObject { ["String"] = " " },
                    ["content"] = "\u2581",
                }),
            },
            ["pre_tokenizer"] = null,
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(
                    new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 0 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
                ["pair"] = new JsonArray(
                    new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 0 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } },
                    new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<s>", ["type_id"] = 1 } },
                    new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "B", ["type_id"] = 1 } }),
                ["special_tokens"] = new JsonObject
                {
                    ["<s>"] = new JsonObject { ["id"] = "<s>", ["ids"] = new JsonArray(BosId), ["tokens"] = new JsonArray("<s>") },
                },
            },
            ["decoder"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["decoders"] = new JsonArray(
                    new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = "\u2581" }, ["content"] = " " },
                    new JsonObject { ["type"] = "ByteFallback" },
                    new JsonObject { ["type"] = "Fuse" }),
            },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = "<unk>",
                ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null,
                ["fuse_unk"] = true,
                ["byte_fallback"] = true,
                ["ignore_merges"] = false,
                ["vocab"] = vocabObj,
                ["merges"] = new JsonArray(),
            },
        };
        var opts = new JsonSerializerOptions { WriteIndented = true };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), tok.ToJsonString(opts));
        var cfg = new JsonObject
        {
            ["add_bos_token"] = true,
            ["add_eos_token"] = false,
            ["bos_token"] = "<s>",
            ["eos_token"] = "</s>",
            ["unk_token"] = "<unk>",
            ["pad_token"] = null,
            ["model_max_length"] = 1024,
            ["tokenizer_class"] = "LlamaTokenizer",
        };
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), cfg.ToJsonString(opts));
        var map = new JsonObject { ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["unk_token"] = "<unk>" };
        File.WriteAllText(Path.Combine(dir, "special_tokens_map.json"), map.ToJsonString(opts));
    }
}
