using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ResLora.Models.Encoders;

/// <summary>The encoder architectures read from Hugging Face folders.</summary>
public enum EncoderFamily
{
    /// <summary>BERT (and MiniLM, which is a BERT): positions 0..n-1, token types, a pooler.</summary>
    Bert,

    /// <summary>RoBERTa / XLM-RoBERTa: positions counted past <c>padding_idx</c>, one token type, no pooler in the classifier.</summary>
    Roberta,

    /// <summary>DeBERTa-v2/v3: disentangled relative attention, no absolute positions in v3, a context pooler in the head.</summary>
    Deberta,
}

/// <summary>
/// The fields of a BERT-family <c>config.json</c> that the encoder needs, plus the raw object so a saved folder keeps every
/// field it did not interpret (and the label maps a classification run adds).
/// </summary>
public sealed record EncoderConfig
{
    public EncoderFamily Family { get; init; }
    public string ModelType { get; init; } = "bert";
    public int VocabSize { get; init; }
    public int HiddenSize { get; init; }
    public int NumHiddenLayers { get; init; }
    public int NumAttentionHeads { get; init; }
    public int IntermediateSize { get; init; }
    public int MaxPositionEmbeddings { get; init; } = 512;
    public int TypeVocabSize { get; init; } = 2;
    public double LayerNormEps { get; init; } = 1e-12;
    public string HiddenAct { get; init; } = "gelu";
    public int PadTokenId { get; init; }
    public double HiddenDropout { get; init; } = 0.1;
    public double AttentionDropout { get; init; } = 0.1;
    /// <summary>The classifier's dropout (<c>classifier_dropout</c>, else the hidden dropout).</summary>
    public double ClassifierDropout { get; init; } = 0.1;
    /// <summary>Labels of a classification head: 1 = regression (MSE), ≥ 2 = classes.</summary>
    public int NumLabels { get; init; } = 2;
    /// <summary>Class names by id (<c>id2label</c>); null when the config has none.</summary>
    public IReadOnlyList<string>? Labels { get; init; }
    /// <summary>The config as read (or built), written back with the label fields updated.</summary>
    public JsonObject Raw { get; init; } = new();

    public int HeadDim => HiddenSize / NumAttentionHeads;

    /// <summary>Regression when the head has one output (Hugging Face's rule for <c>problem_type</c> when unset).</summary>
    public bool IsRegression => NumLabels == 1;

    /// <summary>True for <c>model_type</c> values the encoder reads (a LLaMA folder answers false).</summary>
    public static bool IsEncoderType(string? modelType) => ModelFamilies.Find(modelType)?.Kind == ModelKind.Encoder;

    /// <summary>Reads <c>config.json</c> of a folder; errors name the file and field.</summary>
    public static EncoderConfig Load(string modelDir)
    {
        string path = Path.Combine(modelDir, "config.json");
        IO.InputPaths.ExistingModelFolder(modelDir, flag: null);
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no config.json here; a Hugging Face model folder needs one.", path);
        JsonObject raw;
        try
        {
            raw = JsonNode.Parse(File.ReadAllText(path), documentOptions: new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip }) as JsonObject
                ?? throw new UserInputException($"{path}: the top level must be a JSON object.");
        }
        catch (JsonException e)
        {
            throw new UserInputException($"{path}: not a valid config.json ({e.Message}).", e);
        }
        return FromJson(raw, path);
    }

    /// <summary>Interprets a config object; <paramref name="source"/> names it in errors.</summary>
    public static EncoderConfig FromJson(JsonObject raw, string source = "config.json")
    {
        string modelType = Str(raw, "model_type", source) ?? throw new UserInputException($"{source}: 'model_type' is missing; an encoder config says \"bert\" or \"roberta\".");
        var encoderFamily = EncoderFamilies.Find(modelType);
        if (encoderFamily is null)
            throw new UserInputException(modelType.StartsWith("deberta", StringComparison.OrdinalIgnoreCase)
                ? $"{source}: 'model_type' is '{modelType}'; DeBERTa v1's attention and BPE vocabulary are not supported, DeBERTa-v2/v3 (model_type 'deberta-v2') is (supported encoders: {Supported})."
                : $"{source}: 'model_type' is '{modelType}', not an encoder (supported: {Supported}); causal LMs are trained without --task.");
        var family = encoderFamily.ArchitectureOf(modelType);
        bool deberta = family == EncoderFamily.Deberta;
        string posType = Str(raw, "position_embedding_type", source) ?? "absolute";
        if (posType != "absolute")
            throw new UserInputException($"{source}: 'position_embedding_type' is '{posType}'; only absolute position embeddings are supported.");
        string act = (Str(raw, "hidden_act", source) ?? "gelu").ToLowerInvariant();
        if (act is not ("gelu" or "gelu_new" or "gelu_pytorch_tanh" or "relu"))
            throw new UserInputException($"{source}: 'hidden_act' is '{act}'; supported: gelu, gelu_new, gelu_pytorch_tanh, relu.");
        var labels = ReadLabels(raw, source);
        int numLabels = Int(raw, "num_labels", source) ?? labels?.Count ?? 2;
        if (labels is not null && labels.Count != numLabels)
            throw new UserInputException($"{source}: 'num_labels' is {numLabels} but 'id2label' has {labels.Count} entries; make them agree.");
        double hiddenDrop = Dbl(raw, "hidden_dropout_prob", source) ?? 0.1;
        // DeBERTa names its classifier dropout cls_dropout (DebertaV2ForSequenceClassification), BERT classifier_dropout.
        var c = new EncoderConfig
        {
            Family = family,
            ModelType = modelType,
            VocabSize = Int(raw, "vocab_size", source) ?? throw Missing(source, "vocab_size"),
            HiddenSize = Int(raw, "hidden_size", source) ?? throw Missing(source, "hidden_size"),
            NumHiddenLayers = Int(raw, "num_hidden_layers", source) ?? throw Missing(source, "num_hidden_layers"),
            NumAttentionHeads = Int(raw, "num_attention_heads", source) ?? throw Missing(source, "num_attention_heads"),
            IntermediateSize = Int(raw, "intermediate_size", source) ?? throw Missing(source, "intermediate_size"),
            MaxPositionEmbeddings = Int(raw, "max_position_embeddings", source) ?? 512,
            TypeVocabSize = Int(raw, "type_vocab_size", source) ?? (deberta ? 0 : 2),
            LayerNormEps = Dbl(raw, "layer_norm_eps", source) ?? (deberta ? 1e-7 : 1e-12),
            HiddenAct = act,
            PadTokenId = Int(raw, "pad_token_id", source) ?? (family == EncoderFamily.Roberta ? 1 : 0),
            HiddenDropout = hiddenDrop,
            AttentionDropout = Dbl(raw, "attention_probs_dropout_prob", source) ?? 0.1,
            ClassifierDropout = Dbl(raw, deberta ? "cls_dropout" : "classifier_dropout", source) ?? hiddenDrop,
            NumLabels = numLabels,
            Labels = labels,
            Raw = raw,
        };
        c.Validate(source);
        return c;
    }

    private static string Supported => string.Join(", ", ModelFamilies.All.Where(f => f.Kind == ModelKind.Encoder).SelectMany(f => f.ModelTypes));

    /// <summary>Range checks that keep a wrong config from becoming a huge or invalid allocation.</summary>
    public void Validate(string source = "config.json")
    {
        void Positive(string field, long v)
        {
            if (v <= 0) throw new UserInputException($"{source}: '{field}' must be a positive integer, got {v}.");
        }
        Positive("vocab_size", VocabSize);
        Positive("hidden_size", HiddenSize);
        Positive("num_hidden_layers", NumHiddenLayers);
        Positive("num_attention_heads", NumAttentionHeads);
        Positive("intermediate_size", IntermediateSize);
        Positive("max_position_embeddings", MaxPositionEmbeddings);
        if (TypeVocabSize < 0) throw new UserInputException($"{source}: 'type_vocab_size' must not be negative, got {TypeVocabSize}.");
        Positive("num_labels", NumLabels);
        if (HiddenSize % NumAttentionHeads != 0)
            throw new UserInputException($"{source}: 'hidden_size' ({HiddenSize}) is not divisible by 'num_attention_heads' ({NumAttentionHeads}).");
        if (PadTokenId < 0 || PadTokenId >= VocabSize)
            throw new UserInputException($"{source}: 'pad_token_id' {PadTokenId} is outside the vocabulary (0..{VocabSize - 1}).");
        if (Family == EncoderFamily.Roberta && MaxPositionEmbeddings <= PadTokenId + 1)
            throw new UserInputException($"{source}: RoBERTa positions start after pad_token_id {PadTokenId}, so 'max_position_embeddings' must exceed {PadTokenId + 1}.");
        if (!(LayerNormEps > 0)) throw new UserInputException($"{source}: 'layer_norm_eps' must be > 0, got {LayerNormEps}.");
        foreach (var (f, p) in new[] { ("hidden_dropout_prob", HiddenDropout), ("attention_probs_dropout_prob", AttentionDropout), ("classifier_dropout", ClassifierDropout) })
            if (!(p >= 0 && p < 1)) throw new UserInputException($"{source}: '{f}' must be in [0, 1), got {p}.");
        EncoderFamilies.Find(ModelType)?.CheckConfig(this, source);
    }

    /// <summary>The longest input the position table allows (RoBERTa loses the first pad+1 rows).</summary>
    public int MaxInputLength => Family == EncoderFamily.Roberta ? MaxPositionEmbeddings - PadTokenId - 1 : MaxPositionEmbeddings;

    /// <summary>
    /// The config with a classification head of <paramref name="labels"/> (class names by id) or a regression head
    /// (<paramref name="labels"/> null, one output): num_labels, id2label, label2id, problem_type and the
    /// <c>*ForSequenceClassification</c> architecture written into <see cref="Raw"/>.
    /// </summary>
    public EncoderConfig WithHead(IReadOnlyList<string>? labels)
    {
        var raw = (JsonObject)Raw.DeepClone();
        int n = labels?.Count ?? 1;
        var names = labels ?? new[] { "LABEL_0" };
        var id2 = new JsonObject();
        var l2i = new JsonObject();
        for (int i = 0; i < names.Count; i++)
        {
            id2[i.ToString(CultureInfo.InvariantCulture)] = names[i];
            l2i[names[i]] = i;
        }
        raw["id2label"] = id2;
        raw["label2id"] = l2i;
        raw["num_labels"] = n;
        raw["problem_type"] = labels is null ? "regression" : "single_label_classification";
        raw["architectures"] = new JsonArray(ClassificationArchitecture);
        return this with { NumLabels = n, Labels = labels is null ? null : names, Raw = raw };
    }

    /// <summary>Hugging Face's class name of the classification model of this family.</summary>
    public string ClassificationArchitecture => EncoderFamilies.Of(this).ClassificationArchitecture(this);

    /// <summary>The key prefix of the encoder inside a classification model (<c>bert</c>, <c>roberta</c>, <c>deberta</c>).</summary>
    public string BaseModelPrefix => EncoderFamilies.Of(this).BaseModelPrefix(this);

    /// <summary>Whether a trained classification head is present in the config (labels and the architecture name).</summary>
    public bool DeclaresClassificationHead =>
        Raw["architectures"] is JsonArray a && a.Any(x => x is JsonValue v && v.TryGetValue<string>(out var s) && s.EndsWith("ForSequenceClassification", StringComparison.Ordinal));

    /// <summary>The config as JSON text (the raw object with every interpreted field as read or set).</summary>
    public string ToJson() => Raw.ToJsonString(IO.Json.ReportJson.Indented);

    private static IReadOnlyList<string>? ReadLabels(JsonObject raw, string source)
    {
        if (raw["id2label"] is not JsonObject id2) return null;
        var byId = new SortedDictionary<int, string>();
        foreach (var (k, v) in id2)
        {
            if (!int.TryParse(k, NumberStyles.Integer, CultureInfo.InvariantCulture, out int id) || id < 0)
                throw new UserInputException($"{source}: 'id2label' key '{k}' is not a non-negative integer.");
            byId[id] = v is JsonValue jv && jv.TryGetValue<string>(out var s) ? s : v?.ToJsonString() ?? "";
        }
        if (byId.Count == 0) return null;
        if (byId.Keys.Last() != byId.Count - 1)
            throw new UserInputException($"{source}: 'id2label' ids must be 0..{byId.Count - 1} without gaps.");
        return byId.Values.ToList();
    }

    private static UserInputException Missing(string source, string field) =>
        new($"{source}: '{field}' is missing; an encoder's config.json must give it.");

    private static string? Str(JsonObject o, string field, string source) => o[field] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        var n => throw new UserInputException($"{source}: '{field}' must be a string, got {n.ToJsonString()}."),
    };

    private static int? Int(JsonObject o, string field, string source)
    {
        var n = o[field];
        if (n is null) return null;
        if (Number(n) is { } d && d == Math.Floor(d) && d >= int.MinValue && d <= int.MaxValue) return (int)d;
        throw new UserInputException($"{source}: '{field}' must be an integer, got {n.ToJsonString()}.");
    }

    /// <summary>A JSON number as a double whatever .NET type backs the node (parsed text or a boxed int).</summary>
    private static double? Number(JsonNode n) =>
        n.GetValueKind() == JsonValueKind.Number ? double.Parse(n.ToJsonString(), CultureInfo.InvariantCulture) : null;

    private static double? Dbl(JsonObject o, string field, string source)
    {
        var n = o[field];
        if (n is null) return null;
        if (Number(n) is { } d) return d;
        throw new UserInputException($"{source}: '{field}' must be a number, got {n.ToJsonString()}.");
    }
}
