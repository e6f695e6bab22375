using ResLora.Models.Encoders;
using TorchSharp.Modules;
using TorchSharp.Utils;

namespace ResLora.Models.Deberta;

/// <summary>
/// transformers' DisentangledSelfAttention (DeBERTa paper §3.1, eq. 4): content-to-content q·kᵀ plus, with relative
/// attention, content-to-position (q against keys of the relative-position embeddings, c2p) and position-to-content (k
/// against their queries, p2c), all divided by √(head_dim · (1 + |pos_att_type|)). The positional keys/queries are
/// <c>key_proj</c>/<c>query_proj</c> of the shared <c>rel_embeddings</c> when <c>share_att_key</c> (v3), else
/// <c>pos_key_proj</c>/<c>pos_query_proj</c>; they are computed by <see cref="PositionalProjections"/> in a pass of their own.
/// </summary>
public sealed class DisentangledSelfAttention : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // Hugging Face module names
    private readonly nn.Module<Tensor, Tensor> query_proj, key_proj, value_proj;
    private readonly nn.Module<Tensor, Tensor>? pos_key_proj, pos_query_proj;
#pragma warning restore IDE1006
    private readonly EncoderConfig _c;
    private readonly DebertaSettings _s;

    public DisentangledSelfAttention(EncoderConfig c, DebertaSettings s, string prefix, int layer, ILinearFactory f, ScalarType dtype, Device device) : base("self")
    {
        _c = c;
        _s = s;
        LinearSpec Spec(string n) => new($"{prefix}.attention.self.{n}", "attention.self." + n, layer, c.HiddenSize, c.HiddenSize, true);
        query_proj = f.Create(Spec("query_proj"), dtype, device);
        key_proj = f.Create(Spec("key_proj"), dtype, device);
        value_proj = f.Create(Spec("value_proj"), dtype, device);
        if (s.RelativeAttention && !s.ShareAttKey)
        {
            if (s.C2P) pos_key_proj = f.Create(Spec("pos_key_proj"), dtype, device);
            if (s.P2C) pos_query_proj = f.Create(Spec("pos_query_proj"), dtype, device);
        }
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => throw new InvalidOperationException("DebertaLayer drives the attention.");

    /// <summary>
    /// The positional keys (c2p) and queries (p2c) of this layer from the (normed) relative embeddings (2·span, hidden), each
    /// (1, heads, 2·span, head_dim), or null when the term is off. Dropout on the embeddings first, as pos_dropout does.
    /// </summary>
    public (Tensor? PosKey, Tensor? PosQuery) PositionalProjections(Tensor relEmbeddings)
    {
        using var scope = torch.NewDisposeScope();
        var rel = nn.functional.dropout(relEmbeddings, _c.HiddenDropout, training).unsqueeze(0); // (1, 2span, hidden)
        Tensor? k = _s.C2P ? Heads((_s.ShareAttKey ? key_proj : pos_key_proj!).call(rel)) : null;
        Tensor? q = _s.P2C ? Heads((_s.ShareAttKey ? query_proj : pos_query_proj!).call(rel)) : null;
        return (k is null ? null : scope.MoveToOuter(k), q is null ? null : scope.MoveToOuter(q));
    }

    /// <summary>
    /// Context (batch, seq, hidden). <paramref name="pairMask"/>: bool (batch, 1, seq, seq), true where query i and key j
    /// are both real tokens, or null when nothing is padded; <paramref name="relPos"/> (seq, seq) bucketed i − j.
    /// </summary>
    public Tensor Forward(Tensor x, Tensor? pairMask, Tensor? relPos, Tensor? posKey, Tensor? posQuery)
    {
        using var scope = torch.NewDisposeScope();
        var q = Heads(query_proj.call(x)); // (b, heads, t, hd)
        var k = Heads(key_proj.call(x));
        var v = Heads(value_proj.call(x));
        double scale = Math.Sqrt(_c.HeadDim * (double)_s.ScaleFactor);
        var scores = torch.matmul(q, k.transpose(-1, -2)) / scale; // (b, heads, t, t)
        if (_s.RelativeAttention && relPos is not null)
        {
            int span = _s.AttSpan;
            long b = q.shape[0], h = q.shape[1], t = q.shape[2];
            if (posKey is not null)
            {
                // c2p[i, j] = q_i · posKey[clamp(r(i, j) + span)]
                var c2p = torch.matmul(q, posKey.transpose(-1, -2)); // (b, heads, t, 2span)
                var idx = (relPos + span).clamp(0, 2 * span - 1).expand(b, h, t, t);
                scores = scores + c2p.gather(-1, idx) / scale;
            }
            if (posQuery is not null)
            {
                // p2c[i, j] = k_j · posQuery[clamp(−r(j, i) + span)], gathered per key row and transposed
                var p2c = torch.matmul(k, posQuery.transpose(-1, -2)); // (b, heads, t, 2span)
                var idx = (-relPos + span).clamp(0, 2 * span - 1).expand(b, h, t, t);
                scores = scores + p2c.gather(-1, idx).transpose(-1, -2) / scale;
            }
        }
        Tensor probs;
        if (pairMask is null) probs = nn.functional.softmax(scores, -1);
        else
        {
            // XSoftmax: masked scores set to finfo.min, softmax, masked probabilities zeroed (padding query rows become 0).
            var off = pairMask.logical_not();
            probs = nn.functional.softmax(scores.masked_fill(off, SequenceEncoder.Lowest(scores.dtype)), -1).masked_fill(off, 0);
        }
        probs = nn.functional.dropout(probs, _c.AttentionDropout, training);
        long bb = x.shape[0], tt = x.shape[1];
        var ctx = torch.matmul(probs, v).transpose(1, 2).reshape(bb, tt, _c.HiddenSize);
        return scope.MoveToOuter(ctx);
    }

    private Tensor Heads(Tensor y) => y.view(y.shape[0], y.shape[1], _c.NumAttentionHeads, _c.HeadDim).transpose(1, 2);
}

/// <summary><c>attention</c>: the disentangled self-attention and its output block (dense, dropout, LayerNorm with the residual).</summary>
public sealed class DebertaAttention : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly DisentangledSelfAttention self;
    private readonly EncoderResidualOutput output;
#pragma warning restore IDE1006

    public DebertaAttention(EncoderConfig c, DebertaSettings s, string prefix, int layer, ILinearFactory f, ScalarType dtype, Device device) : base("attention")
    {
        self = new DisentangledSelfAttention(c, s, prefix, layer, f, dtype, device);
        output = new EncoderResidualOutput(new LinearSpec($"{prefix}.attention.output.dense", "attention.output.dense", layer, c.HiddenSize, c.HiddenSize, true), c, f, dtype, device);
        RegisterComponents();
    }

    public DisentangledSelfAttention Self => self;

    public override Tensor forward(Tensor x) => throw new InvalidOperationException("DebertaLayer drives the attention.");

    public Tensor Forward(Tensor x, Tensor? pairMask, Tensor? relPos, Tensor? posKey, Tensor? posQuery)
    {
        using var scope = torch.NewDisposeScope();
        return scope.MoveToOuter(output.call(self.Forward(x, pairMask, relPos, posKey, posQuery), x));
    }
}

/// <summary>One post-LayerNorm block (<c>encoder.layer.{i}</c>): attention, intermediate (GELU), output.</summary>
public sealed class DebertaLayer : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly DebertaAttention attention;
    private readonly EncoderIntermediate intermediate;
    private readonly EncoderResidualOutput output;
#pragma warning restore IDE1006

    public DebertaLayer(EncoderConfig c, DebertaSettings s, string prefix, int layer, ILinearFactory f, ScalarType dtype, Device device) : base("layer")
    {
        attention = new DebertaAttention(c, s, prefix, layer, f, dtype, device);
        intermediate = new EncoderIntermediate(c, prefix, layer, f, dtype, device);
        output = new EncoderResidualOutput(new LinearSpec($"{prefix}.output.dense", "output.dense", layer, c.IntermediateSize, c.HiddenSize, true), c, f, dtype, device);
        RegisterComponents();
    }

    public DisentangledSelfAttention SelfAttention => attention.Self;

    public override Tensor forward(Tensor x) => throw new InvalidOperationException("DebertaEncoder drives the layers.");

    public Tensor Forward(Tensor x, Tensor? pairMask, Tensor? relPos, Tensor? posKey, Tensor? posQuery)
    {
        using var scope = torch.NewDisposeScope();
        var a = attention.Forward(x, pairMask, relPos, posKey, posQuery);
        return scope.MoveToOuter(output.call(intermediate.call(a), a));
    }
}

/// <summary><c>encoder</c>: the layers, the shared relative-position embeddings and their LayerNorm.</summary>
public sealed class DebertaStack : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly ModuleList<DebertaLayer> layer;
    private readonly Embedding? rel_embeddings;
#pragma warning restore IDE1006
    [ComponentName(Name = "LayerNorm")] private readonly LayerNorm? _relNorm;

    public DebertaStack(EncoderConfig c, DebertaSettings s, string prefix, ILinearFactory f, ScalarType dtype, Device device) : base("encoder")
    {
        layer = new ModuleList<DebertaLayer>();
        for (int i = 0; i < c.NumHiddenLayers; i++) layer.Add(new DebertaLayer(c, s, $"{prefix}encoder.layer.{i}", i, f, dtype, device));
        if (s.RelativeAttention) rel_embeddings = nn.Embedding(2L * s.AttSpan, c.HiddenSize, device: device, dtype: dtype);
        if (s.NormRelEmbeddings) _relNorm = nn.LayerNorm(c.HiddenSize, c.LayerNormEps, device: device, dtype: dtype);
        RegisterComponents();
    }

    public IReadOnlyList<DebertaLayer> Layers => layer.ToList();

    public override Tensor forward(Tensor x) => throw new InvalidOperationException("DebertaEncoder drives the stack.");

    /// <summary>get_rel_embedding: the table (2·span, hidden), LayerNorm'ed when norm_rel_ebd has layer_norm; null without relative attention.</summary>
    public Tensor? RelEmbeddings()
    {
        if (rel_embeddings is null) return null;
        return _relNorm is null ? rel_embeddings.weight!.alias() : _relNorm.call(rel_embeddings.weight!);
    }
}
