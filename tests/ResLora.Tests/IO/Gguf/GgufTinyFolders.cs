using System.Text.Json.Nodes;
using ResLora.Models;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.IO.Gguf;

/// <summary>Tiny random-weight Hugging Face folders with a tokenizer, for the GGUF export checks.</summary>
internal static class GgufTinyFolders
{
    public static readonly (string A, string B)[] Merges =
    {
        (" ", "t"), ("h", "e"), (" t", "he"), ("i", "n"), (" ", "a"), ("e", "r"), (" ", "s"), ("o", "n"), (" ", "w"), ("r", "e"),
        ("a", "t"), ("e", "n"), (" ", "c"), ("i", "s"), (" ", "b"), ("o", "r"), ("in", "g"), (" ", "1"), ("1", "2"), (" ", "f"),
    };

    public static readonly string[] Specials = { "<s>", "</s>", "<|im_start|>", "<|im_end|>" };

    public const string Llama3Regex = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    public const string Qwen2Regex = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    public static int ByteLevelVocab => ChatTokenizerFiles.ByteLevelVocabSize(Specials, Merges);

    /// <summary>Writes model + byte-level tokenizer (pre-tokenizer <paramref name="regex"/>, or GPT-2's when null) into <paramref name="dir"/>.</summary>
    public static CausalLM Write(string dir, ModelConfig config, string? regex, long seed = 1, string? chatTemplate = null)
    {
        var cfg = new JsonObject { ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["add_bos_token"] = false };
        if (chatTemplate is not null) cfg["chat_template"] = chatTemplate;
        ChatTokenizerFiles.WriteByteLevel(dir, Specials, Merges, cfg);
        if (regex is not null)
        {
            string p = Path.Combine(dir, "tokenizer.json");
            var root = JsonNode.Parse(File.ReadAllText(p))!.AsObject();
            root["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = regex }, ["behavior"] = "Isolated", ["invert"] = false },
                    new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = false, ["use_regex"] = false }),
            };
            File.WriteAllText(p, root.ToJsonString());
        }
        var model = TinyModels.Build(config, seed);
        ModelFolder.Save(dir, config, model.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)));
        return model;
    }

    public static ModelConfig Llama(bool tied = false, int kvHeads = 2, int extraRows = 0, RopeScaling? rope = null) =>
        TinyModels.Config(tied: tied, kvHeads: kvHeads, rope: rope, vocab: ByteLevelVocab + extraRows) with { IntermediateSize = 64, BosTokenId = null, EosTokenIds = null };

    public static ModelConfig Qwen2() => Llama(tied: true) with { ModelType = "qwen2" };

    public static ModelConfig Qwen3() => Llama(tied: true) with { ModelType = "qwen3", HeadDimRaw = 16 };
}
