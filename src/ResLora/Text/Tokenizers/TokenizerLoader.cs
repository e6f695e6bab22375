using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Tokenizers;
using ResLora.IO;

namespace ResLora.Text;

/// <summary>
/// Loads a model folder's tokenizer: Hugging Face <c>tokenizer.json</c> (preferred), SentencePiece
/// <c>tokenizer.model</c>, or a classic BERT <c>vocab.txt</c>, with BOS/EOS/pad from <c>tokenizer_config.json</c>,
/// <c>generation_config.json</c> and <c>config.json</c>.
/// </summary>
public static class TokenizerLoader
{
    /// <summary>
    /// Loads the tokenizer of the model folder <paramref name="modelDir"/>. When the folder says how specials go around
    /// a text or a text pair (a tokenizer.json <c>post_processor</c> of type BertProcessing, RobertaProcessing,
    /// TemplateProcessing or a Sequence holding one, or a vocab.txt BERT folder), the result also implements
    /// <see cref="ISentencePairTokenizer"/>; an encoder pipeline checks for it with <c>is ISentencePairTokenizer</c>.
    /// </summary>
    public static ITextTokenizer Load(string modelDir)
    {
        InputPaths.ExistingModelFolder(modelDir, flag: null);
        string json = Path.Combine(modelDir, "tokenizer.json"), spm = Path.Combine(modelDir, "tokenizer.model"), vocabTxt = Path.Combine(modelDir, "vocab.txt");
        var cfg = ReadJson(Path.Combine(modelDir, "tokenizer_config.json"));
        var gen = ReadJson(Path.Combine(modelDir, "generation_config.json"));
        var model = ReadJson(Path.Combine(modelDir, "config.json"));
        if (File.Exists(json))
        {
            JsonObject root;
            try
            {
                root = JsonNode.Parse(BoundedFile.ReadAllText(json, BoundedFile.TokenizerLimit, "tokenizer.json")) as JsonObject ?? throw new UserInputException($"{json}: expected a JSON object.");
            }
            catch (JsonException e)
            {
                throw new UserInputException($"{json}: not valid JSON ({e.Message}).", e);
            }
            var tok = FromTokenizerJson(root, json);
            var (bos, eos, pad, addBos) = Specials(cfg, gen, model, tok.TokenId, DefaultAddBos(root, cfg), json);
            return Wrap(tok, bos, eos, pad, addBos, json);
        }
        if (File.Exists(spm))
        {
            LlamaTokenizer sp;
            try
            {
                using var fs = new MemoryStream(BoundedFile.ReadAllBytes(spm, BoundedFile.TokenizerLimit, "tokenizer.model"));
                sp = LlamaTokenizer.Create(fs, addBeginOfSentence: false, addEndOfSentence: false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new UserInputException($"{spm}: not a readable SentencePiece model ({e.Message}).", e);
            }
            var (bos, eos, pad, addBos) = Specials(cfg, gen, model, t => sp.Vocabulary.TryGetValue(t, out int id) ? id : null, true, spm);
            bos ??= sp.BeginningOfSentenceId;
            if (eos.Count == 0) eos.Add(sp.EndOfSentenceId);
            return new SentencePieceModelTokenizer(sp, bos, eos, pad, addBos);
        }
        if (File.Exists(vocabTxt))
        {
            var tok = FromTokenizerJson(Tokenizers.BertVocabFile.ToTokenizerJson(vocabTxt, cfg), vocabTxt);
            // BERT has no BOS/EOS: [CLS]/[SEP] come from the post-processor, never from AddBosToken or EOS-stopping.
            var (_, _, pad, _) = Specials(cfg, gen, model, tok.TokenId, false, vocabTxt);
            return Wrap(tok, null, new List<int>(), pad, false, vocabTxt);
        }
        // DeBERTa-v3 (spm.model), T5 (spiece.model) and XLM-R (sentencepiece.bpe.model) publish SentencePiece unigram models
        // under their own names, often without a tokenizer.json: name the way to one.
        string? spmFile = new[] { "spm.model", "spiece.model", "sentencepiece.bpe.model" }.FirstOrDefault(f => File.Exists(Path.Combine(modelDir, f)));
        if (spmFile is not null)
            throw new FileNotFoundException($"{modelDir}: no tokenizer.json; the folder has the SentencePiece model {spmFile}, which reslora reads through the tokenizer.json that transformers converts it to: "
                + $"python -c \"from transformers import AutoTokenizer; AutoTokenizer.from_pretrained('{modelDir}').save_pretrained('{modelDir}')\" (or copy the model's tokenizer.json into the folder).");
        throw new FileNotFoundException($"{modelDir}: no tokenizer.json, tokenizer.model or vocab.txt; copy the tokenizer files of the model into the folder.");
    }

    /// <summary>
    /// tokenizer_config.json's <c>model_max_length</c> in <paramref name="modelDir"/>: the longest input the tokenizer was
    /// made for (BERT: 512). Null when the file or the field is absent, or holds transformers' "no limit" placeholder (1e30).
    /// </summary>
    public static int? ReadModelMaxLength(string modelDir)
    {
        string path = Path.Combine(modelDir, "tokenizer_config.json");
        if (ReadJson(path)?["model_max_length"] is not JsonValue v) return null;
        if (v.TryGetValue<double>(out double d))
        {
            if (d > int.MaxValue) return null;
            if (d >= 1 && d == Math.Floor(d)) return (int)d;
        }
        throw new UserInputException($"{path}: model_max_length {v.ToJsonString()} must be a positive whole number (BERT: 512).");
    }

    /// <summary>
    /// The tokenizer of a tokenizer.json object: the one place that picks the model class by <c>model.type</c> (BPE when
    /// absent, as tokenizers reads it); the normalizers, pre-tokenizers, decoders and post-processor around it are shared.
    /// </summary>
    private static Tokenizers.HfTokenizer FromTokenizerJson(JsonObject root, string source)
    {
        var model = root["model"] as JsonObject ?? throw new UserInputException($"{source}: 'model' missing.");
        string type = (string?)model["type"] ?? "BPE";
        Tokenizers.ITokenModel tokenModel = type switch
        {
            "BPE" => Tokenizers.BpeModel.FromJson(model, source),
            "WordPiece" => Tokenizers.WordPieceModel.FromJson(model, source),
            "Unigram" => Tokenizers.UnigramModel.FromJson(model, source),
            _ => throw new UserInputException($"{source}: 'model.type' '{type}' is not supported (supported: BPE for the Llama, Mistral, Qwen2, GPT-2 and RoBERTa families; WordPiece for BERT; Unigram for SentencePiece unigram models such as T5, XLM-R and DeBERTa-v3)."),
        };
        return new Tokenizers.HfTokenizer(root, tokenModel, source);
    }

    private static ITextTokenizer Wrap(Tokenizers.HfTokenizer tok, int? bos, List<int> eos, int? pad, bool addBos, string source)
    {
        pad = tok.PaddingId ?? pad;
        if (tok.PostProcessor is null) return new HfJsonTokenizer(tok, bos, eos, pad, addBos);
        // An encoder pads its batches, so a pair tokenizer also finds the pad token by its usual names.
        pad ??= tok.TokenId("[PAD]") ?? tok.TokenId("<pad>");
        return new HfPairTokenizer(tok, tok.PostProcessor, bos, eos, pad, addBos, source);
    }

    private static JsonObject? ReadJson(string path)
    {
        if (!File.Exists(path)) return null;
        try
        {
            return JsonNode.Parse(BoundedFile.ReadAllText(path, BoundedFile.ConfigLimit, "JSON config"), documentOptions: new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip }) as JsonObject;
        }
        catch (JsonException e)
        {
            throw new UserInputException($"{path}: not valid JSON ({e.Message}).", e);
        }
    }

    /// <summary>Without add_bos_token in tokenizer_config.json, BOS is added when the post-processor template starts with a special token.</summary>
    private static bool DefaultAddBos(JsonObject root, JsonObject? cfg)
    {
        if (cfg?["add_bos_token"] is JsonValue v && v.TryGetValue<bool>(out bool b)) return b;
        if (root["post_processor"] is JsonObject pp)
        {
            var procs = (string?)pp["type"] == "Sequence" ? (pp["processors"] as JsonArray ?? new JsonArray()).OfType<JsonObject>() : new[] { pp };
            foreach (var p in procs)
                if ((string?)p["type"] == "TemplateProcessing" && p["single"] is JsonArray single && single.Count > 0 && single[0] is JsonObject first && first.ContainsKey("SpecialToken"))
                    return true;
        }
        return false;
    }

    private static string? TokenContent(JsonNode? n) => n switch
    {
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonObject o => (string?)o["content"],
        _ => null,
    };

    private static List<int> Ids(JsonNode? n) => n switch
    {
        JsonValue v when v.TryGetValue<int>(out int i) => new List<int> { i },
        JsonArray a => a.Select(x => (int)x!).ToList(),
        _ => new List<int>(),
    };

    private static (int? Bos, List<int> Eos, int? Pad, bool AddBos) Specials(JsonObject? cfg, JsonObject? gen, JsonObject? model, Func<string, int?> lookup, bool addBosDefault, string source)
    {
        int? Resolve(string field)
        {
            string? content = TokenContent(cfg?[field]);
            if (content is null) return null;
            return lookup(content) ?? throw new UserInputException($"{source}: tokenizer_config.json names {field} '{content}', which is not in the vocabulary.");
        }
        int? bos = Resolve("bos_token") ?? Ids(gen?["bos_token_id"]).Cast<int?>().FirstOrDefault() ?? Ids(model?["bos_token_id"]).Cast<int?>().FirstOrDefault();
        var eos = new List<int>();
        foreach (int e in Ids(gen?["eos_token_id"])) if (!eos.Contains(e)) eos.Add(e);
        if (Resolve("eos_token") is { } te && !eos.Contains(te)) eos.Add(te);
        if (eos.Count == 0) eos.AddRange(Ids(model?["eos_token_id"]));
        int? pad = Resolve("pad_token") ?? Ids(gen?["pad_token_id"]).Cast<int?>().FirstOrDefault() ?? Ids(model?["pad_token_id"]).Cast<int?>().FirstOrDefault();
        bool addBos = cfg?["add_bos_token"] is JsonValue v && v.TryGetValue<bool>(out bool b) ? b : addBosDefault;
        return (bos, eos, pad, addBos && bos is not null);
    }

    private class HfJsonTokenizer(Tokenizers.HfTokenizer tok, int? bos, IReadOnlyList<int> eos, int? pad, bool addBos) : ITextTokenizer, ITokenOffsets
    {
        protected Tokenizers.HfTokenizer Tok => tok;
        public IReadOnlyList<TokenOffset> EncodeWithOffsets(string text) => tok.EncodeWithOffsets(text).Select(t => new TokenOffset(t.Id, t.Start, t.End)).ToList();
        public string TokenString(int id) => tok.TokenString(id);
        public bool IsSpecial(int id) => tok.IsSpecial(id);
        public int VocabSize => tok.VocabSize;
        public int? BosTokenId => bos;
        public IReadOnlyList<int> EosTokenIds => eos;
        public int? PadTokenId => pad;
        public bool AddBosToken => addBos;
        public IReadOnlyList<int> Encode(string text) => tok.Encode(text);
        public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true) => tok.Decode(ids, skipSpecialTokens);
    }

    /// <summary>A tokenizer.json or vocab.txt tokenizer whose post-processor adds the model's specials.</summary>
    private sealed class HfPairTokenizer(Tokenizers.HfTokenizer tok, Tokenizers.PostProcessor post, int? bos, IReadOnlyList<int> eos, int? pad, bool addBos, string source)
        : HfJsonTokenizer(tok, bos, eos, pad, addBos), ISentencePairTokenizer
    {
        public int PadId => PadTokenId ?? throw new UserInputException(
            $"{source}: no pad token (no tokenizer.json padding.pad_id, no pad_token in tokenizer_config.json, no pad_token_id in config.json, no [PAD] or <pad> in the vocabulary); name one in tokenizer_config.json's pad_token.");

        public EncodedInput EncodeForModel(string text, string? pair, int maxLength) =>
            post.Encode(Tok.Encode(text), pair is null ? null : Tok.Encode(pair), maxLength);
    }

    private sealed class SentencePieceModelTokenizer(LlamaTokenizer sp, int? bos, IReadOnlyList<int> eos, int? pad, bool addBos) : ITextTokenizer
    {
        public int VocabSize => sp.Vocabulary.Count;
        public int? BosTokenId => bos;
        public IReadOnlyList<int> EosTokenIds => eos;
        public int? PadTokenId => pad;
        public bool AddBosToken => addBos;
        public IReadOnlyList<int> Encode(string text) => sp.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false);
        public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true) =>
            sp.Decode(skipSpecialTokens ? ids.Where(i => i != bos && !eos.Contains(i) && i != pad) : ids) ?? "";
    }
}
