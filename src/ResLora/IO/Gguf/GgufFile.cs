using System.Text;

namespace ResLora.IO.Gguf;

/// <summary>GGUF's metadata value types (gguf.h <c>enum gguf_type</c>).</summary>
public enum GgufValueType : uint
{
    UInt8 = 0,
    Int8 = 1,
    UInt16 = 2,
    Int16 = 3,
    UInt32 = 4,
    Int32 = 5,
    Float32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    UInt64 = 10,
    Int64 = 11,
    Float64 = 12,
}

/// <summary>A metadata array: its element type and items (boxed numbers, bools or strings).</summary>
public sealed record GgufArray(GgufValueType ElementType, IReadOnlyList<object> Items);

/// <summary>
/// One tensor's entry: its name, its dimensions in ggml's order (<c>ne[0]</c>, the contiguous one, first), its type and
/// its offset from the start of the data section.
/// </summary>
public sealed record GgufTensorInfo(string Name, long[] Dims, GgmlType Type, long Offset)
{
    /// <summary>The shape in PyTorch's (row-major) order: the dimensions reversed.</summary>
    public long[] Shape => Dims.Reverse().ToArray();

    public long Elements => Dims.Aggregate(1L, (a, b) => a * b);

    public long Bytes => GgmlTypes.ByteSize(Type, Elements, Name);
}

/// <summary>
/// A GGUF file (versions 2 and 3) opened for reading: the header, metadata and tensor directory are parsed and checked
/// up front (a truncated or inconsistent file is one error naming the file and what is wrong); tensor data is read on
/// request and decoded to float32 (<see cref="GgmlQuant.Decode"/>).
/// </summary>
public sealed class GgufFile : IDisposable
{
    public const uint Magic = 0x46554747; // "GGUF" little-endian
    public const uint DefaultAlignment = 32;

    private readonly FileStream _stream;

    public string Path { get; }
    public uint Version { get; }
    public IReadOnlyDictionary<string, object> Metadata { get; }
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }
    public long DataOffset { get; }

    private GgufFile(string path, FileStream stream, uint version, Dictionary<string, object> metadata, List<GgufTensorInfo> tensors, long dataOffset)
    {
        Path = path;
        _stream = stream;
        Version = version;
        Metadata = metadata;
        Tensors = tensors;
        DataOffset = dataOffset;
    }

    /// <summary>Opens and checks <paramref name="path"/>; every structural problem is a <see cref="UserInputException"/> naming it.</summary>
    public static GgufFile Open(string path)
    {
        if (!File.Exists(path)) throw new UserInputException($"{path}: no such GGUF file.");
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        try
        {
            var r = new GgufHeaderReader(stream, path);
            uint magic = r.U32("magic");
            if (magic != Magic) throw new UserInputException($"{path}: not a GGUF file (it does not start with 'GGUF').");
            uint version = r.U32("version");
            if (version is not (2 or 3)) throw new UserInputException($"{path}: GGUF version {version} is not supported (2 and 3 are).");
            long tensorCount = r.Count("tensor count", 1 << 20);
            long kvCount = r.Count("metadata count", 1 << 20);
            var meta = new Dictionary<string, object>(StringComparer.Ordinal);
            for (long i = 0; i < kvCount; i++)
            {
                string key = r.String("metadata key");
                var type = (GgufValueType)r.U32($"type of '{key}'");
                var value = r.Value(type, key, depth: 0);
                if (!meta.TryAdd(key, value)) throw new UserInputException($"{path}: metadata key '{key}' appears twice.");
            }
            uint alignment = meta.TryGetValue("general.alignment", out var al) ? Convert.ToUInt32(al) : DefaultAlignment;
            if (alignment == 0 || (alignment & (alignment - 1)) != 0) throw new UserInputException($"{path}: general.alignment {alignment} is not a power of two.");
            var tensors = new List<GgufTensorInfo>();
            var names = new HashSet<string>(StringComparer.Ordinal);
            for (long i = 0; i < tensorCount; i++)
            {
                string name = r.String("tensor name");
                uint nd = r.U32($"dimension count of '{name}'");
                if (nd is 0 or > 4) throw new UserInputException($"{path}: tensor '{name}' has {nd} dimensions (1 to 4 are valid).");
                var dims = new long[nd];
                long elements = 1;
                for (int d = 0; d < nd; d++)
                {
                    dims[d] = r.Count($"dimension {d} of '{name}'", long.MaxValue);
                    if (dims[d] == 0) throw new UserInputException($"{path}: tensor '{name}' has a zero dimension.");
                    if (elements > long.MaxValue / dims[d]) throw new UserInputException($"{path}: tensor '{name}' has an impossible element count.");
                    elements *= dims[d];
                }
                var type = (GgmlType)r.U32($"type of '{name}'");
                long offset = r.Count($"offset of '{name}'", long.MaxValue);
                if (offset % alignment != 0) throw new UserInputException($"{path}: tensor '{name}' starts at data offset {offset}, not a multiple of the alignment {alignment}.");
                if (!names.Add(name)) throw new UserInputException($"{path}: tensor '{name}' appears twice.");
                var info = new GgufTensorInfo(name, dims, type, offset);
                _ = info.Bytes; // unknown type or a partial block: an error naming the tensor
                tensors.Add(info);
            }
            long dataOffset = (stream.Position + alignment - 1) / alignment * alignment;
            foreach (var t in tensors)
                if (dataOffset + t.Offset + t.Bytes > stream.Length)
                    throw new UserInputException($"{path}: truncated: tensor '{t.Name}' needs bytes up to {dataOffset + t.Offset + t.Bytes}, but the file has {stream.Length}.");
            return new GgufFile(path, stream, version, meta, tensors, dataOffset);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    public GgufTensorInfo Tensor(string name) => Tensors.FirstOrDefault(t => t.Name == name)
        ?? throw new UserInputException($"{Path}: no tensor '{name}'.");

    /// <summary>The tensor's stored bytes.</summary>
    public byte[] ReadRaw(GgufTensorInfo t)
    {
        if (t.Bytes > int.MaxValue) throw new UserInputException($"{Path}: tensor '{t.Name}' is {t.Bytes} bytes, too large to read at once.");
        var buf = new byte[t.Bytes];
        _stream.Position = DataOffset + t.Offset;
        _stream.ReadExactly(buf);
        return buf;
    }

    /// <summary>The tensor decoded to float32, in ggml's element order (row-major in <see cref="GgufTensorInfo.Shape"/>).</summary>
    public float[] ReadFloats(GgufTensorInfo t)
    {
        var y = new float[t.Elements];
        GgmlQuant.Decode(t.Type, ReadRaw(t), y);
        return y;
    }

    public string? GetString(string key) => Metadata.TryGetValue(key, out var v) ? v as string : null;

    /// <summary>An integer metadata value of any integer type, or null.</summary>
    public long? GetInteger(string key) => Metadata.TryGetValue(key, out var v) && v is byte or sbyte or ushort or short or uint or int or ulong or long ? Convert.ToInt64(v) : null;

    public double? GetNumber(string key) => Metadata.TryGetValue(key, out var v) && v is not (string or bool or GgufArray) ? Convert.ToDouble(v) : null;

    public GgufArray? GetArray(string key) => Metadata.TryGetValue(key, out var v) ? v as GgufArray : null;

    public void Dispose() => _stream.Dispose();

    /// <summary>Bounds-checked little-endian reads of the header: every read names what it was reading when the file ends.</summary>
    private sealed class GgufHeaderReader(FileStream s, string path)
    {
        private readonly BinaryReader _r = new(s, Encoding.UTF8, leaveOpen: true);
        private static readonly UTF8Encoding StrictUtf8 = new(false, throwOnInvalidBytes: true);

        private void Need(long n, string what)
        {
            if (n < 0 || s.Length - s.Position < n)
                throw new UserInputException($"{path}: truncated: the file ends while reading the {what} (at byte {s.Position} of {s.Length}).");
        }

        public uint U32(string what) { Need(4, what); return _r.ReadUInt32(); }

        /// <summary>A u64 count or size that must be at most <paramref name="max"/>.</summary>
        public long Count(string what, long max)
        {
            Need(8, what);
            ulong v = _r.ReadUInt64();
            if (v > (ulong)max) throw new UserInputException($"{path}: the {what} is {v}, beyond what a GGUF file can hold here ({max}).");
            return (long)v;
        }

        public string String(string what)
        {
            long n = Count($"length of the {what}", 1L << 26);
            Need(n, what);
            var bytes = _r.ReadBytes((int)n);
            try
            {
                return StrictUtf8.GetString(bytes);
            }
            catch (DecoderFallbackException)
            {
                throw new UserInputException($"{path}: the {what} at byte {s.Position - n} is not valid UTF-8.");
            }
        }

        public object Value(GgufValueType type, string key, int depth)
        {
            string what = $"value of '{key}'";
            switch (type)
            {
                case GgufValueType.UInt8: Need(1, what); return _r.ReadByte();
                case GgufValueType.Int8: Need(1, what); return _r.ReadSByte();
                case GgufValueType.UInt16: Need(2, what); return _r.ReadUInt16();
                case GgufValueType.Int16: Need(2, what); return _r.ReadInt16();
                case GgufValueType.UInt32: Need(4, what); return _r.ReadUInt32();
                case GgufValueType.Int32: Need(4, what); return _r.ReadInt32();
                case GgufValueType.Float32: Need(4, what); return _r.ReadSingle();
                case GgufValueType.Bool:
                    Need(1, what);
                    byte b = _r.ReadByte();
                    if (b > 1) throw new UserInputException($"{path}: the {what} is a bool stored as {b}.");
                    return b == 1;
                case GgufValueType.String: return String(what);
                case GgufValueType.UInt64: Need(8, what); return _r.ReadUInt64();
                case GgufValueType.Int64: Need(8, what); return _r.ReadInt64();
                case GgufValueType.Float64: Need(8, what); return _r.ReadDouble();
                case GgufValueType.Array:
                    {
                        if (depth > 0) throw new UserInputException($"{path}: '{key}' nests arrays, which this reader does not accept.");
                        var et = (GgufValueType)U32($"element type of '{key}'");
                        long n = Count($"length of '{key}'", s.Length - s.Position); // every element takes at least one byte
                        var items = new List<object>((int)Math.Min(n, 1 << 20));
                        for (long i = 0; i < n; i++) items.Add(Value(et, key, depth + 1));
                        return new GgufArray(et, items);
                    }
                default:
                    throw new UserInputException($"{path}: '{key}' has value type {(uint)type}, which GGUF does not define.");
            }
        }
    }
}
