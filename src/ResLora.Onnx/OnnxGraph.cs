using System.Runtime.InteropServices;
using Google.Protobuf;
using Onnx;
using static TorchSharp.torch;

namespace ResLora.Onnx;

/// <summary>
/// One ONNX model read whole (onnx/onnx.proto: ModelProto → GraphProto), with its nodes indexed by the tensors they
/// produce and consume and its constants (initializers and <c>Constant</c> nodes) by name. Every question the BERT
/// reader asks of the graph goes through here; nothing in it knows BERT.
/// </summary>
internal sealed class OnnxGraph
{
    private readonly Dictionary<string, TensorProto> _constants = new(StringComparer.Ordinal);
    private readonly Dictionary<string, NodeProto> _producer = new(StringComparer.Ordinal);
    private readonly Dictionary<string, List<NodeProto>> _consumers = new(StringComparer.Ordinal);

    /// <summary>The file the model was read from; every error names it.</summary>
    public string File { get; }

    public GraphProto Graph { get; }

    /// <summary>Names of the graph's real inputs (an initializer listed as an input, as old exporters did, is not one).</summary>
    public IReadOnlyList<string> Inputs { get; }

    /// <summary>The initializers by name (<c>Constant</c> nodes excluded).</summary>
    public IReadOnlyDictionary<string, TensorProto> Initializers { get; }

    private OnnxGraph(string file, GraphProto graph)
    {
        File = file;
        Graph = graph;
        var inits = new Dictionary<string, TensorProto>(StringComparer.Ordinal);
        foreach (var t in graph.Initializer)
        {
            CheckSize(file, t);
            inits[t.Name] = t;
            _constants[t.Name] = t;
        }
        Initializers = inits;
        foreach (var n in graph.Node)
        {
            foreach (var o in n.Output) if (o.Length > 0) _producer[o] = n;
            for (int i = 0; i < n.Input.Count; i++)
            {
                if (n.Input[i].Length == 0) continue;
                if (!_consumers.TryGetValue(n.Input[i], out var list)) _consumers[n.Input[i]] = list = new List<NodeProto>();
                if (!list.Contains(n)) list.Add(n);
            }
            if (n.OpType == "Constant" && n.Output.Count == 1 && ConstantValue(n) is { } value) _constants[n.Output[0]] = value;
        }
        Inputs = graph.Input.Select(i => i.Name).Where(n => !inits.ContainsKey(n)).ToList();
    }

    /// <summary>
    /// An initializer's declared shape against the data the file holds for it, before anything is allocated from the
    /// shape: negative or overflowing dimensions, or elements × element size that differ from the stored bytes (raw_data)
    /// or values (the typed fields), are a damaged or hostile file, one line naming it (a shape of 10^12 rows was a
    /// crash). External data is refused where it is read; types this converter never reads are not checked.
    /// </summary>
    private static void CheckSize(string file, TensorProto t)
    {
        if (t.DataLocation == TensorProto.Types.DataLocation.External || t.ExternalData.Count > 0) return;
        int size = t.DataType switch
        {
            Float or Int32 => 4,
            Double or Int64 => 8,
            Float16 or BFloat16 => 2,
            _ => 0,
        };
        if (size == 0) return;
        string shape = $"[{string.Join(", ", t.Dims)}]";
        long n = 1;
        foreach (long d in t.Dims)
        {
            if (d < 0 || (d > 0 && n > long.MaxValue / size / d))
                throw new UserInputException($"{file}: initializer '{t.Name}' declares shape {shape}, which no file can hold; the file is damaged.");
            n *= d;
        }
        long rawBytes = t.RawData.Length;
        long typed = t.DataType switch
        {
            Float => t.FloatData.Count,
            Double => t.DoubleData.Count,
            Int64 => t.Int64Data.Count,
            _ => t.Int32Data.Count, // int32, and float16/bfloat16 one value per int32_data entry (onnx.proto)
        };
        bool fits = rawBytes > 0 ? rawBytes == n * size : typed == n;
        if (!fits)
            throw new UserInputException($"{file}: initializer '{t.Name}' declares shape {shape} ({n} {DataTypeName(t.DataType)} values, {ResLora.IO.AvailableMemory.Format(n * size)}) but the file holds "
                + (rawBytes > 0 ? $"{rawBytes} bytes" : $"{typed} values") + " for it; the file is damaged or was cut short.");
    }

    /// <summary>
    /// Reads <paramref name="path"/> as an ONNX ModelProto. A file that is not one (truncated, another format) is a
    /// one-line <see cref="UserInputException"/> naming the file.
    /// </summary>
    public static OnnxGraph Load(string path)
    {
        if (!System.IO.File.Exists(path)) throw new FileNotFoundException($"--onnx {path}: no such file.", path);
        ModelProto model;
        try
        {
            using var stream = System.IO.File.OpenRead(path);
            model = ModelProto.Parser.ParseFrom(stream);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new UserInputException($"{path}: not a readable ONNX model ({OneLine(e.Message)}); the file is truncated or is not an ONNX export.", e);
        }
        if (model.Graph is null || model.Graph.Node.Count == 0)
            throw new UserInputException($"{path}: no graph nodes; this is not an ONNX model export (or it was cut short before its graph).");
        return new OnnxGraph(path, model.Graph);
    }

    private static string OneLine(string s) => string.Join(' ', s.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));

    public NodeProto? Producer(string tensor) => _producer.GetValueOrDefault(tensor);

    public IReadOnlyList<NodeProto> Consumers(string tensor) => _consumers.TryGetValue(tensor, out var l) ? l : Array.Empty<NodeProto>();

    /// <summary>Consumers of <paramref name="tensor"/> with the given op type.</summary>
    public IEnumerable<NodeProto> Consumers(string tensor, string opType) => Consumers(tensor).Where(n => n.OpType == opType);

    /// <summary>
    /// The initializer (or Constant node) behind <paramref name="tensor"/>, through <c>Identity</c> nodes (exporters
    /// share one weight between uses that way); null when the tensor is computed.
    /// </summary>
    public (string Name, TensorProto Tensor)? Constant(string tensor)
    {
        for (int hops = 0; hops < 8; hops++)
        {
            if (_constants.TryGetValue(tensor, out var t)) return (tensor, t);
            if (Producer(tensor) is { OpType: "Identity" } id) tensor = id.Input[0];
            else return null;
        }
        return null;
    }

    public bool IsConstant(string tensor) => Constant(tensor) is not null;

    /// <summary>The input of a two-input node that is not <paramref name="tensor"/> (null when both are it).</summary>
    public static string? Other(NodeProto node, string tensor) =>
        node.Input.Count != 2 ? null : node.Input[0] == tensor ? (node.Input[1] == tensor ? null : node.Input[1]) : node.Input[1] == tensor ? node.Input[0] : null;

    public static AttributeProto? Attr(NodeProto n, string name) => n.Attribute.FirstOrDefault(a => a.Name == name);

    /// <summary>
    /// Whether <paramref name="tensor"/> is computed from the values of the graph input <paramref name="input"/> (walks
    /// producers up to a bounded number of nodes; a Shape or Size of the input depends on its shape only, not followed).
    /// </summary>
    public bool DependsOn(string tensor, string input, int maxNodes = 64)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var todo = new Queue<string>();
        todo.Enqueue(tensor);
        while (todo.Count > 0 && seen.Count < maxNodes)
        {
            string t = todo.Dequeue();
            if (!seen.Add(t)) continue;
            if (t == input) return true;
            if (Producer(t) is { OpType: not ("Shape" or "Size") } p) foreach (var i in p.Input) if (i.Length > 0) todo.Enqueue(i);
        }
        return false;
    }

    // ---- Tensor data (onnx.proto TensorProto: raw_data little-endian, or the typed repeated fields) ----

    private const int Float = 1, Int32 = 6, Int64 = 7, Float16 = 10, Double = 11, BFloat16 = 16;

    public static string DataTypeName(int t) => t switch
    {
        Float => "float32",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        Int32 => "int32",
        Int64 => "int64",
        8 => "string",
        9 => "bool",
        Float16 => "float16",
        Double => "float64",
        BFloat16 => "bfloat16",
        _ => $"data type {t}",
    };

    public static bool IsFloating(TensorProto t) => t.DataType is Float or Float16 or BFloat16 or Double;

    /// <summary>The ScalarType the converted weight keeps: float16 and bfloat16 stay, float64 becomes float32.</summary>
    public static ScalarType TargetType(TensorProto t) => t.DataType switch
    {
        Float16 => ScalarType.Float16,
        BFloat16 => ScalarType.BFloat16,
        _ => ScalarType.Float32,
    };

    public static long[] Shape(TensorProto t) => t.Dims.ToArray();

    private static long Count(TensorProto t) => t.Dims.Aggregate(1L, (a, d) => a * d);

    private void RefuseExternal(string name, TensorProto t)
    {
        if (t.DataLocation == TensorProto.Types.DataLocation.External || t.ExternalData.Count > 0)
        {
            string where = t.ExternalData.FirstOrDefault(e => e.Key == "location")?.Value ?? "a separate file";
            throw new UserInputException($"{File}: initializer '{name}' is stored as external data (in {where}); this converter reads single-file ONNX models only. Re-save it with onnx.save_model(model, path, save_as_external_data=False) (models under 2 GB).");
        }
    }

    /// <summary>A floating-point initializer's values as float32 (float16/bfloat16 widen exactly; float64 rounds).</summary>
    public float[] Floats(string name, TensorProto t)
    {
        RefuseExternal(name, t);
        long n = Count(t);
        if (n > Array.MaxLength) throw new UserInputException($"{File}: initializer '{name}' has {n} elements, more than one array holds.");
        var raw = t.RawData.Span;
        float[] values;
        switch (t.DataType)
        {
            case Float:
                values = raw.Length > 0 ? MemoryMarshal.Cast<byte, float>(raw).ToArray() : t.FloatData.ToArray();
                break;
            case Double:
                values = (raw.Length > 0 ? MemoryMarshal.Cast<byte, double>(raw).ToArray() : t.DoubleData.ToArray()).Select(d => (float)d).ToArray();
                break;
            case Float16:
                // float16 without raw_data: one value per int32_data entry, its low 16 bits (onnx.proto, int32_data).
                values = raw.Length > 0
                    ? MemoryMarshal.Cast<byte, ushort>(raw).ToArray().Select(b => (float)BitConverter.UInt16BitsToHalf(b)).ToArray()
                    : t.Int32Data.Select(i => (float)BitConverter.UInt16BitsToHalf((ushort)i)).ToArray();
                break;
            case BFloat16:
                // bfloat16 is the upper half of a float32.
                values = raw.Length > 0
                    ? MemoryMarshal.Cast<byte, ushort>(raw).ToArray().Select(b => BitConverter.Int32BitsToSingle(b << 16)).ToArray()
                    : t.Int32Data.Select(i => BitConverter.Int32BitsToSingle((i & 0xFFFF) << 16)).ToArray();
                break;
            default:
                throw new UserInputException($"{File}: initializer '{name}' holds {DataTypeName(t.DataType)}; weights must be float32, float16, bfloat16 or float64.");
        }
        if (values.Length != n)
            throw new UserInputException($"{File}: initializer '{name}' holds {values.Length} values but its shape [{string.Join(", ", t.Dims)}] needs {n}; the file is damaged.");
        return values;
    }

    /// <summary>An integer or floating constant's values as long (for shapes, axes and indices).</summary>
    public long[] Longs(string name, TensorProto t)
    {
        RefuseExternal(name, t);
        var raw = t.RawData.Span;
        return t.DataType switch
        {
            Int64 => raw.Length > 0 ? MemoryMarshal.Cast<byte, long>(raw).ToArray() : t.Int64Data.ToArray(),
            Int32 => (raw.Length > 0 ? MemoryMarshal.Cast<byte, int>(raw).ToArray() : t.Int32Data.ToArray()).Select(i => (long)i).ToArray(),
            _ when IsFloating(t) => Floats(name, t).Select(f => (long)f).ToArray(),
            _ => throw new UserInputException($"{File}: constant '{name}' holds {DataTypeName(t.DataType)}, expected integers."),
        };
    }

    /// <summary>A scalar (or one-element) floating constant, or null.</summary>
    public double? Scalar(string tensor)
    {
        if (Constant(tensor) is not { } c || !IsFloating(c.Tensor) || Count(c.Tensor) != 1) return null;
        return Floats(c.Name, c.Tensor)[0];
    }

    /// <summary>The tensor a <c>Constant</c> node holds (its <c>value</c>, <c>value_float(s)</c> or <c>value_int(s)</c> attribute).</summary>
    private static TensorProto? ConstantValue(NodeProto n)
    {
        foreach (var a in n.Attribute)
        {
            switch (a.Name)
            {
                case "value": return a.T;
                case "value_float": return new TensorProto { DataType = Float, FloatData = { a.F } };
                case "value_floats": return new TensorProto { DataType = Float, Dims = { a.Floats.Count }, FloatData = { a.Floats } };
                case "value_int": return new TensorProto { DataType = Int64, Int64Data = { a.I } };
                case "value_ints": return new TensorProto { DataType = Int64, Dims = { a.Ints.Count }, Int64Data = { a.Ints } };
            }
        }
        return null;
    }

    /// <summary>How often each op type occurs (domain-qualified when not the default domain), most frequent first.</summary>
    public IReadOnlyList<KeyValuePair<string, int>> OpCounts() =>
        Graph.Node.GroupBy(n => string.IsNullOrEmpty(n.Domain) || n.Domain == "ai.onnx" ? n.OpType : $"{n.Domain}.{n.OpType}")
            .Select(g => KeyValuePair.Create(g.Key, g.Count()))
            .OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal).ToList();
}
