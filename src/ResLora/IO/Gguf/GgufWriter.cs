using System.Text;

namespace ResLora.IO.Gguf;

/// <summary>
/// Writes a GGUF v3 file: metadata in the order set, then the tensor directory, then each tensor's data aligned to
/// <c>general.alignment</c> (32). Tensor values are produced one tensor at a time while writing (a model-sized float
/// copy never exists) and encoded as the tensor's <see cref="GgmlType"/>. The file appears atomically.
/// </summary>
public sealed class GgufWriter
{
    private readonly List<(string Key, GgufValueType Type, object Value)> _meta = new();
    private readonly List<(string Name, long[] Shape, GgmlType Type, Func<float[]> Values)> _tensors = new();
    private readonly HashSet<string> _keys = new(StringComparer.Ordinal);

    public uint Alignment { get; } = GgufFile.DefaultAlignment;

    public void Set(string key, string value) => Add(key, GgufValueType.String, value);
    public void Set(string key, uint value) => Add(key, GgufValueType.UInt32, value);
    public void Set(string key, int value) => Add(key, GgufValueType.Int32, value);
    public void Set(string key, float value) => Add(key, GgufValueType.Float32, value);
    public void Set(string key, bool value) => Add(key, GgufValueType.Bool, value);

    public void SetStrings(string key, IReadOnlyList<string> items) => Add(key, GgufValueType.Array, new GgufArray(GgufValueType.String, items.Cast<object>().ToList()));
    public void SetInts(string key, IReadOnlyList<int> items) => Add(key, GgufValueType.Array, new GgufArray(GgufValueType.Int32, items.Cast<object>().ToList()));
    public void SetFloats(string key, IReadOnlyList<float> items) => Add(key, GgufValueType.Array, new GgufArray(GgufValueType.Float32, items.Cast<object>().ToList()));

    /// <summary>Whether metadata key <paramref name="key"/> has been set.</summary>
    public bool Has(string key) => _keys.Contains(key);

    private void Add(string key, GgufValueType type, object value)
    {
        if (!_keys.Add(key)) throw new InvalidOperationException($"GGUF metadata key '{key}' set twice.");
        _meta.Add((key, type, value));
    }

    /// <summary>
    /// Adds a tensor of PyTorch shape <paramref name="shape"/> (row-major, outermost first) stored as <paramref name="type"/>;
    /// <paramref name="values"/> gives its float32 values when the file is written. A row length that is not a whole number
    /// of the type's blocks is an error naming the tensor.
    /// </summary>
    public void AddTensor(string name, long[] shape, GgmlType type, Func<float[]> values)
    {
        var (bs, _) = GgmlTypes.Geometry(type) ?? throw new ArgumentException($"unknown ggml type {type}");
        if (shape[^1] % bs != 0)
            throw new UserInputException($"tensor '{name}': its rows have {shape[^1]} values, not a multiple of {type}'s block of {bs}; choose --gguf-type f16, bf16 or f32 for this model.");
        if (_tensors.Any(t => t.Name == name)) throw new InvalidOperationException($"GGUF tensor '{name}' added twice.");
        _tensors.Add((name, shape, type, values));
    }

    /// <summary>Writes the file to <paramref name="path"/> atomically (temp file, then rename).</summary>
    public void Write(string path) => AtomicFile.Write(path, WriteTo);

    private void WriteTo(Stream s)
    {
        using var w = new BinaryWriter(s, Encoding.UTF8, leaveOpen: true);
        w.Write(GgufFile.Magic);
        w.Write(3u);
        w.Write((ulong)_tensors.Count);
        w.Write((ulong)_meta.Count);
        foreach (var (key, type, value) in _meta)
        {
            Str(w, key);
            w.Write((uint)type);
            Value(w, type, value);
        }
        long offset = 0;
        var offsets = new List<long>();
        foreach (var (name, shape, type, _) in _tensors)
        {
            Str(w, name);
            w.Write((uint)shape.Length);
            foreach (long d in shape.Reverse()) w.Write((ulong)d); // ggml order: ne[0] is the contiguous (last) dimension
            w.Write((uint)type);
            w.Write((ulong)offset);
            offsets.Add(offset);
            offset = Align(offset + GgmlTypes.ByteSize(type, shape.Aggregate(1L, (a, b) => a * b), name));
        }
        Pad(w);
        long dataStart = s.Position;
        for (int i = 0; i < _tensors.Count; i++)
        {
            var (name, shape, type, values) = _tensors[i];
            float[] x = values();
            long n = shape.Aggregate(1L, (a, b) => a * b);
            if (x.Length != n) throw new InvalidOperationException($"tensor '{name}': {x.Length} values for shape [{string.Join(", ", shape)}].");
            var bytes = new byte[GgmlTypes.ByteSize(type, n, name)];
            GgmlQuant.Encode(type, x, bytes);
            if (s.Position - dataStart != offsets[i]) throw new InvalidOperationException("GGUF writer: tensor offsets out of step.");
            w.Write(bytes);
            Pad(w);
        }
    }

    private long Align(long x) => (x + Alignment - 1) / Alignment * Alignment;

    private void Pad(BinaryWriter w)
    {
        long pos = w.BaseStream.Position;
        for (long i = pos; i < Align(pos); i++) w.Write((byte)0);
    }

    private static void Str(BinaryWriter w, string v)
    {
        var b = Encoding.UTF8.GetBytes(v);
        w.Write((ulong)b.Length);
        w.Write(b);
    }

    private static void Value(BinaryWriter w, GgufValueType type, object v)
    {
        switch (type)
        {
            case GgufValueType.String: Str(w, (string)v); break;
            case GgufValueType.UInt32: w.Write((uint)v); break;
            case GgufValueType.Int32: w.Write((int)v); break;
            case GgufValueType.Float32: w.Write((float)v); break;
            case GgufValueType.Bool: w.Write((byte)((bool)v ? 1 : 0)); break;
            case GgufValueType.Array:
                var a = (GgufArray)v;
                w.Write((uint)a.ElementType);
                w.Write((ulong)a.Items.Count);
                foreach (var item in a.Items) Value(w, a.ElementType, item);
                break;
            default: throw new ArgumentOutOfRangeException(nameof(type), type, "not written by GgufWriter");
        }
    }
}
