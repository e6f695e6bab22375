namespace ResLora.Models.Encoders;

/// <summary>
/// The BERT family of sequence encoders: <c>bert</c> (and MiniLM), <c>roberta</c>, <c>xlm-roberta</c>, <c>camembert</c>,
/// read by <see cref="EncoderLoader"/> with a classification or regression head.
/// </summary>
public sealed class BertFamily : IModelFamily
{
    public static BertFamily Instance { get; } = new();

    private BertFamily()
    {
    }

    public string Name => "bert";
    public IReadOnlyList<string> ModelTypes { get; } = new[] { "bert", "roberta", "xlm-roberta", "camembert" };
    public ModelKind Kind => ModelKind.Encoder;
    public IReadOnlyList<string> DefaultTargets { get; } = new[] { "query", "value" };
}
