namespace ResLora.Models.Encoders;

/// <summary>
/// A sequence encoder (BERT, RoBERTa, DeBERTa-v2): token ids in, last hidden states out. What classification, training,
/// evaluation and sentence embeddings use, whatever the architecture; each encoder family builds its own subclass.
/// </summary>
public abstract class SequenceEncoder : nn.Module<Tensor, Tensor>
{
    protected SequenceEncoder(string name, EncoderConfig config, ScalarType dtype, Device device) : base(name)
    {
        Config = config;
        Dtype = dtype;
        Device = device;
    }

    public EncoderConfig Config { get; }
    public ScalarType Dtype { get; }
    public Device Device { get; }

    public override Tensor forward(Tensor inputIds) => HiddenStates(inputIds, null, null);

    /// <summary>Last hidden states (batch, seq, hidden); <paramref name="attentionMask"/> 1 = token, 0 = padding.</summary>
    public abstract Tensor HiddenStates(Tensor inputIds, Tensor? attentionMask, Tensor? tokenTypeIds);

    /// <summary>An input longer than the encoder's positions is the user's <c>--seq-len</c> to lower.</summary>
    protected void CheckLength(long tokens)
    {
        if (tokens > Config.MaxInputLength)
            throw new UserInputException($"input of {tokens} tokens exceeds the encoder's {Config.MaxInputLength} positions (max_position_embeddings); lower --seq-len.");
    }

    /// <summary>finfo(dtype).min, which transformers puts where attention is masked.</summary>
    internal static double Lowest(ScalarType dtype) => dtype switch
    {
        ScalarType.BFloat16 => -3.3895313892515355e38,
        ScalarType.Float16 => -65504.0,
        ScalarType.Float64 => double.MinValue,
        _ => float.MinValue,
    };
}

/// <summary>
/// A classification head: the modules a <c>*ForSequenceClassification</c> model holds beside its encoder (registered under
/// their Hugging Face names on <see cref="EncoderClassifier"/>) and how they turn hidden states into logits.
/// </summary>
public abstract class EncoderHead
{
    /// <summary>The head's modules by their top-level name in the classification model (<c>classifier</c>, DeBERTa's <c>pooler</c>).</summary>
    public abstract IReadOnlyList<(string Name, nn.Module Module)> Modules { get; }

    /// <summary>hidden (batch, seq, hidden) → logits (batch, num_labels).</summary>
    public abstract Tensor Logits(Tensor hidden, SequenceEncoder encoder, bool training);
}

/// <summary>
/// A family of sequence encoders: how its config and checkpoints are laid out and what it builds. <see cref="EncoderLoader"/>,
/// <see cref="EncoderClassifier"/> and inspect reach the architecture only through this.
/// </summary>
public interface IEncoderFamily : IModelFamily
{
    /// <summary>Which <see cref="EncoderFamily"/> a <c>model_type</c> of this family is.</summary>
    EncoderFamily ArchitectureOf(string modelType);

    /// <summary>Family-specific checks of config.json beyond <see cref="EncoderConfig.Validate"/>; errors name <paramref name="source"/> and the field.</summary>
    void CheckConfig(EncoderConfig config, string source);

    /// <summary>The encoder's key prefix inside a classification model, without the dot (<c>bert</c>, <c>deberta</c>).</summary>
    string BaseModelPrefix(EncoderConfig config);

    /// <summary>Hugging Face's class name of the classification model.</summary>
    string ClassificationArchitecture(EncoderConfig config);

    /// <summary>The encoder's weights without any prefix (no pooler), with shapes.</summary>
    Dictionary<string, long[]> EncoderWeights(EncoderConfig config);

    /// <summary>
    /// The pooler's weights as stored in a checkpoint whose encoder keys start with <paramref name="storedPrefix"/> (BERT:
    /// inside the encoder; DeBERTa: the classification model's top-level <c>pooler</c>).
    /// </summary>
    Dictionary<string, long[]> StoredPoolerWeights(EncoderConfig config, string storedPrefix);

    /// <summary>The pooler's weights by name in the classification model; empty when its head reads no pooler (RoBERTa).</summary>
    Dictionary<string, long[]> ClassifierPoolerWeights(EncoderConfig config);

    /// <summary>The classification head's own weights (<c>classifier.*</c>), with shapes.</summary>
    Dictionary<string, long[]> HeadWeights(EncoderConfig config);

    /// <summary>The encoder alone; <paramref name="prefix"/> is its module path in the parent ("bert." or "").</summary>
    SequenceEncoder CreateEncoder(EncoderConfig config, ILinearFactory? factory, ScalarType dtype, Device device, string prefix, bool withPooler);

    /// <summary>A new classification head (its pooler too, where the family keeps it in the head).</summary>
    EncoderHead CreateHead(EncoderConfig config, ScalarType dtype, Device device);

    /// <summary>The modules a classification adapter trains fully and saves beside it (PEFT's modules_to_save for SEQ_CLS).</summary>
    IReadOnlyList<string> TrainedModules(EncoderConfig config, bool poolerFromCheckpoint);
}

/// <summary>The encoder families of <see cref="ModelFamilies"/>.</summary>
public static class EncoderFamilies
{
    /// <summary>The family of an encoder <c>model_type</c>, or null.</summary>
    public static IEncoderFamily? Find(string? modelType) => ModelFamilies.Find(modelType) as IEncoderFamily;

    /// <summary>The family of a (validated) encoder config.</summary>
    public static IEncoderFamily Of(EncoderConfig config) =>
        Find(config.ModelType) ?? throw new InvalidOperationException($"model_type '{config.ModelType}' has no encoder family.");
}
