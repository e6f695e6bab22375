using TorchSharp.Modules;
using TorchSharp.Utils;

namespace ResLora.Models.Encoders;

/// <summary>RoBERTa's classification head on the first token: dropout, dense, tanh, dropout, out_proj.</summary>
public sealed class RobertaClassificationHead : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // Hugging Face module names
    private readonly Linear dense;
    private readonly Linear out_proj;
#pragma warning restore IDE1006
    private readonly double _dropout;

    public RobertaClassificationHead(EncoderConfig c, ScalarType dtype, Device device) : base("classifier")
    {
        dense = nn.Linear(c.HiddenSize, c.HiddenSize, device: device, dtype: dtype);
        out_proj = nn.Linear(c.HiddenSize, c.NumLabels, device: device, dtype: dtype);
        _dropout = c.ClassifierDropout;
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden)
    {
        using var scope = torch.NewDisposeScope();
        var x = nn.functional.dropout(hidden[.., 0, ..], _dropout, training);
        x = nn.functional.dropout(torch.tanh(dense.call(x)), _dropout, training);
        return scope.MoveToOuter(out_proj.call(x));
    }
}

/// <summary>
/// BERT's and RoBERTa's heads: BERT's dropout + linear on its pooler's output (the pooler lives in the encoder,
/// <c>bert.pooler</c>); RoBERTa's two-layer <see cref="RobertaClassificationHead"/> on the first token.
/// </summary>
internal sealed class BertHead : EncoderHead
{
    private readonly nn.Module<Tensor, Tensor> _classifier;
    private readonly bool _bert;
    private readonly double _dropout;

    public BertHead(EncoderConfig c, ScalarType dtype, Device device)
    {
        _bert = c.Family == EncoderFamily.Bert;
        _dropout = c.ClassifierDropout;
        _classifier = _bert ? nn.Linear(c.HiddenSize, c.NumLabels, device: device, dtype: dtype) : new RobertaClassificationHead(c, dtype, device);
    }

    public override IReadOnlyList<(string Name, nn.Module Module)> Modules => new[] { (EncoderClassifier.HeadName, (nn.Module)_classifier) };

    public override Tensor Logits(Tensor hidden, SequenceEncoder encoder, bool training) => _bert
        ? _classifier.call(nn.functional.dropout(((BertEncoder)encoder).Pooled(hidden), _dropout, training))
        : _classifier.call(hidden);
}

/// <summary>
/// A <c>*ForSequenceClassification</c> model with Hugging Face's keys: the family's encoder under its prefix (<c>bert.</c>,
/// <c>roberta.</c>, <c>deberta.</c>) and the family's head (<see cref="IEncoderFamily.CreateHead"/>). One output is
/// regression (MSE), more are classes (cross-entropy).
/// </summary>
public sealed class EncoderClassifier : nn.Module<Tensor, Tensor>
{
    private readonly SequenceEncoder _encoder;
    private readonly EncoderHead _head;
    private readonly IEncoderFamily _family;

    /// <summary>The module name of the head, which PEFT saves as <c>modules_to_save</c> for SEQ_CLS.</summary>
    public const string HeadName = "classifier";

    public EncoderClassifier(EncoderConfig config, ILinearFactory? factory, ScalarType dtype, Device device) : base(config.ClassificationArchitecture)
    {
        Config = config;
        _family = EncoderFamilies.Of(config);
        _encoder = _family.CreateEncoder(config, factory, dtype, device, config.BaseModelPrefix + ".", withPooler: _family.ClassifierPoolerWeights(config).Count > 0);
        _head = _family.CreateHead(config, dtype, device);
        register_module(config.BaseModelPrefix, _encoder);
        foreach (var (name, module) in _head.Modules) register_module(name, module);
    }

    public EncoderConfig Config { get; }
    public SequenceEncoder Encoder => _encoder;
    public Device Device => _encoder.Device;

    /// <summary>The modules a classification adapter trains fully and saves beside the adapter (PEFT's modules_to_save).</summary>
    public IReadOnlyList<string> TrainedModules(bool poolerFromCheckpoint) => _family.TrainedModules(Config, poolerFromCheckpoint);

    public override Tensor forward(Tensor inputIds) => Forward(inputIds, null, null);

    /// <summary>Logits (batch, num_labels); for regression (batch, 1).</summary>
    public Tensor Forward(Tensor inputIds, Tensor? attentionMask, Tensor? tokenTypeIds)
    {
        using var scope = torch.NewDisposeScope();
        var h = _encoder.HiddenStates(inputIds, attentionMask, tokenTypeIds);
        return scope.MoveToOuter(_head.Logits(h, _encoder, training));
    }

    /// <summary>Head weights by full name, with shapes.</summary>
    public static Dictionary<string, long[]> HeadWeights(EncoderConfig c) => EncoderFamilies.Of(c).HeadWeights(c);

    /// <summary>Loss of logits against labels: MSE for regression (float labels), cross-entropy for classes (int64 labels).</summary>
    public static Tensor Loss(Tensor logits, Tensor labels, bool regression) => regression
        ? nn.functional.mse_loss(logits.squeeze(-1).to_type(ScalarType.Float32), labels.to_type(ScalarType.Float32))
        : nn.functional.cross_entropy(logits.to_type(ScalarType.Float32), labels);
}
