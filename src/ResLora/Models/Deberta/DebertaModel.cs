using ResLora.Models.Encoders;
using TorchSharp.Modules;

namespace ResLora.Models.Deberta;

/// <summary>
/// transformers' DebertaV2Model with its module names (<c>embeddings</c>, <c>encoder.layer.{i}.attention.self.query_proj</c>,
/// <c>encoder.rel_embeddings</c>, <c>encoder.LayerNorm</c>). Every projection inside the layers is built through one
/// <see cref="ILinearFactory"/>. The positional projections of all layers run first, in a forward context of their own,
/// then the layers: an adapter that passes tensors along its chain of layers (ResLoRA is/ms) sees the positional stream
/// (the same <c>rel_embeddings</c> in every layer) and the token stream as two forwards and never mixes their shapes.
/// </summary>
public sealed class DebertaModel : SequenceEncoder
{
#pragma warning disable IDE1006
    private readonly DebertaEmbeddings embeddings;
    private readonly DebertaStack encoder;
#pragma warning restore IDE1006
    private readonly IForwardLifecycle? _lifecycle;

    public DebertaModel(EncoderConfig config, ILinearFactory? factory, ScalarType dtype, Device device, string prefix = "")
        : base("deberta", config, dtype, device)
    {
        config.Validate();
        Settings = DebertaSettings.From(config);
        var f = factory ?? PlainLinearFactory.Instance;
        _lifecycle = f as IForwardLifecycle;
        embeddings = new DebertaEmbeddings(config, Settings, dtype, device);
        encoder = new DebertaStack(config, Settings, prefix, f, dtype, device);
        RegisterComponents();
    }

    public DebertaSettings Settings { get; }
    public IReadOnlyList<DebertaLayer> Layers => encoder.Layers;

    /// <inheritdoc/>
    public override Tensor HiddenStates(Tensor inputIds, Tensor? attentionMask, Tensor? tokenTypeIds)
    {
        using var scope = torch.NewDisposeScope();
        long t = inputIds.shape[1];
        CheckLength(t);
        Tensor? mask = attentionMask is not null && !attentionMask.to_type(ScalarType.Bool).all().item<bool>() ? attentionMask : null;
        var h = embeddings.Forward(inputIds, Config.TypeVocabSize > 0 ? tokenTypeIds : null, mask);
        Tensor? pairMask = null;
        if (mask is not null)
        {
            var m = mask.to_type(ScalarType.Bool);
            pairMask = m.unsqueeze(1).unsqueeze(2).logical_and(m.unsqueeze(1).unsqueeze(3)); // (b, 1, t, t): query i and key j real
        }
        var layers = encoder.Layers;
        var pos = new (Tensor? Key, Tensor? Query)[layers.Count];
        Tensor? relPos = null;
        if (encoder.RelEmbeddings() is { } rel)
        {
            relPos = RelativePositions.Build(t, Settings.PositionBuckets, Settings.MaxRelativePositions, inputIds.device);
            using var positional = _lifecycle?.BeginForward();
            for (int i = 0; i < layers.Count; i++) pos[i] = layers[i].SelfAttention.PositionalProjections(rel);
        }
        using (var forwardContext = _lifecycle?.BeginForward())
        {
            for (int i = 0; i < layers.Count; i++) h = layers[i].Forward(h, pairMask, relPos, pos[i].Key, pos[i].Query);
        }
        return scope.MoveToOuter(h);
    }

    /// <summary>The weights a DeBERTa-v2 checkpoint provides for the encoder, by name without prefix, with their shapes.</summary>
    public static Dictionary<string, long[]> ExpectedWeights(EncoderConfig c, DebertaSettings s)
    {
        long h = c.HiddenSize, m = c.IntermediateSize, e = s.EmbeddingSize;
        var d = new Dictionary<string, long[]>(StringComparer.Ordinal) { ["embeddings.word_embeddings.weight"] = new[] { (long)c.VocabSize, e } };
        if (s.PositionBiasedInput) d["embeddings.position_embeddings.weight"] = new[] { (long)c.MaxPositionEmbeddings, e };
        if (c.TypeVocabSize > 0) d["embeddings.token_type_embeddings.weight"] = new[] { (long)c.TypeVocabSize, e };
        if (e != h) d["embeddings.embed_proj.weight"] = new[] { h, e };
        d["embeddings.LayerNorm.weight"] = new[] { h };
        d["embeddings.LayerNorm.bias"] = new[] { h };
        var projections = new List<string> { "attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj" };
        if (s.RelativeAttention && !s.ShareAttKey)
        {
            if (s.C2P) projections.Add("attention.self.pos_key_proj");
            if (s.P2C) projections.Add("attention.self.pos_query_proj");
        }
        projections.Add("attention.output.dense");
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"encoder.layer.{i}.";
            foreach (var n in projections)
            {
                d[p + n + ".weight"] = new[] { h, h };
                d[p + n + ".bias"] = new[] { h };
            }
            d[p + "attention.output.LayerNorm.weight"] = new[] { h };
            d[p + "attention.output.LayerNorm.bias"] = new[] { h };
            d[p + "intermediate.dense.weight"] = new[] { m, h };
            d[p + "intermediate.dense.bias"] = new[] { m };
            d[p + "output.dense.weight"] = new[] { h, m };
            d[p + "output.dense.bias"] = new[] { h };
            d[p + "output.LayerNorm.weight"] = new[] { h };
            d[p + "output.LayerNorm.bias"] = new[] { h };
        }
        if (s.RelativeAttention) d["encoder.rel_embeddings.weight"] = new[] { 2L * s.AttSpan, h };
        if (s.NormRelEmbeddings)
        {
            d["encoder.LayerNorm.weight"] = new[] { h };
            d["encoder.LayerNorm.bias"] = new[] { h };
        }
        return d;
    }
}

/// <summary>transformers' ContextPooler (<c>pooler</c>): dropout on the first token, dense, <c>pooler_hidden_act</c>.</summary>
public sealed class ContextPooler : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Linear dense;
#pragma warning restore IDE1006
    private readonly double _dropout;
    private readonly string _act;

    public ContextPooler(EncoderConfig c, DebertaSettings s, ScalarType dtype, Device device) : base("pooler")
    {
        dense = nn.Linear(s.PoolerHiddenSize, s.PoolerHiddenSize, device: device, dtype: dtype);
        _dropout = s.PoolerDropout;
        _act = s.PoolerHiddenAct;
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden)
    {
        using var scope = torch.NewDisposeScope();
        var y = dense.call(nn.functional.dropout(hidden[.., 0, ..], _dropout, training));
        // transformers' ACT2FN: "gelu" is the erf form, gelu_new / gelu_pytorch_tanh the tanh approximation.
        y = _act switch
        {
            "tanh" => torch.tanh(y),
            "relu" => nn.functional.relu(y),
            "gelu_new" or "gelu_pytorch_tanh" => 0.5 * y * (1 + torch.tanh(Math.Sqrt(2 / Math.PI) * (y + 0.044715 * y.pow(3)))),
            _ => nn.functional.gelu(y),
        };
        return scope.MoveToOuter(y);
    }
}

/// <summary>DebertaV2ForSequenceClassification's head: <c>pooler</c> (ContextPooler), dropout (<c>cls_dropout</c>), <c>classifier</c>.</summary>
internal sealed class DebertaHead : EncoderHead
{
    private readonly ContextPooler _pooler;
    private readonly Linear _classifier;
    private readonly double _dropout;

    public DebertaHead(EncoderConfig c, DebertaSettings s, ScalarType dtype, Device device)
    {
        _pooler = new ContextPooler(c, s, dtype, device);
        _classifier = nn.Linear(c.HiddenSize, c.NumLabels, device: device, dtype: dtype);
        _dropout = c.ClassifierDropout;
    }

    public override IReadOnlyList<(string Name, nn.Module Module)> Modules => new (string, nn.Module)[] { ("pooler", _pooler), (EncoderClassifier.HeadName, _classifier) };

    public override Tensor Logits(Tensor hidden, SequenceEncoder encoder, bool training)
    {
        using var scope = torch.NewDisposeScope();
        return scope.MoveToOuter(_classifier.call(nn.functional.dropout(_pooler.call(hidden), _dropout, training)));
    }
}
