using System.Text.Json.Nodes;

namespace ResLora.Text.Tokenizers;

/// <summary>
/// A classic BERT folder that has only <c>vocab.txt</c> (and perhaps tokenizer_config.json), turned into the tokenizer.json
/// that transformers' slow-to-fast converter (<c>BertConverter</c>) would write for it, so it runs through the same
/// <see cref="HfTokenizer"/> as every other folder: BertNormalizer (clean_text, handle_chinese_chars from
/// <c>tokenize_chinese_chars</c>, strip_accents, lowercase from <c>do_lower_case</c>), BertPreTokenizer, WordPiece with
/// <c>##</c> and 100 chars per word, the BERT template and the WordPiece decoder; the specials are added tokens so that
/// "[CLS]" written in a text stays one token.
/// </summary>
internal static class BertVocabFile
{
    /// <summary>Builds the tokenizer.json object for <paramref name="vocabPath"/> and tokenizer_config.json <paramref name="cfg"/>.</summary>
    public static JsonObject ToTokenizerJson(string vocabPath, JsonObject? cfg)
    {
        // transformers' load_vocab: one token per line (universal newlines), id = line index; a repeated token keeps its
        // last index, as a Python dict assignment would.
        string text = File.ReadAllText(vocabPath);
        var lines = text.Split('\n');
        int count = lines.Length > 0 && lines[^1].Length == 0 ? lines.Length - 1 : lines.Length;
        if (count == 0) throw new UserInputException($"{vocabPath}: empty; a BERT vocab.txt lists one token per line.");
        var vocab = new JsonObject();
        for (int i = 0; i < count; i++) vocab[lines[i].TrimEnd('\r')] = i;

        bool Flag(string field, bool dflt) => cfg?[field] is JsonValue v ? v.TryGetValue<bool>(out bool b) ? b : throw Bad(field, "must be true or false") : dflt;
        if (!Flag("do_basic_tokenize", true))
            throw Bad("do_basic_tokenize", "false is not supported (only BERT's basic tokenization: clean, split on whitespace and punctuation, then WordPiece)");
        bool lower = Flag("do_lower_case", true);
        JsonNode? strip = cfg?["strip_accents"] is JsonValue sv ? sv.TryGetValue<bool>(out bool sb) ? sb : throw Bad("strip_accents", "must be true, false or null") : null;
        string Token(string field, string dflt) => cfg?[field] switch
        {
            null => dflt,
            JsonValue v when v.TryGetValue<string>(out var s) => s,
            JsonObject o when (string?)o["content"] is { } c => c,
            _ => throw Bad(field, "must be a token string or an object with \"content\""),
        };
        string cls = Token("cls_token", "[CLS]"), sep = Token("sep_token", "[SEP]"), unk = Token("unk_token", "[UNK]");
        string pad = Token("pad_token", "[PAD]"), mask = Token("mask_token", "[MASK]");
        int Required(string field, string token) => vocab[token] is JsonValue id ? (int)id : throw new UserInputException(
            $"{vocabPath}: the {field} '{token}' is not in the vocabulary; BERT needs it (name the right token in tokenizer_config.json's {field}).");
        int clsId = Required("cls_token", cls), sepId = Required("sep_token", sep);
        Required("unk_token", unk);

        var added = new JsonArray();
        foreach (string t in new[] { pad, unk, cls, sep, mask }.Distinct())
            if (vocab[t] is JsonValue id)
                added.Add(new JsonObject { ["id"] = (int)id, ["content"] = t, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = false, ["special"] = true });
        JsonObject Special(string t) => new() { ["SpecialToken"] = new JsonObject { ["id"] = t, ["type_id"] = 0 } };
        JsonObject Special1(string t) => new() { ["SpecialToken"] = new JsonObject { ["id"] = t, ["type_id"] = 1 } };
        JsonObject Seq(string id, int type) => new() { ["Sequence"] = new JsonObject { ["id"] = id, ["type_id"] = type } };
        return new JsonObject
        {
            ["added_tokens"] = added,
            ["normalizer"] = new JsonObject
            {
                ["type"] = "BertNormalizer",
                ["clean_text"] = true,
                ["handle_chinese_chars"] = Flag("tokenize_chinese_chars", true),
                ["strip_accents"] = strip,
                ["lowercase"] = lower,
            },
            ["pre_tokenizer"] = new JsonObject { ["type"] = "BertPreTokenizer" },
            ["post_processor"] = new JsonObject
            {
                ["type"] = "TemplateProcessing",
                ["single"] = new JsonArray(Special(cls), Seq("A", 0), Special(sep)),
                ["pair"] = new JsonArray(Special(cls), Seq("A", 0), Special(sep), Seq("B", 1), Special1(sep)),
                ["special_tokens"] = new JsonObject
                {
                    [cls] = new JsonObject { ["id"] = cls, ["ids"] = new JsonArray(clsId), ["tokens"] = new JsonArray(cls) },
                    [sep] = new JsonObject { ["id"] = sep, ["ids"] = new JsonArray(sepId), ["tokens"] = new JsonArray(sep) },
                },
            },
            ["decoder"] = new JsonObject { ["type"] = "WordPiece", ["prefix"] = "##", ["cleanup"] = true },
            ["model"] = new JsonObject { ["type"] = "WordPiece", ["unk_token"] = unk, ["continuing_subword_prefix"] = "##", ["max_input_chars_per_word"] = 100, ["vocab"] = vocab },
        };

        UserInputException Bad(string field, string what) => new($"{vocabPath}: tokenizer_config.json '{field}' {what}.");
    }
}
