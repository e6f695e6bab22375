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
/// <c>BertForSequenceClassification</c> / <c>RobertaForSequenceClassification</c> with Hugging Face's keys: the encoder
/// under <c>bert.</c> or <c>roberta.</c> and a <c>classifier</c> (BERT: dropout + linear on the pooled first token; RoBERTa:
/// its two-layer head). One output is regression (MSE), more are classes (cross-entropy).
/// </summary>
public sealed class EncoderClassifier : nn.Module<Tensor, Tensor>
{
    private readonly BertEncoder _encoder;
    private readonly nn.Module<Tensor, Tensor> _classifier;

    /// <summary>The module name of the head, which PEFT saves as <c>modules_to_save</c> for SEQ_CLS.</summary>
    public const string HeadName = "classifier";

    public EncoderClassifier(EncoderConfig config, ILinearFactory? factory, ScalarType dtype, Device device) : base(config.ClassificationArchitecture)
    {
        Config = config;
        bool bert = config.Family == EncoderFamily.Bert;
        _encoder = new BertEncoder(config, factory, dtype, device, config.BaseModelPrefix + ".", withPooler: bert);
        _classifier = bert ? nn.Linear(config.HiddenSize, config.NumLabels, device: device, dtype: dtype) : new RobertaClassificationHead(config, dtype, device);
        register_module(config.BaseModelPrefix, _encoder);
        register_module(HeadName, _classifier);
    }

    public EncoderConfig Config { get; }
    public BertEncoder Encoder => _encoder;
    public Device Device => _encoder.Device;

    /// <summary>The modules a classification adapter trains fully and saves beside the adapter (PEFT's modules_to_save).</summary>
    public IReadOnlyList<string> TrainedModules(bool poolerFromCheckpoint) =>
        Config.Family == EncoderFamily.Bert && !poolerFromCheckpoint ? new[] { HeadName, Config.BaseModelPrefix + ".pooler" } : new[] { HeadName };

    public override Tensor forward(Tensor inputIds) => Forward(inputIds, null, null);

    /// <summary>Logits (batch, num_labels); for regression (batch, 1).</summary>
    public Tensor Forward(Tensor inputIds, Tensor? attentionMask, Tensor? tokenTypeIds)
    {
        using var scope = torch.NewDisposeScope();
        var h = _encoder.HiddenStates(inputIds, attentionMask, tokenTypeIds);
        Tensor logits;
        if (Config.Family == EncoderFamily.Bert)
            logits = _classifier.call(nn.functional.dropout(_encoder.Pooled(h), Config.ClassifierDropout, training));
        else logits = _classifier.call(h);
        return scope.MoveToOuter(logits);
    }

    /// <summary>Head weights by full name, with shapes.</summary>
    public static Dictionary<string, long[]> HeadWeights(EncoderConfig c)
    {
        long h = c.HiddenSize, n = c.NumLabels;
        return c.Family == EncoderFamily.Bert
            ? new(StringComparer.Ordinal) { ["classifier.weight"] = new[] { n, h }, ["classifier.bias"] = new[] { n } }
            : new(StringComparer.Ordinal)
            {
                ["classifier.dense.weight"] = new[] { h, h },
                ["classifier.dense.bias"] = new[] { h },
                ["classifier.out_proj.weight"] = new[] { n, h },
                ["classifier.out_proj.bias"] = new[] { n },
            };
    }

    /// <summary>Loss of logits against labels: MSE for regression (float labels), cross-entropy for classes (int64 labels).</summary>
    public static Tensor Loss(Tensor logits, Tensor labels, bool regression) => regression
        ? nn.functional.mse_loss(logits.squeeze(-1).to_type(ScalarType.Float32), labels.to_type(ScalarType.Float32))
        : nn.functional.cross_entropy(logits.to_type(ScalarType.Float32), labels);
}
