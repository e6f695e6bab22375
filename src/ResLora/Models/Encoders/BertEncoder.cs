using TorchSharp.Modules;
using TorchSharp.Utils;

namespace ResLora.Models.Encoders;

/// <summary>
/// Word + position + token-type embeddings, LayerNorm, dropout (Hugging Face's <c>BertEmbeddings</c> /
/// <c>RobertaEmbeddings</c>). RoBERTa numbers positions from <c>pad_token_id + 1</c> over non-pad tokens
/// (<c>create_position_ids_from_input_ids</c>); BERT uses 0..n-1.
/// </summary>
public sealed class EncoderEmbeddings : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "word_embeddings")] private readonly Embedding _word;
    [ComponentName(Name = "position_embeddings")] private readonly Embedding _position;
    [ComponentName(Name = "token_type_embeddings")] private readonly Embedding _tokenType;
    [ComponentName(Name = "LayerNorm")] private readonly LayerNorm _norm;
    private readonly EncoderConfig _c;

    public EncoderEmbeddings(EncoderConfig c, ScalarType dtype, Device device) : base("embeddings")
    {
        _c = c;
        _word = nn.Embedding(c.VocabSize, c.HiddenSize, device: device, dtype: dtype);
        _position = nn.Embedding(c.MaxPositionEmbeddings, c.HiddenSize, device: device, dtype: dtype);
        _tokenType = nn.Embedding(c.TypeVocabSize, c.HiddenSize, device: device, dtype: dtype);
        _norm = nn.LayerNorm(c.HiddenSize, c.LayerNormEps, device: device, dtype: dtype);
        RegisterComponents();
    }

    public Embedding WordEmbeddings => _word;

    public override Tensor forward(Tensor inputIds) => Forward(inputIds, null);

    /// <summary>(batch, seq) ids and optional token types → (batch, seq, hidden).</summary>
    public Tensor Forward(Tensor inputIds, Tensor? tokenTypeIds)
    {
        using var scope = torch.NewDisposeScope();
        long t = inputIds.shape[1];
        Tensor positions;
        if (_c.Family == EncoderFamily.Roberta)
        {
            var notPad = inputIds.ne(_c.PadTokenId).to_type(ScalarType.Int64);
            positions = notPad.cumsum(1) * notPad + _c.PadTokenId;
        }
        else positions = torch.arange(t, dtype: ScalarType.Int64, device: inputIds.device).unsqueeze(0);
        var types = tokenTypeIds ?? torch.zeros_like(inputIds);
        var e = _word.call(inputIds) + _tokenType.call(types) + _position.call(positions);
        e = nn.functional.dropout(_norm.call(e), _c.HiddenDropout, training);
        return scope.MoveToOuter(e);
    }
}

/// <summary>Query, key and value projections (<c>attention.self</c>); the softmax attention runs in <see cref="EncoderAttention"/>.</summary>
public sealed class EncoderSelfAttention : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // Hugging Face module names
    private readonly nn.Module<Tensor, Tensor> query, key, value;
#pragma warning restore IDE1006

    public EncoderSelfAttention(EncoderConfig c, string prefix, int layer, ILinearFactory f, ScalarType dtype, Device device) : base("self")
    {
        LinearSpec Spec(string n) => new($"{prefix}.attention.self.{n}", "attention.self." + n, layer, c.HiddenSize, c.HiddenSize, true);
        query = f.Create(Spec("query"), dtype, device);
        key = f.Create(Spec("key"), dtype, device);
        value = f.Create(Spec("value"), dtype, device);
        RegisterComponents();
    }

    public nn.Module<Tensor, Tensor> Query => query;
    public nn.Module<Tensor, Tensor> Key => key;
    public nn.Module<Tensor, Tensor> Value => value;

    public override Tensor forward(Tensor x) => throw new InvalidOperationException("EncoderAttention drives the projections.");
}

/// <summary>A projection followed by dropout and a residual LayerNorm (<c>attention.output</c> and <c>output</c>).</summary>
public sealed class EncoderResidualOutput : nn.Module<Tensor, Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly nn.Module<Tensor, Tensor> dense;
#pragma warning restore IDE1006
    [ComponentName(Name = "LayerNorm")] private readonly LayerNorm _norm;
    private readonly double _dropout;

    public EncoderResidualOutput(LinearSpec spec, EncoderConfig c, ILinearFactory f, ScalarType dtype, Device device) : base("output")
    {
        dense = f.Create(spec, dtype, device);
        _norm = nn.LayerNorm(c.HiddenSize, c.LayerNormEps, device: device, dtype: dtype);
        _dropout = c.HiddenDropout;
        RegisterComponents();
    }

    public nn.Module<Tensor, Tensor> Dense => dense;

    /// <summary>LayerNorm(dropout(dense(x)) + residual).</summary>
    public override Tensor forward(Tensor x, Tensor residual)
    {
        using var scope = torch.NewDisposeScope();
        var y = nn.functional.dropout(dense.call(x), _dropout, training);
        return scope.MoveToOuter(_norm.call(y + residual));
    }
}

/// <summary>Multi-head self-attention with the additive padding mask, then its output block (<c>attention</c>).</summary>
public sealed class EncoderAttention : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly EncoderSelfAttention self;
    private readonly EncoderResidualOutput output;
#pragma warning restore IDE1006
    private readonly EncoderConfig _c;

    public EncoderAttention(EncoderConfig c, string prefix, int layer, ILinearFactory f, ScalarType dtype, Device device) : base("attention")
    {
        _c = c;
        self = new EncoderSelfAttention(c, prefix, layer, f, dtype, device);
        output = new EncoderResidualOutput(new LinearSpec($"{prefix}.attention.output.dense", "attention.output.dense", layer, c.HiddenSize, c.HiddenSize, true), c, f, dtype, device);
        RegisterComponents();
    }

    public EncoderSelfAttention Self => self;
    public EncoderResidualOutput Output => output;

    public override Tensor forward(Tensor x) => Forward(x, null);

    /// <summary><paramref name="mask"/>: additive (batch, 1, 1, seq), or null when nothing is padded.</summary>
    public Tensor Forward(Tensor x, Tensor? mask)
    {
        using var scope = torch.NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        int nh = _c.NumAttentionHeads, hd = _c.HeadDim;
        Tensor Heads(Tensor y) => y.view(b, t, nh, hd).transpose(1, 2); // (b, heads, t, hd)
        var q = Heads(self.Query.call(x));
        var k = Heads(self.Key.call(x));
        var v = Heads(self.Value.call(x));
        var scores = torch.matmul(q, k.transpose(-1, -2)) / Math.Sqrt(hd);
        if (mask is not null) scores = scores + mask;
        var probs = nn.functional.dropout(nn.functional.softmax(scores, -1), _c.AttentionDropout, training);
        var ctx = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, nh * hd);
        return scope.MoveToOuter(output.call(ctx, x));
    }
}

/// <summary>The feed-forward up-projection and activation (<c>intermediate</c>).</summary>
public sealed class EncoderIntermediate : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly nn.Module<Tensor, Tensor> dense;
#pragma warning restore IDE1006
    private readonly string _act;

    public EncoderIntermediate(EncoderConfig c, string prefix, int layer, ILinearFactory f, ScalarType dtype, Device device) : base("intermediate")
    {
        _act = c.HiddenAct;
        dense = f.Create(new LinearSpec($"{prefix}.intermediate.dense", "intermediate.dense", layer, c.HiddenSize, c.IntermediateSize, true), dtype, device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var h = dense.call(x);
        // "gelu" is the exact erf form; gelu_new / gelu_pytorch_tanh the tanh approximation (transformers' ACT2FN).
        var y = _act switch
        {
            "relu" => nn.functional.relu(h),
            "gelu_new" or "gelu_pytorch_tanh" => 0.5 * h * (1 + torch.tanh(Math.Sqrt(2 / Math.PI) * (h + 0.044715 * h.pow(3)))),
            _ => nn.functional.gelu(h),
        };
        return scope.MoveToOuter(y);
    }
}

/// <summary>One post-LayerNorm transformer block (<c>encoder.layer.{i}</c>).</summary>
public sealed class EncoderLayer : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly EncoderAttention attention;
    private readonly EncoderIntermediate intermediate;
    private readonly EncoderResidualOutput output;
#pragma warning restore IDE1006

    public EncoderLayer(EncoderConfig c, string prefix, int layer, ILinearFactory f, ScalarType dtype, Device device) : base("layer")
    {
        attention = new EncoderAttention(c, prefix, layer, f, dtype, device);
        intermediate = new EncoderIntermediate(c, prefix, layer, f, dtype, device);
        output = new EncoderResidualOutput(new LinearSpec($"{prefix}.output.dense", "output.dense", layer, c.IntermediateSize, c.HiddenSize, true), c, f, dtype, device);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => Forward(x, null);

    public Tensor Forward(Tensor x, Tensor? mask)
    {
        using var scope = torch.NewDisposeScope();
        var a = attention.Forward(x, mask);
        return scope.MoveToOuter(output.call(intermediate.call(a), a));
    }
}

/// <summary>The layer stack (<c>encoder</c>).</summary>
public sealed class EncoderStack : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly ModuleList<EncoderLayer> layer;
#pragma warning restore IDE1006

    public EncoderStack(EncoderConfig c, string prefix, ILinearFactory f, ScalarType dtype, Device device) : base("encoder")
    {
        layer = new ModuleList<EncoderLayer>();
        for (int i = 0; i < c.NumHiddenLayers; i++) layer.Add(new EncoderLayer(c, $"{prefix}encoder.layer.{i}", i, f, dtype, device));
        RegisterComponents();
    }

    public IReadOnlyList<EncoderLayer> Layers => layer.ToList();

    public override Tensor forward(Tensor x) => Forward(x, null);

    public Tensor Forward(Tensor x, Tensor? mask)
    {
        foreach (var l in layer)
        {
            var next = l.Forward(x, mask);
            x = next;
        }
        return x;
    }
}

/// <summary>tanh(dense(h[:, 0])) over the first token (<c>pooler</c>); BERT's classifier reads it.</summary>
public sealed class EncoderPooler : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Linear dense;
#pragma warning restore IDE1006

    public EncoderPooler(EncoderConfig c, ScalarType dtype, Device device) : base("pooler")
    {
        dense = nn.Linear(c.HiddenSize, c.HiddenSize, device: device, dtype: dtype);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden)
    {
        using var scope = torch.NewDisposeScope();
        return scope.MoveToOuter(torch.tanh(dense.call(hidden[.., 0, ..])));
    }
}

/// <summary>
/// A BERT-family encoder with Hugging Face's module names (<c>embeddings</c>, <c>encoder.layer.{i}.attention.self.query</c>,
/// <c>pooler</c>): BERT, RoBERTa, XLM-RoBERTa and MiniLM. Every projection inside the layers is built through one
/// <see cref="ILinearFactory"/>, so every adapter method applies; the constructor's prefix is the module path of this
/// encoder inside its parent (<c>bert.</c> in a classification model, empty on its own).
/// </summary>
public sealed class BertEncoder : SequenceEncoder
{
#pragma warning disable IDE1006
    private readonly EncoderEmbeddings embeddings;
    private readonly EncoderStack encoder;
    private readonly EncoderPooler? pooler;
#pragma warning restore IDE1006
    private readonly IForwardLifecycle? _lifecycle;

    public BertEncoder(EncoderConfig config, ILinearFactory? factory, ScalarType dtype, Device device, string prefix = "", bool withPooler = true)
        : base("encoder_model", config, dtype, device)
    {
        config.Validate();
        var f = factory ?? PlainLinearFactory.Instance;
        _lifecycle = f as IForwardLifecycle;
        embeddings = new EncoderEmbeddings(config, dtype, device);
        encoder = new EncoderStack(config, prefix, f, dtype, device);
        if (withPooler) pooler = new EncoderPooler(config, dtype, device);
        RegisterComponents();
    }

    public bool HasPooler => pooler is not null;
    public IReadOnlyList<EncoderLayer> Layers => encoder.Layers;

    /// <inheritdoc/>
    public override Tensor HiddenStates(Tensor inputIds, Tensor? attentionMask, Tensor? tokenTypeIds)
    {
        using var scope = torch.NewDisposeScope();
        using var forwardContext = _lifecycle?.BeginForward();
        long t = inputIds.shape[1];
        CheckLength(t);
        Tensor? mask = null;
        if (attentionMask is not null && !attentionMask.to_type(ScalarType.Bool).all().item<bool>())
        {
            // transformers' extended mask: (1 - mask) · finfo(dtype).min, broadcast over heads and queries.
            double lowest = Lowest(Dtype);
            mask = (1 - attentionMask.to_type(Dtype)).view(attentionMask.shape[0], 1, 1, t) * lowest;
        }
        var h = embeddings.Forward(inputIds, tokenTypeIds);
        h = encoder.Forward(h, mask);
        return scope.MoveToOuter(h);
    }

    /// <summary>The pooled first token (BERT's pooler); throws when the model was built without one.</summary>
    public Tensor Pooled(Tensor hidden) =>
        (pooler ?? throw new InvalidOperationException("this encoder has no pooler")).call(hidden);

    /// <summary>The weights a BERT-family checkpoint provides, by name without any prefix, with their shapes.</summary>
    public static Dictionary<string, long[]> ExpectedWeights(EncoderConfig c, bool withPooler)
    {
        long h = c.HiddenSize, m = c.IntermediateSize;
        var d = new Dictionary<string, long[]>(StringComparer.Ordinal)
        {
            ["embeddings.word_embeddings.weight"] = new[] { (long)c.VocabSize, h },
            ["embeddings.position_embeddings.weight"] = new[] { (long)c.MaxPositionEmbeddings, h },
            ["embeddings.token_type_embeddings.weight"] = new[] { (long)c.TypeVocabSize, h },
            ["embeddings.LayerNorm.weight"] = new[] { h },
            ["embeddings.LayerNorm.bias"] = new[] { h },
        };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"encoder.layer.{i}.";
            foreach (var n in new[] { "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense" })
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
        if (withPooler)
        {
            d["pooler.dense.weight"] = new[] { h, h };
            d["pooler.dense.bias"] = new[] { h };
        }
        return d;
    }

    /// <summary>
    /// Random initialisation as transformers' BertPreTrainedModel._init_weights: normal(0, 0.02) for linear and embedding
    /// weights, zero biases, LayerNorm weight 1 and bias 0. For tests and models built from scratch.
    /// </summary>
    public static void InitializeWeights(nn.Module module, IEnumerable<string> names, long seed, double std = 0.02)
    {
        using var noGrad = torch.no_grad();
        using var gen = new torch.Generator((ulong)seed);
        var all = module.named_parameters().ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);
        foreach (var name in names)
        {
            var p = all[name];
            if (name.Contains("LayerNorm.weight", StringComparison.Ordinal)) p.fill_(1.0);
            else if (name.EndsWith(".bias", StringComparison.Ordinal)) p.zero_();
            else
            {
                using var r = torch.randn(p.shape, dtype: ScalarType.Float32, generator: gen) * std;
                p.copy_(r.to(p.dtype, p.device));
            }
        }
    }
}
