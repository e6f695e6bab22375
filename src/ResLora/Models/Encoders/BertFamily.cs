namespace ResLora.Models.Encoders;

/// <summary>
/// The BERT family of sequence encoders: <c>bert</c> (and MiniLM), <c>roberta</c>, <c>xlm-roberta</c>, <c>camembert</c>,
/// read by <see cref="EncoderLoader"/> with a classification or regression head.
/// </summary>
public sealed class BertFamily : IEncoderFamily
{
    public static BertFamily Instance { get; } = new();

    private BertFamily()
    {
    }

    public string Name => "bert";
    public IReadOnlyList<string> ModelTypes { get; } = new[] { "bert", "roberta", "xlm-roberta", "camembert" };
    public ModelKind Kind => ModelKind.Encoder;
    public IReadOnlyList<string> DefaultTargets { get; } = new[] { "query", "value" };

    public EncoderFamily ArchitectureOf(string modelType) => modelType.ToLowerInvariant() == "bert" ? EncoderFamily.Bert : EncoderFamily.Roberta;

    public void CheckConfig(EncoderConfig config, string source)
    {
        if (config.TypeVocabSize <= 0) throw new UserInputException($"{source}: 'type_vocab_size' must be a positive integer, got {config.TypeVocabSize}.");
    }

    public string BaseModelPrefix(EncoderConfig config) => config.Family == EncoderFamily.Bert ? "bert" : "roberta";

    public string ClassificationArchitecture(EncoderConfig config) => config.ModelType.ToLowerInvariant() switch
    {
        "bert" => "BertForSequenceClassification",
        "xlm-roberta" => "XLMRobertaForSequenceClassification",
        "camembert" => "CamembertForSequenceClassification",
        _ => "RobertaForSequenceClassification",
    };

    public Dictionary<string, long[]> EncoderWeights(EncoderConfig config) => BertEncoder.ExpectedWeights(config, withPooler: false);

    public Dictionary<string, long[]> StoredPoolerWeights(EncoderConfig config, string storedPrefix) => Pooler(config, storedPrefix);

    public Dictionary<string, long[]> ClassifierPoolerWeights(EncoderConfig config) =>
        config.Family == EncoderFamily.Bert ? Pooler(config, "bert.") : new(StringComparer.Ordinal);

    public Dictionary<string, long[]> HeadWeights(EncoderConfig config)
    {
        long h = config.HiddenSize, n = config.NumLabels;
        return config.Family == EncoderFamily.Bert
            ? new(StringComparer.Ordinal) { ["classifier.weight"] = new[] { n, h }, ["classifier.bias"] = new[] { n } }
            : new(StringComparer.Ordinal)
            {
                ["classifier.dense.weight"] = new[] { h, h },
                ["classifier.dense.bias"] = new[] { h },
                ["classifier.out_proj.weight"] = new[] { n, h },
                ["classifier.out_proj.bias"] = new[] { n },
            };
    }

    public SequenceEncoder CreateEncoder(EncoderConfig config, ILinearFactory? factory, ScalarType dtype, Device device, string prefix, bool withPooler) =>
        new BertEncoder(config, factory, dtype, device, prefix, withPooler);

    public EncoderHead CreateHead(EncoderConfig config, ScalarType dtype, Device device) => new BertHead(config, dtype, device);

    public IReadOnlyList<string> TrainedModules(EncoderConfig config, bool poolerFromCheckpoint) =>
        config.Family == EncoderFamily.Bert && !poolerFromCheckpoint
            ? new[] { EncoderClassifier.HeadName, BaseModelPrefix(config) + ".pooler" }
            : new[] { EncoderClassifier.HeadName };

    private static Dictionary<string, long[]> Pooler(EncoderConfig c, string prefix) => new(StringComparer.Ordinal)
    {
        [prefix + "pooler.dense.weight"] = new long[] { c.HiddenSize, c.HiddenSize },
        [prefix + "pooler.dense.bias"] = new long[] { c.HiddenSize },
    };
}
