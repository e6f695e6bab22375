using ResLora.Models.Encoders;

namespace ResLora.Models.Deberta;

/// <summary>
/// DeBERTa-v2 and v3 encoders (<c>model_type: deberta-v2</c>; RefLoRA's and LoRA's GLUE results use DeBERTaV3-base), with
/// transformers' DebertaV2ForSequenceClassification head: the encoder under <c>deberta.</c>, a top-level <c>pooler</c>
/// (ContextPooler) and <c>classifier</c>.
/// </summary>
public sealed class DebertaFamily : IEncoderFamily
{
    public static DebertaFamily Instance { get; } = new();

    private DebertaFamily()
    {
    }

    public string Name => "deberta-v2";
    public IReadOnlyList<string> ModelTypes { get; } = new[] { "deberta-v2" };
    public ModelKind Kind => ModelKind.Encoder;

    /// <summary>PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING for deberta-v2.</summary>
    public IReadOnlyList<string> DefaultTargets { get; } = new[] { "query_proj", "value_proj" };

    public EncoderFamily ArchitectureOf(string modelType) => EncoderFamily.Deberta;

    public void CheckConfig(EncoderConfig config, string source) => DebertaSettings.From(config, source);

    public string BaseModelPrefix(EncoderConfig config) => "deberta";

    public string ClassificationArchitecture(EncoderConfig config) => "DebertaV2ForSequenceClassification";

    public Dictionary<string, long[]> EncoderWeights(EncoderConfig config) => DebertaModel.ExpectedWeights(config, DebertaSettings.From(config));

    /// <summary>The pooler is the classification model's, at the top level whatever the encoder's prefix.</summary>
    public Dictionary<string, long[]> StoredPoolerWeights(EncoderConfig config, string storedPrefix) => ClassifierPoolerWeights(config);

    public Dictionary<string, long[]> ClassifierPoolerWeights(EncoderConfig config)
    {
        long p = DebertaSettings.From(config).PoolerHiddenSize;
        return new(StringComparer.Ordinal) { ["pooler.dense.weight"] = new[] { p, p }, ["pooler.dense.bias"] = new[] { p } };
    }

    public Dictionary<string, long[]> HeadWeights(EncoderConfig config) => new(StringComparer.Ordinal)
    {
        ["classifier.weight"] = new long[] { config.NumLabels, config.HiddenSize },
        ["classifier.bias"] = new long[] { config.NumLabels },
    };

    public SequenceEncoder CreateEncoder(EncoderConfig config, ILinearFactory? factory, ScalarType dtype, Device device, string prefix, bool withPooler) =>
        new DebertaModel(config, factory, dtype, device, prefix);

    public EncoderHead CreateHead(EncoderConfig config, ScalarType dtype, Device device) => new DebertaHead(config, DebertaSettings.From(config), dtype, device);

    /// <summary>
    /// PEFT saves <c>classifier</c> for SEQ_CLS; a DeBERTa base checkpoint has no pooler, so a new one is trained and saved
    /// too (as BERT's pooler is when its checkpoint lacks one).
    /// </summary>
    public IReadOnlyList<string> TrainedModules(EncoderConfig config, bool poolerFromCheckpoint) =>
        poolerFromCheckpoint ? new[] { EncoderClassifier.HeadName } : new[] { EncoderClassifier.HeadName, "pooler" };
}
