using Google.Protobuf;
using Onnx;

namespace ResLora.Tests.Pipelines;

/// <summary>How a test graph stores its floating-point initializers (onnx.proto TensorProto).</summary>
public enum OnnxStorage
{
    /// <summary>float32 in raw_data (what torch.onnx writes).</summary>
    RawFloat32,

    /// <summary>float32 in the repeated float_data field.</summary>
    FloatData,

    /// <summary>float16 in raw_data.</summary>
    RawFloat16,

    /// <summary>float16 bit patterns in int32_data.</summary>
    Int32DataFloat16,
}

/// <summary>The variants of the tiny BERT export.</summary>
/// <param name="FusedLayerNorm">LayerNormalization ops (opset 17) instead of the decomposed ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add.</param>
/// <param name="Storage">How initializers hold their values.</param>
/// <param name="ConcatHeadShape">The head Reshape's shape built as torch.onnx does (Concat of Shape pieces and constants), else one constant.</param>
/// <param name="HeadsInGraph">False: the head shape is computed from (hidden / headDim) at run time, so the graph does not show the head count.</param>
/// <param name="GemmPooler">The pooler as Gemm(transB=1) with an (out, in) weight, else MatMul + Add.</param>
/// <param name="RobertaPositions">Positions computed from input_ids as RoBERTa does (cumsum of non-padding + padding id), else a stored range.</param>
public sealed record TinyBertVariant(bool FusedLayerNorm = false, OnnxStorage Storage = OnnxStorage.RawFloat32, bool ConcatHeadShape = true, bool HeadsInGraph = true, bool GemmPooler = true, bool RobertaPositions = false);

/// <summary>
/// A 2-layer BERT encoder (hidden 8, 2 heads, intermediate 16) written as an ONNX graph the way torch.onnx exports
/// Hugging Face's BertModel: MatMul + Add projections with (in, out) weights, the attention as Reshape/Transpose,
/// Q·Kᵀ, scale, mask, Softmax, ·V; exact GELU through Erf; post-LN residuals; the pooler on the first token. Every
/// initializer gets a generated name (<c>onnx::MatMul_123</c>), query/key/value are created in a shuffled order and
/// bias Adds alternate their operand order, so only the graph's structure tells the roles. <see cref="Expected"/>
/// holds each Hugging Face tensor in Hugging Face's layout.
/// </summary>
public sealed class TinyBertOnnx
{
    public const int Hidden = 8, Heads = 2, HeadDim = 4, Intermediate = 16, Vocab = 20, Positions = 16, Types = 2, Layers = 2;
    public const float Eps = 1e-12f;

    private readonly GraphProto _g = new() { Name = "main_graph" };
    private readonly TinyBertVariant _v;
    private readonly Random _rng = new(11);
    private int _id = 100;

    /// <summary>Hugging Face name → (values in Hugging Face's layout, as stored after any float16 rounding; shape).</summary>
    public Dictionary<string, (float[] Values, long[] Shape)> Expected { get; } = new(StringComparer.Ordinal);

    public ModelProto Model { get; }

    public TinyBertOnnx(TinyBertVariant variant)
    {
        _v = variant;
        foreach (var name in new[] { "input_ids", "attention_mask", "token_type_ids" }) _g.Input.Add(IntInput(name));
        string h = Embeddings();
        string mask = Mask();
        for (int layer = 0; layer < Layers; layer++) h = Layer(layer, h, mask);
        _g.Output.Add(new ValueInfoProto { Name = h });
        _g.Output.Add(new ValueInfoProto { Name = Pooler(h) });
        Model = new ModelProto { IrVersion = 8, ProducerName = "pytorch", Graph = _g, OpsetImport = { new OperatorSetIdProto { Domain = "", Version = variant.FusedLayerNorm ? 17 : 13 } } };
    }

    public byte[] Bytes() => Model.ToByteArray();

    private static ValueInfoProto IntInput(string name) => new()
    {
        Name = name,
        Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = 7, Shape = new TensorShapeProto { Dim = { new TensorShapeProto.Types.Dimension { DimParam = "batch" }, new TensorShapeProto.Types.Dimension { DimParam = "sequence" } } } } },
    };

    // ---- graph building ----

    private string Node(string op, IEnumerable<string> inputs, params AttributeProto[] attrs)
    {
        int id = _id++;
        var n = new NodeProto { Name = $"{op}_{id}", OpType = op, Input = { inputs }, Output = { $"{id}" } };
        n.Attribute.Add(attrs);
        _g.Node.Add(n);
        return n.Output[0];
    }

    private string Node(string op, params string[] inputs) => Node(op, (IEnumerable<string>)inputs);

    private static AttributeProto Ints(string name, params long[] v) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Ints, Ints = { v } };

    private static AttributeProto Int(string name, long v) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = v };

    private static AttributeProto Float(string name, float v) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = v };

    /// <summary>A Constant node holding a float scalar (torch.onnx writes scalars this way).</summary>
    private string ConstScalar(float v) => Node("Constant", Array.Empty<string>(), new AttributeProto
    {
        Name = "value",
        Type = AttributeProto.Types.AttributeType.Tensor,
        T = new TensorProto { DataType = 1, RawData = ByteString.CopyFrom(BitConverter.GetBytes(v)) },
    });

    private string ConstLongs(params long[] v)
    {
        string name = $"onnx::Const_{_id++}";
        _g.Initializer.Add(new TensorProto { Name = name, DataType = 7, Dims = { v.Length }, RawData = ByteString.CopyFrom(v.SelectMany(BitConverter.GetBytes).ToArray()) });
        return name;
    }

    /// <summary>A float initializer with a generated name, stored per the variant; returns its name and the values as stored.</summary>
    private (string Name, float[] Stored) Init(string op, float[] values, params long[] dims)
    {
        string name = $"onnx::{op}_{_id++}";
        var t = new TensorProto { Name = name, Dims = { dims } };
        float[] stored = values;
        switch (_v.Storage)
        {
            case OnnxStorage.RawFloat32:
                t.DataType = 1;
                t.RawData = ByteString.CopyFrom(values.SelectMany(BitConverter.GetBytes).ToArray());
                break;
            case OnnxStorage.FloatData:
                t.DataType = 1;
                t.FloatData.Add(values);
                break;
            case OnnxStorage.RawFloat16:
            case OnnxStorage.Int32DataFloat16:
                t.DataType = 10;
                var bits = values.Select(x => BitConverter.HalfToUInt16Bits((Half)x)).ToArray();
                stored = bits.Select(b => (float)BitConverter.UInt16BitsToHalf(b)).ToArray();
                if (_v.Storage == OnnxStorage.RawFloat16) t.RawData = ByteString.CopyFrom(bits.SelectMany(BitConverter.GetBytes).ToArray());
                else t.Int32Data.Add(bits.Select(b => (int)b));
                break;
        }
        _g.Initializer.Add(t);
        return (name, stored);
    }

    private float[] Random(int n, float scale = 0.5f) => Enumerable.Range(0, n).Select(_ => (float)(_rng.NextDouble() * 2 - 1) * scale).ToArray();

    /// <summary>A stored tensor that is also a Hugging Face tensor in the same layout.</summary>
    private string Param(string hf, string op, float[] values, params long[] dims)
    {
        var (name, stored) = Init(op, values, dims);
        Expected[hf] = (stored, dims);
        return name;
    }

    /// <summary>x·W + b with W stored (in, out); Expected gets W as Hugging Face's (out, in). The bias Add alternates operand order.</summary>
    private string Linear(string hf, string x, int inF, int outF)
    {
        var w = Random(outF * inF); // (out, in), row-major
        var stored = new float[w.Length];
        for (int o = 0; o < outF; o++) for (int i = 0; i < inF; i++) stored[i * outF + o] = w[o * inF + i];
        var (wName, wStored) = Init("MatMul", stored, inF, outF);
        var hfLayout = new float[w.Length];
        for (int o = 0; o < outF; o++) for (int i = 0; i < inF; i++) hfLayout[o * inF + i] = wStored[i * outF + o];
        Expected[hf + ".weight"] = (hfLayout, new long[] { outF, inF });
        string b = Param(hf + ".bias", "Add", Random(outF), outF);
        string mm = Node("MatMul", x, wName);
        return _id % 2 == 0 ? Node("Add", b, mm) : Node("Add", mm, b);
    }

    private string LayerNorm(string hf, string x)
    {
        string gamma = Param(hf + ".weight", "Mul", Random(Hidden, 1f).Select(v => v + 1).ToArray(), Hidden);
        string beta = Param(hf + ".bias", "Add", Random(Hidden, 0.1f), Hidden);
        if (_v.FusedLayerNorm) return Node("LayerNormalization", new[] { x, gamma, beta }, Int("axis", -1), Float("epsilon", Eps));
        string mean = Node("ReduceMean", new[] { x }, Ints("axes", -1));
        string d = Node("Sub", x, mean);
        string sq = Node("Pow", d, ConstScalar(2f));
        string variance = Node("ReduceMean", new[] { sq }, Ints("axes", -1));
        string std = Node("Sqrt", Node("Add", variance, ConstScalar(Eps)));
        return Node("Add", Node("Mul", Node("Div", d, std), gamma), beta);
    }

    private string Embeddings()
    {
        string word = Param("embeddings.word_embeddings.weight", "Gather", Random(Vocab * Hidden), Vocab, Hidden);
        string pos = Param("embeddings.position_embeddings.weight", "Gather", Random(Positions * Hidden), Positions, Hidden);
        string types = Param("embeddings.token_type_embeddings.weight", "Gather", Random(Types * Hidden), Types, Hidden);
        // position_ids: a stored range sliced to the sequence length, as BertEmbeddings' buffer exports.
        string positionIds = ConstLongs(Enumerable.Range(0, Positions).Select(i => (long)i).ToArray());
        string seqLen = Node("Unsqueeze", new[] { Node("Gather", new[] { Node("Shape", "input_ids"), ConstLongs(1) }, Int("axis", 0)) }, Ints("axes", 0));
        string sliced = Node("Slice", positionIds, ConstLongs(0), seqLen, ConstLongs(0));
        if (_v.RobertaPositions)
        {
            // create_position_ids_from_input_ids: cumsum(input_ids != pad) * (input_ids != pad) + pad.
            string notPad = Node("Cast", new[] { Node("Not", Node("Equal", "input_ids", ConstLongs(1))) }, Int("to", 7));
            sliced = Node("Add", Node("Mul", Node("CumSum", notPad, ConstLongs(1)), notPad), ConstLongs(1));
        }
        string sum = Node("Add", Node("Gather", word, "input_ids"), Node("Gather", types, "token_type_ids"));
        sum = Node("Add", sum, Node("Gather", pos, sliced));
        return LayerNorm("embeddings.LayerNorm", sum);
    }

    /// <summary>(1 - mask) * -10000, broadcast over heads and queries.</summary>
    private string Mask()
    {
        string m = Node("Cast", new[] { Node("Unsqueeze", new[] { "attention_mask" }, Ints("axes", 1, 2)) }, Int("to", 1));
        return Node("Mul", Node("Sub", ConstScalar(1f), m), ConstScalar(-10000f));
    }

    /// <summary>(batch, seq, hidden) → (batch, seq, heads, headDim), with the shape built per the variant.</summary>
    private string SplitHeads(string x)
    {
        string shape;
        if (!_v.HeadsInGraph)
        {
            // heads = hidden / headDim computed from the input's own shape: nothing in the graph is the head count.
            string hidden = Node("Gather", new[] { Node("Shape", x), ConstLongs(2) }, Int("axis", 0));
            string heads = Node("Div", hidden, ConstLongs(HeadDim));
            shape = Node("Concat", new[] { ConstLongs(0), ConstLongs(0), heads, ConstLongs(-1) }, Int("axis", 0));
        }
        else if (_v.ConcatHeadShape)
        {
            string Dim(int i) => Node("Unsqueeze", new[] { Node("Gather", new[] { Node("Shape", x), ConstLongs(i) }, Int("axis", 0)) }, Ints("axes", 0));
            shape = Node("Concat", new[] { Dim(0), Dim(1), ConstLongs(Heads), ConstLongs(HeadDim) }, Int("axis", 0));
        }
        else shape = ConstLongs(0, 0, Heads, HeadDim);
        return Node("Reshape", x, shape);
    }

    private string Layer(int layer, string h, string mask)
    {
        string p = $"encoder.layer.{layer}.";
        // Created value, query, key: the node order says nothing about the roles.
        string v = Linear(p + "attention.self.value", h, Hidden, Hidden);
        string q = Linear(p + "attention.self.query", h, Hidden, Hidden);
        string k = Linear(p + "attention.self.key", h, Hidden, Hidden);
        string vh = Node("Transpose", new[] { SplitHeads(v) }, Ints("perm", 0, 2, 1, 3));   // (batch, heads, seq, headDim)
        string qh = Node("Transpose", new[] { SplitHeads(q) }, Ints("perm", 0, 2, 1, 3));   // (batch, heads, seq, headDim)
        string kt = Node("Transpose", new[] { SplitHeads(k) }, Ints("perm", 0, 2, 3, 1));   // (batch, heads, headDim, seq)
        string scores = Node("Div", Node("MatMul", qh, kt), ConstScalar(MathF.Sqrt(HeadDim))); // (batch, heads, seq, seq)
        string probs = Node("Softmax", new[] { Node("Add", scores, mask) }, Int("axis", -1));
        string ctx = Node("Transpose", new[] { Node("MatMul", probs, vh) }, Ints("perm", 0, 2, 1, 3));
        ctx = Node("Reshape", ctx, ConstLongs(0, 0, Hidden));                                 // (batch, seq, hidden)
        string attn = Linear(p + "attention.output.dense", ctx, Hidden, Hidden);
        string h1 = LayerNorm(p + "attention.output.LayerNorm", Node("Add", attn, h));
        string inter = Linear(p + "intermediate.dense", h1, Hidden, Intermediate);
        // Exact GELU: x * (1 + erf(x / sqrt 2)) * 0.5.
        string gelu = Node("Mul", Node("Mul", inter, Node("Add", Node("Erf", Node("Div", inter, ConstScalar(MathF.Sqrt(2f)))), ConstScalar(1f))), ConstScalar(0.5f));
        string output = Linear(p + "output.dense", gelu, Intermediate, Hidden);
        return LayerNorm(p + "output.LayerNorm", Node("Add", output, h1));
    }

    private string Pooler(string h)
    {
        string first = Node("Gather", new[] { h, ConstLongs(0) }, Int("axis", 1)); // (batch, hidden): the [CLS] state
        if (!_v.GemmPooler) return Node("Tanh", Linear("pooler.dense", first, Hidden, Hidden));
        string w = Param("pooler.dense.weight", "Gemm", Random(Hidden * Hidden), Hidden, Hidden); // (out, in): transB = 1
        string b = Param("pooler.dense.bias", "Gemm", Random(Hidden), Hidden);
        return Node("Tanh", Node("Gemm", new[] { first, w, b }, Float("alpha", 1), Float("beta", 1), Int("transB", 1)));
    }
}
