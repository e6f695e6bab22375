using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.IO;
using ResLora.IO.Json;

namespace ResLora.Models;

/// <summary>
/// <c>rope_scaling</c> of a Hugging Face config.json. Older files name the kind <c>type</c>, newer ones <c>rope_type</c>.
/// </summary>
public sealed record RopeScaling
{
    [JsonPropertyName("rope_type")] public string? RopeType { get; init; }
    [JsonPropertyName("type")] public string? Type { get; init; }
    [JsonPropertyName("factor")] public double Factor { get; init; } = 1.0;
    [JsonPropertyName("low_freq_factor")] public double LowFreqFactor { get; init; } = 1.0;
    [JsonPropertyName("high_freq_factor")] public double HighFreqFactor { get; init; } = 4.0;
    /// <summary>As written in rope_scaling (null when absent): LongRoPE tells an absent value from a given one.</summary>
    [JsonPropertyName("original_max_position_embeddings")] public int? OriginalMaxPositionEmbeddingsRaw { get; init; }
    /// <summary>llama3's original context (8192 when rope_scaling does not give it).</summary>
    [JsonIgnore] public int OriginalMaxPositionEmbeddings { get => OriginalMaxPositionEmbeddingsRaw ?? 8192; init => OriginalMaxPositionEmbeddingsRaw = value; }
    /// <summary>LongRoPE (Phi-3 128k, Phi-4-mini): per-frequency divisors within the original context (rotary dim / 2 of them).</summary>
    [JsonPropertyName("short_factor")] public IReadOnlyList<double>? ShortFactor { get; init; }
    /// <summary>LongRoPE: per-frequency divisors beyond the original context.</summary>
    [JsonPropertyName("long_factor")] public IReadOnlyList<double>? LongFactor { get; init; }
    /// <summary>LongRoPE/YaRN: the scale of cos and sin; absent = derived from the context extension.</summary>
    [JsonPropertyName("attention_factor")] public double? AttentionFactor { get; init; }

    /// <summary>
    /// The scaling kind: "default", "linear", "llama3", "longrope" (Phi-3's older name "su" is read as "longrope", as
    /// transformers' Phi3Config does) or another a family may implement.
    /// </summary>
    [JsonIgnore] public string Kind => (RopeType ?? Type ?? "default").ToLowerInvariant() is var k && k == "su" ? "longrope" : k;
}

/// <summary>
/// The LLaMA-family fields of a Hugging Face <c>config.json</c> (Llama 1/2/3, Mistral, Qwen2, TinyLlama, SmolLM).
/// Immutable; runtime choices (device, dtype, threads) live in <see cref="RuntimeOptions"/>.
/// </summary>
public sealed record ModelConfig
{
    [JsonPropertyName("architectures")] public IReadOnlyList<string>? Architectures { get; init; }
    [JsonPropertyName("model_type")] public string ModelType { get; init; } = "llama";
    [JsonPropertyName("vocab_size")] public int VocabSize { get; init; } = 32000;
    [JsonPropertyName("hidden_size")] public int HiddenSize { get; init; } = 4096;
    [JsonPropertyName("intermediate_size")] public int IntermediateSize { get; init; } = 11008;
    [JsonPropertyName("num_hidden_layers")] public int NumHiddenLayers { get; init; } = 32;
    [JsonPropertyName("num_attention_heads")] public int NumAttentionHeads { get; init; } = 32;
    /// <summary>Absent in older configs: then equal to <see cref="NumAttentionHeads"/> (no grouped-query attention).</summary>
    [JsonPropertyName("num_key_value_heads")] public int? NumKeyValueHeadsRaw { get; init; }
    /// <summary>Absent in most configs: then <c>hidden_size / num_attention_heads</c>.</summary>
    [JsonPropertyName("head_dim")] public int? HeadDimRaw { get; init; }
    [JsonPropertyName("hidden_act")] public string HiddenAct { get; init; } = "silu";
    [JsonPropertyName("rms_norm_eps")] public double RmsNormEps { get; init; } = 1e-6;
    [JsonPropertyName("rope_theta")] public double RopeTheta { get; init; } = 10000.0;
    [JsonPropertyName("rope_scaling")] public RopeScaling? RopeScaling { get; init; }
    [JsonPropertyName("max_position_embeddings")] public int MaxPositionEmbeddings { get; init; } = 2048;
    /// <summary>
    /// Absent in some config.json files whose config class defaults it to true (SmolLM3-3B's has no such key): then the
    /// family's <see cref="ICausalLMFamily.TiesEmbeddingsByDefault"/>; see <see cref="TieWordEmbeddings"/>.
    /// </summary>
    [JsonPropertyName("tie_word_embeddings")] public bool? TieWordEmbeddingsRaw { get; init; }
    [JsonIgnore]
    public bool TieWordEmbeddings
    {
        get => TieWordEmbeddingsRaw ?? (ModelFamilies.Find(ModelType) as ICausalLMFamily)?.TiesEmbeddingsByDefault ?? false;
        init => TieWordEmbeddingsRaw = value;
    }
    /// <summary>Qwen2 has q/k/v biases but no such field: see <see cref="HasQkvBias"/>.</summary>
    [JsonPropertyName("attention_bias")] public bool AttentionBias { get; init; }
    [JsonPropertyName("mlp_bias")] public bool MlpBias { get; init; }
    /// <summary>Mistral's attention window in tokens (null = full attention); Qwen2/Qwen3 use it only with <see cref="UseSlidingWindow"/>.</summary>
    [JsonPropertyName("sliding_window")] public int? SlidingWindow { get; init; }
    /// <summary>Qwen2/Qwen3: whether layers from <see cref="MaxWindowLayers"/> on attend within <see cref="SlidingWindow"/>.</summary>
    [JsonPropertyName("use_sliding_window")] public bool UseSlidingWindow { get; init; }
    [JsonPropertyName("max_window_layers")] public int? MaxWindowLayers { get; init; }
    [JsonPropertyName("torch_dtype")] public string? TorchDtype { get; init; }
    [JsonPropertyName("bos_token_id")] public int? BosTokenId { get; init; }
    /// <summary>An int or a list of ints in config.json.</summary>
    [JsonPropertyName("eos_token_id")][JsonConverter(typeof(IntOrIntListConverter))] public IReadOnlyList<int>? EosTokenIds { get; init; }
    [JsonPropertyName("pad_token_id")] public int? PadTokenId { get; init; }

    /// <summary>
    /// ResLora's record of an offline rotation applied to the weights (RoLoRA, spec rolora.md): when set, the
    /// loader must apply the online Hadamard transform on <c>down_proj</c>'s input. Absent in ordinary models.
    /// </summary>
    [JsonPropertyName("reslora_rotation")] public JsonElement? ResloraRotation { get; init; }

    /// <summary>
    /// ResLora's record of evaluation-time fake quantization (<c>reslora quantize</c>): the weights are already quantized;
    /// the loader installs per-token activation quantizers of the recorded width on every decoder linear.
    /// </summary>
    [JsonPropertyName("reslora_quantization")] public JsonElement? ResloraQuantization { get; init; }

    /// <summary>
    /// Every config.json field this record does not model (use_cache, initializer_range, layer_types, quantization notes…),
    /// kept as read so a merged or converted folder's config.json still carries them.
    /// </summary>
    [JsonExtensionData] public Dictionary<string, JsonElement>? OtherFields { get; init; }

    [JsonIgnore] public int NumKeyValueHeads => NumKeyValueHeadsRaw ?? NumAttentionHeads;
    [JsonIgnore] public int HeadDim => HeadDimRaw ?? (NumAttentionHeads > 0 ? HiddenSize / NumAttentionHeads : 0);
    /// <summary>Qwen2 always carries q/k/v biases; Llama-family models carry them when <c>attention_bias</c> is true.</summary>
    [JsonIgnore] public bool HasQkvBias => AttentionBias || string.Equals(ModelType, "qwen2", StringComparison.OrdinalIgnoreCase);

    /// <summary>Rejects out-of-range or conflicting settings with a message that names the field.</summary>
    public void Validate(string source = "config.json")
    {
        // The family first: an encoder or an unknown architecture is named as such, not as a wrong field.
        var family = ModelFamilies.ForCausalLM(ModelType, source);
        static void Positive(string src, string field, long v)
        {
            if (v <= 0) throw new UserInputException($"{src}: '{field}' must be a positive integer, got {v}.");
        }
        Positive(source, "vocab_size", VocabSize);
        Positive(source, "hidden_size", HiddenSize);
        Positive(source, "intermediate_size", IntermediateSize);
        Positive(source, "num_hidden_layers", NumHiddenLayers);
        Positive(source, "num_attention_heads", NumAttentionHeads);
        Positive(source, "num_key_value_heads", NumKeyValueHeads);
        Positive(source, "head_dim", HeadDim);
        Positive(source, "max_position_embeddings", MaxPositionEmbeddings);
        if (HeadDimRaw is null && HiddenSize % NumAttentionHeads != 0)
            throw new UserInputException($"{source}: 'hidden_size' ({HiddenSize}) is not divisible by 'num_attention_heads' ({NumAttentionHeads}); set 'head_dim' explicitly.");
        if (NumAttentionHeads % NumKeyValueHeads != 0)
            throw new UserInputException($"{source}: 'num_attention_heads' ({NumAttentionHeads}) must be a multiple of 'num_key_value_heads' ({NumKeyValueHeads}).");
        if (HeadDim % 2 != 0)
            throw new UserInputException($"{source}: head dimension {HeadDim} must be even for rotary embeddings.");
        if (!(RmsNormEps > 0)) throw new UserInputException($"{source}: 'rms_norm_eps' must be > 0, got {RmsNormEps}.");
        if (!(RopeTheta > 0)) throw new UserInputException($"{source}: 'rope_theta' must be > 0, got {RopeTheta}.");
        if (RopeScaling is { } rs && !(rs.Factor > 0)) throw new UserInputException($"{source}: 'rope_scaling.factor' must be > 0, got {rs.Factor}.");
        family.CheckConfig(this, source);
    }

    /// <summary>The SwiGLU check of LLaMA-style families: <c>hidden_act</c> must be silu (swish).</summary>
    public void RequireSilu(string source)
    {
        if (!string.Equals(HiddenAct, "silu", StringComparison.OrdinalIgnoreCase) && !string.Equals(HiddenAct, "swish", StringComparison.OrdinalIgnoreCase))
            throw new UserInputException($"{source}: 'hidden_act' is '{HiddenAct}'; the {ModelType} family runs SwiGLU MLPs, so only 'silu' is supported.");
    }

    /// <summary>Refuses a <c>rope_scaling</c> kind the family's rotary does not implement; <paramref name="kinds"/> are the ones it does.</summary>
    public void RequireRopeKinds(string source, params string[] kinds)
    {
        if (RopeScaling is { } rs && !kinds.Contains(rs.Kind))
            throw new UserInputException($"{source}: 'rope_scaling.rope_type' '{rs.Kind}' is not supported for {ModelType}; supported: {string.Join(", ", kinds)}.");
    }

    /// <summary>
    /// A family-specific config.json field this record does not model (Gemma 3's <c>query_pre_attn_scalar</c>, SmolLM3's
    /// <c>no_rope_layers</c>), read from <see cref="OtherFields"/>; default when absent or null. A value of the wrong JSON
    /// type is an error naming the field.
    /// </summary>
    public T? Extra<T>(string name, string source = "config.json", T? fallback = default)
    {
        if (OtherFields is null || !OtherFields.TryGetValue(name, out var e) || e.ValueKind == JsonValueKind.Null) return fallback;
        try
        {
            return e.Deserialize<T>(JsonOptions);
        }
        catch (JsonException ex)
        {
            throw new UserInputException($"{source}: '{name}' must be {Expected(typeof(T))}, got {Shown(e)}.", ex);
        }
    }

    private static string Expected(Type t)
    {
        t = Nullable.GetUnderlyingType(t) ?? t;
        if (t == typeof(int) || t == typeof(long)) return "an integer";
        if (t == typeof(double) || t == typeof(float)) return "a number";
        if (t == typeof(bool)) return "true or false";
        if (t == typeof(string)) return "a string";
        var element = t.IsArray ? t.GetElementType() : t.IsGenericType ? t.GetGenericArguments()[0] : null;
        return element is null ? "a JSON value of another shape" : $"a list of {Expected(element).Replace("an ", "").Replace("a ", "")}s".Replace("true or falses", "true/false values");
    }

    private static string Shown(JsonElement e)
    {
        string raw = e.GetRawText();
        return raw.Length <= 40 ? raw : raw[..40] + "…";
    }

    /// <summary>A copy with the family-specific field <paramref name="name"/> set (null removes it): how tests and presets give extra fields.</summary>
    public ModelConfig WithExtra(string name, object? value)
    {
        var d = OtherFields is null ? new Dictionary<string, JsonElement>() : new Dictionary<string, JsonElement>(OtherFields);
        if (value is null) d.Remove(name);
        else d[name] = JsonSerializer.SerializeToElement(value, value.GetType(), JsonOptions);
        return this with { OtherFields = d };
    }

    internal static readonly JsonSerializerOptions JsonOptions = new()
    {
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        NumberHandling = JsonNumberHandling.AllowReadingFromString,
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    /// <summary>Reads and validates a config.json; errors name the file and the field.</summary>
    public static ModelConfig Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no config.json here; a Hugging Face model folder needs one.", path);
        ModelConfig? cfg;
        try
        {
            cfg = JsonSerializer.Deserialize<ModelConfig>(BoundedFile.ReadAllText(path, BoundedFile.ConfigLimit, "config.json"), JsonOptions);
        }
        catch (JsonException e)
        {
            throw new UserInputException($"{path}: not a valid config.json ({e.Message}).", e);
        }
        if (cfg is null) throw new UserInputException($"{path}: config.json is empty or 'null'.");
        cfg.Validate(path);
        return cfg;
    }

    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);
}
