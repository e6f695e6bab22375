using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using ResLora.IO;
using ResLora.IO.Gguf;
using ResLora.Text;

namespace ResLora.Pipelines;

/// <summary>
/// A model folder's tokenizer.json (+ tokenizer_config.json) as llama.cpp's <c>tokenizer.ggml.*</c> metadata, the way
/// convert_hf_to_gguf.py writes it: a byte-fallback BPE (Llama-2 / Mistral style) as <c>llama</c> (SentencePiece: tokens,
/// scores, token types with BYTE pieces), a byte-level BPE (GPT-2 / Llama-3 / Qwen) as <c>gpt2</c> (tokens, types, merges,
/// the pre-tokenizer name). The list always has exactly as many entries as the embedding has rows: ids tokenizer.json
/// lacks are <c>[PAD{i}]</c> of type UNUSED.
/// </summary>
public static class GgufVocabExport
{
    // gguf-py's TokenType.
    private const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6;

    // The pre-tokenizer regexes convert_hf_to_gguf's get_vocab_base_pre recognises (through their tokenization) by name.
    private const string Llama3Regex = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    private const string Qwen2Regex = @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    private const string Qwen2RegexAlt = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    // o200k (GPT-4o; Phi-4-mini's tokenizer): llama.cpp's "gpt-4o".
    private const string Gpt4oRegex = @"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private static readonly Regex BytePiece = new(@"^<0x[0-9A-Fa-f]{2}>$", RegexOptions.CultureInvariant);

    /// <summary>
    /// Writes the vocabulary of <paramref name="modelDir"/> padded to <paramref name="vocabRows"/> entries; returns the tokenizer
    /// model name (llama or gpt2). Added tokens past the embedding rows (Gemma 3's multimodal <c>&lt;image_soft_token&gt;</c>
    /// beside a text model) are left out, as llama.cpp's converter does, and said in <paramref name="notes"/>.
    /// </summary>
    public static string Write(GgufWriter w, string modelDir, int vocabRows, List<string>? notes = null)
    {
        string path = Path.Combine(modelDir, "tokenizer.json");
        if (!File.Exists(path))
            throw new UserInputException($"{modelDir}: no tokenizer.json; GGUF export needs the Hugging Face tokenizer.json (copy the tokenizer files of the model into the folder).");
        var root = ReadObject(path) ?? throw new UserInputException($"{path}: expected a JSON object.");
        var cfg = ReadObject(Path.Combine(modelDir, "tokenizer_config.json"));
        var model = root["model"] as JsonObject;
        if ((string?)model?["type"] != "BPE" || model["vocab"] is not JsonObject vocab)
            throw new UserInputException($"{path}: model type '{(string?)model?["type"]}' is not exported to GGUF; supported are BPE with byte fallback (Llama-2/Mistral) and byte-level BPE (GPT-2, Llama-3, Qwen).");
        bool spm = (bool?)model["byte_fallback"] ?? false;
        string? pre = spm ? null : PreName(root, path);

        var byId = new Dictionary<int, string>();
        foreach (var (tok, id) in vocab) byId[(int)id!] = tok;
        var added = new Dictionary<int, (string Content, bool Special)>();
        foreach (var a in (root["added_tokens"] as JsonArray ?? new JsonArray()).OfType<JsonObject>())
            added[(int)a["id"]!] = ((string)a["content"]!, (bool?)a["special"] ?? false);
        var beyond = added.Keys.Where(id => id >= vocabRows && !byId.ContainsKey(id)).OrderBy(id => id).ToList();
        if (beyond.Count > 0)
        {
            notes?.Add($"tokenizer.json's added token(s) {string.Join(", ", beyond.Take(5).Select(id => $"'{added[id].Content}' ({id})"))}{(beyond.Count > 5 ? ", …" : "")} lie past the model's {vocabRows} embedding rows and are left out of the GGUF vocabulary.");
            foreach (var id in beyond) added.Remove(id);
        }
        int maxId = byId.Keys.Concat(added.Keys).DefaultIfEmpty(-1).Max();
        if (maxId >= vocabRows)
            throw new UserInputException($"{path}: token id {maxId} is beyond the model's {vocabRows} embedding rows; the tokenizer does not belong to this model.");

        var ranks = spm ? MergeRanks(model) : null;
        string? unk = (string?)model["unk_token"];
        var tokens = new List<string>(vocabRows);
        var types = new List<int>(vocabRows);
        var scores = new List<float>(vocabRows);
        for (int i = 0; i < vocabRows; i++)
        {
            if (added.TryGetValue(i, out var a))
            {
                tokens.Add(a.Content);
                types.Add(a.Content == unk ? Unknown : a.Special || LooksSpecial(a.Content) ? Control : UserDefined);
                scores.Add(0f);
            }
            else if (byId.TryGetValue(i, out var t))
            {
                tokens.Add(t);
                types.Add(t == unk ? Unknown : spm && BytePiece.IsMatch(t) ? Byte : Normal);
                // SentencePiece merges by score: a merged piece scores minus its merge rank, so llama.cpp merges in tokenizer.json's order.
                scores.Add(ranks is not null && ranks.TryGetValue(t, out int r) ? -r : 0f);
            }
            else
            {
                tokens.Add($"[PAD{i}]");
                types.Add(Unused);
                scores.Add(0f);
            }
        }

        w.Set("tokenizer.ggml.model", spm ? "llama" : "gpt2");
        if (pre is not null) w.Set("tokenizer.ggml.pre", pre);
        w.SetStrings("tokenizer.ggml.tokens", tokens);
        if (spm) w.SetFloats("tokenizer.ggml.scores", scores);
        w.SetInts("tokenizer.ggml.token_type", types);
        if (!spm) w.SetStrings("tokenizer.ggml.merges", Merges(model));
        if (spm) w.Set("tokenizer.ggml.add_space_prefix", PrependsSpace(root));

        var tk = TokenizerLoader.Load(modelDir);
        if (tk.BosTokenId is int bos) w.Set("tokenizer.ggml.bos_token_id", (uint)bos);
        if (tk.EosTokenIds.Count > 0) w.Set("tokenizer.ggml.eos_token_id", (uint)tk.EosTokenIds[0]);
        if (unk is not null && vocab[unk] is JsonValue uv) w.Set("tokenizer.ggml.unknown_token_id", (uint)(int)uv);
        if (tk.PadTokenId is int pad) w.Set("tokenizer.ggml.padding_token_id", (uint)pad);
        w.Set("tokenizer.ggml.add_bos_token", tk.AddBosToken);
        w.Set("tokenizer.ggml.add_eos_token", cfg?["add_eos_token"] is JsonValue ae && ae.TryGetValue<bool>(out bool e) && e);
        if (ChatTemplate(cfg) is { } tpl) w.Set("tokenizer.chat_template", tpl);
        return spm ? "llama" : "gpt2";
    }

    /// <summary>tokenizer_config.json's chat_template (the "default" one of a named list), or null.</summary>
    public static string? ChatTemplate(JsonObject? cfg) => cfg?["chat_template"] switch
    {
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonArray list => list.OfType<JsonObject>().Where(o => (string?)o["name"] == "default").Select(o => (string?)o["template"]).FirstOrDefault(),
        _ => null,
    };

    public static JsonObject? ReadObject(string path)
    {
        if (!File.Exists(path)) return null;
        try
        {
            return JsonNode.Parse(BoundedFile.ReadAllText(path, BoundedFile.TokenizerLimit, Path.GetFileName(path))) as JsonObject;
        }
        catch (JsonException e)
        {
            throw new UserInputException($"{path}: not valid JSON ({e.Message}).", e);
        }
    }

    /// <summary>llama.cpp's name of a byte-level pre-tokenizer, from its split regex; an unknown one is refused, naming it.</summary>
    private static string PreName(JsonObject root, string path)
    {
        var pres = Flatten(root["pre_tokenizer"] as JsonObject).ToList();
        if (!pres.Any(p => (string?)p["type"] == "ByteLevel"))
            throw new UserInputException($"{path}: a BPE without byte fallback and without a ByteLevel pre-tokenizer is not a tokenizer llama.cpp loads.");
        var split = pres.FirstOrDefault(p => (string?)p["type"] == "Split");
        if (split is null)
        {
            bool gpt2 = pres.Any(p => (string?)p["type"] == "ByteLevel" && ((bool?)p["use_regex"] ?? true));
            return gpt2 ? "gpt-2" : throw new UserInputException($"{path}: a ByteLevel pre-tokenizer without its regex (use_regex false) is not one llama.cpp knows.");
        }
        string regex = (string?)split["pattern"]?["Regex"] ?? (string?)split["pattern"]?["String"] ?? "";
        return regex switch
        {
            Llama3Regex => "llama-bpe",
            Qwen2Regex or Qwen2RegexAlt => "qwen2",
            Gpt4oRegex => "gpt-4o",
            _ => throw new UserInputException($"{path}: the pre-tokenizer regex {regex} is not one llama.cpp knows by name (llama-bpe for Llama-3, qwen2 for Qwen2/Qwen3, gpt-4o for o200k/Phi-4-mini); this tokenizer cannot be exported to GGUF."),
        };
    }

    private static IEnumerable<JsonObject> Flatten(JsonObject? p)
    {
        if (p is null) yield break;
        if ((string?)p["type"] == "Sequence")
        {
            foreach (var x in (p["pretokenizers"] as JsonArray ?? new JsonArray()).OfType<JsonObject>())
                foreach (var y in Flatten(x)) yield return y;
        }
        else yield return p;
    }

    private static IEnumerable<(string A, string B)> MergePairs(JsonObject model)
    {
        foreach (var m in model["merges"] as JsonArray ?? new JsonArray())
        {
            if (m is JsonArray pair) yield return ((string)pair[0]!, (string)pair[1]!);
            else if ((string?)m is { } s && s.IndexOf(' ', 1) is int sp and > 0) yield return (s[..sp], s[(sp + 1)..]);
        }
    }

    private static List<string> Merges(JsonObject model) => MergePairs(model).Select(p => $"{p.A} {p.B}").ToList();

    private static Dictionary<string, int> MergeRanks(JsonObject model)
    {
        var d = new Dictionary<string, int>(StringComparer.Ordinal);
        int r = 1;
        foreach (var (a, b) in MergePairs(model)) d.TryAdd(a + b, r++);
        return d;
    }

    /// <summary>Whether the normalizer or pre-tokenizer puts ▁ before the text (a Prepend normalizer, or Metaspace prepending).</summary>
    private static bool PrependsSpace(JsonObject root)
    {
        static IEnumerable<JsonObject> All(JsonObject? n, string list) =>
            n is null ? Enumerable.Empty<JsonObject>() : (string?)n["type"] == "Sequence" ? (n[list] as JsonArray ?? new JsonArray()).OfType<JsonObject>() : new[] { n };
        if (All(root["normalizer"] as JsonObject, "normalizers").Any(n => (string?)n["type"] == "Prepend")) return true;
        return All(root["pre_tokenizer"] as JsonObject, "pretokenizers").Any(p => (string?)p["type"] == "Metaspace"
            && ((string?)p["prepend_scheme"] is "always" or "first" || (bool?)p["add_prefix_space"] == true));
    }

    /// <summary>convert_hf_to_gguf's does_token_look_special: &lt;|...|&gt;, &lt;s&gt;-style and [CLS]-style names.</summary>
    private static bool LooksSpecial(string t) =>
        (t.StartsWith("<|", StringComparison.Ordinal) && t.EndsWith("|>", StringComparison.Ordinal))
        || t is "<s>" or "</s>" or "<pad>" or "<unk>" or "<mask>" or "<eos>" or "<bos>"
        || (t.StartsWith("[", StringComparison.Ordinal) && t.EndsWith("]", StringComparison.Ordinal) && t.Length > 2 && t[1..^1].All(char.IsUpper));
}
