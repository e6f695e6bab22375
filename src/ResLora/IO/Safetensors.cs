using System.IO.MemoryMappedFiles;
using System.Text;
using System.Text.Json;

namespace ResLora.IO;

/// <summary>One tensor entry of a safetensors header.</summary>
public sealed record SafetensorsEntry(string Name, string Dtype, long[] Shape, long Begin, long End)
{
    public long ByteLength => End - Begin;
}

/// <summary>
/// Reader of the safetensors format: u64 little-endian header length N, N bytes of JSON
/// <c>{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}</c>, then the raw little-endian
/// data; offsets are relative to the end of the header. The file is memory-mapped and every header field is checked
/// against it before any byte is read: header length and JSON shape, known dtypes, non-negative shapes, offsets
/// inside the data section, byte counts equal to shape × element size (checked arithmetic), no overlaps. A bad file
/// gets an <see cref="InvalidDataException"/> naming the file, the tensor and the problem.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>Headers larger than this are refused (the format's reference implementation uses the same 100 MB limit).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private readonly byte* _base;
    private readonly long _length;
    private readonly long _dataStart;
    private readonly Dictionary<string, SafetensorsEntry> _entries;
    private bool _disposed;

    public string FilePath { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    public IReadOnlyList<SafetensorsEntry> Entries { get; }

    private SafetensorsFile(string path, MemoryMappedFile? map, MemoryMappedViewAccessor? view, byte* basePtr, long length, long dataStart, List<SafetensorsEntry> entries, Dictionary<string, string> meta)
    {
        FilePath = path;
        _map = map;
        _view = view;
        _base = basePtr;
        _length = length;
        _dataStart = dataStart;
        Entries = entries;
        _entries = entries.ToDictionary(e => e.Name, StringComparer.Ordinal);
        Metadata = meta;
    }

    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: file not found.", path);
        // Hugging Face's hub cache links snapshots/<rev>/*.safetensors to blobs/<hash>: the size is the target's, not the link's.
        var info = new FileInfo(path);
        if (info.LinkTarget is not null && info.ResolveLinkTarget(returnFinalTarget: true) is FileInfo target) info = target;
        long length = info.Length;
        if (length < 8) throw new UserInputException($"{path}: not a safetensors file: {length} bytes, shorter than the 8-byte header length.");
        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        byte* ptr = null;
        try
        {
            map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref ptr);
            ptr += view.PointerOffset;
            ulong n = BitConverter.ToUInt64(new ReadOnlySpan<byte>(ptr, 8));
            if (n < 2) throw Bad(path, null, $"header length {n} is too small for a JSON object");
            if (n > (ulong)(length - 8)) throw Bad(path, null, $"header length {n} runs past the end of the file ({length} bytes)");
            if (n > MaxHeaderBytes) throw Bad(path, null, $"header length {n} exceeds the {MaxHeaderBytes}-byte limit");
            long dataStart = 8 + (long)n;
            List<SafetensorsEntry> entries;
            Dictionary<string, string> meta;
            try
            {
                (entries, meta) = ParseHeader(path, new ReadOnlySpan<byte>(ptr + 8, (int)n), length - dataStart);
            }
            catch (InvalidOperationException e)
            {
                // System.Text.Json reports undecodable strings (e.g. escaped lone surrogates) this way.
                throw Bad(path, null, $"the header holds an invalid string ({e.Message})");
            }
            return new SafetensorsFile(path, map, view, ptr, length, dataStart, entries, meta);
        }
        catch
        {
            if (ptr != null) view!.SafeMemoryMappedViewHandle.ReleasePointer();
            view?.Dispose();
            map?.Dispose();
            throw;
        }
    }

    private static UserInputException Bad(string path, string? tensor, string what) =>
        new(tensor is null ? $"{path}: {what}." : $"{path}: tensor '{tensor}': {what}.");

    private static (List<SafetensorsEntry>, Dictionary<string, string>) ParseHeader(string path, ReadOnlySpan<byte> header, long dataBytes)
    {
        var entries = new List<SafetensorsEntry>();
        var meta = new Dictionary<string, string>(StringComparer.Ordinal);
        JsonDocument doc;
        try
        {
            _ = new UTF8Encoding(false, true).GetCharCount(header);
        }
        catch (DecoderFallbackException)
        {
            throw Bad(path, null, "the header is not valid UTF-8");
        }
        try
        {
            doc = JsonDocument.Parse(header.ToArray(), new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw Bad(path, null, $"the header is not valid JSON ({e.Message})");
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw Bad(path, null, $"the header must be a JSON object, not {doc.RootElement.ValueKind}");
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (!seen.Add(p.Name)) throw Bad(path, p.Name, "appears twice in the header");
                if (p.Name == "__metadata__")
                {
                    if (p.Value.ValueKind != JsonValueKind.Object) throw Bad(path, null, "__metadata__ must be an object of strings");
                    foreach (var m in p.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String) throw Bad(path, null, $"__metadata__ value '{m.Name}' must be a string");
                        meta[m.Name] = m.Value.GetString()!;
                    }
                    continue;
                }
                entries.Add(ParseEntry(path, p.Name, p.Value, dataBytes));
            }
        }
        // Tensors must not overlap (the format also wants them contiguous, but readers in the wild accept gaps).
        var sorted = entries.Where(e => e.ByteLength > 0).OrderBy(e => e.Begin).ToList();
        for (int i = 1; i < sorted.Count; i++)
            if (sorted[i].Begin < sorted[i - 1].End)
                throw Bad(path, sorted[i].Name, $"data_offsets [{sorted[i].Begin}, {sorted[i].End}] overlap tensor '{sorted[i - 1].Name}' [{sorted[i - 1].Begin}, {sorted[i - 1].End}]");
        return (entries, meta);
    }

    private static SafetensorsEntry ParseEntry(string path, string name, JsonElement v, long dataBytes)
    {
        if (v.ValueKind != JsonValueKind.Object) throw Bad(path, name, "entry must be an object with dtype, shape and data_offsets");
        if (!v.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String) throw Bad(path, name, "missing string field 'dtype'");
        string dtype = dt.GetString()!;
        int elem = SafetensorsDtypes.ElementSize(dtype) ?? throw Bad(path, name, $"dtype '{dtype}' is not supported (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
        if (!v.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array) throw Bad(path, name, "missing array field 'shape'");
        var shape = new List<long>();
        long count = 1;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long x) || x < 0) throw Bad(path, name, $"shape entry {d} is not a non-negative integer");
            shape.Add(x);
            try { count = checked(count * x); }
            catch (OverflowException) { throw Bad(path, name, "the shape's element count overflows"); }
        }
        if (shape.Count > 16) throw Bad(path, name, $"{shape.Count} dimensions is more than the 16 supported");
        if (!v.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw Bad(path, name, "missing field 'data_offsets' = [begin, end]");
        long[] o = new long[2];
        int k = 0;
        foreach (var d in off.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long x) || x < 0) throw Bad(path, name, $"data_offsets entry {d} is not a non-negative integer");
            o[k++] = x;
        }
        if (o[0] > o[1]) throw Bad(path, name, $"data_offsets [{o[0]}, {o[1]}] end before they begin");
        if (o[1] > dataBytes) throw Bad(path, name, $"data_offsets [{o[0]}, {o[1]}] run past the data section ({dataBytes} bytes)");
        long need;
        try { need = checked(count * elem); }
        catch (OverflowException) { throw Bad(path, name, "the shape's byte count overflows"); }
        if (o[1] - o[0] != need)
            throw Bad(path, name, $"data_offsets [{o[0]}, {o[1]}] hold {o[1] - o[0]} bytes but {dtype} shape [{string.Join(", ", shape)}] needs {need}");
        foreach (var extra in v.EnumerateObject())
            if (extra.Name is not ("dtype" or "shape" or "data_offsets")) throw Bad(path, name, $"unknown field '{extra.Name}'");
        return new SafetensorsEntry(name, dtype, shape.ToArray(), o[0], o[1]);
    }

    public bool Contains(string name) => _entries.ContainsKey(name);

    public SafetensorsEntry GetEntry(string name) =>
        _entries.TryGetValue(name, out var e) ? e : throw new KeyNotFoundException($"{FilePath}: no tensor named '{name}'.");

    /// <summary>Copies one tensor out of the mapped file into a new torch tensor (CPU, stored dtype unless <paramref name="dtype"/> is given).</summary>
    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var e = GetEntry(name);
        ScalarType st = SafetensorsDtypes.ToScalarType(e.Dtype, FilePath, name);
        Tensor t = torch.empty(e.Shape, st);
        try
        {
            Fill(e, t);
        }
        catch
        {
            t.Dispose();
            throw;
        }
        if (dtype is { } d && d != st) { var c = t.to_type(d); t.Dispose(); t = c; }
        if (device is not null && device.type != DeviceType.CPU) { var c = t.to(device); t.Dispose(); t = c; }
        return t;
    }

    /// <summary>
    /// Copies one tensor into <paramref name="destination"/> (same shape; a model's parameter). When the destination is a
    /// contiguous CPU tensor of the stored dtype the bytes go straight from the mapping into it, with no tensor in between;
    /// otherwise the stored tensor is read once and converted by <c>copy_</c>.
    /// </summary>
    public void CopyInto(string name, Tensor destination)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var e = GetEntry(name);
        ScalarType st = SafetensorsDtypes.ToScalarType(e.Dtype, FilePath, name);
        if (!destination.shape.SequenceEqual(e.Shape))
            throw new UserInputException($"{FilePath}: tensor '{name}' has shape [{string.Join(", ", e.Shape)}] but the model expects [{string.Join(", ", destination.shape)}].");
        using var noGrad = torch.no_grad();
        if (destination.dtype == st && destination.device_type == DeviceType.CPU && destination.is_contiguous())
        {
            Fill(e, destination);
            return;
        }
        using var t = Load(name);
        destination.copy_(t);
    }

    /// <summary>
    /// Copies an entry's bytes into <paramref name="t"/> (contiguous, CPU, the stored dtype) through a view of just that
    /// entry, unmapped right after: pages read through a mapping count in the process's resident memory for as long as
    /// they stay mapped, so reading every tensor through the whole-file view held the file's size on top of the model's
    /// until the checkpoint was closed (issue 15).
    /// </summary>
    private void Fill(SafetensorsEntry e, Tensor t)
    {
        if (e.ByteLength == 0) return;
        // Offsets were checked against the file at Open; spans are int-sized.
        if (e.ByteLength > int.MaxValue)
            throw new NotSupportedException($"{FilePath}: tensor '{e.Name}' is {e.ByteLength} bytes; tensors over 2 GiB are not supported yet (re-shard the checkpoint).");
        using var view = _map!.CreateViewAccessor(_dataStart + e.Begin, e.ByteLength, MemoryMappedFileAccess.Read);
        byte* p = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        try
        {
            // The setter only reads the span (the mapping is read-only).
            t.bytes = new Span<byte>(p + view.PointerOffset, checked((int)e.ByteLength));
        }
        finally
        {
            view.SafeMemoryMappedViewHandle.ReleasePointer();
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _view?.SafeMemoryMappedViewHandle.ReleasePointer();
        _view?.Dispose();
        _map?.Dispose();
    }
}

/// <summary>Maps safetensors dtype names to torch scalar types and back.</summary>
public static class SafetensorsDtypes
{
    public static ScalarType ToScalarType(string dtype, string file = "", string tensor = "") => dtype switch
    {
        "F32" => ScalarType.Float32,
        "F16" => ScalarType.Float16,
        "BF16" => ScalarType.BFloat16,
        "F64" => ScalarType.Float64,
        "I64" => ScalarType.Int64,
        "I32" => ScalarType.Int32,
        "I16" => ScalarType.Int16,
        "I8" => ScalarType.Int8,
        "U8" => ScalarType.Byte,
        "BOOL" => ScalarType.Bool,
        _ => throw new UserInputException($"{file}: tensor '{tensor}' has dtype '{dtype}', which is not supported (F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)."),
    };

    /// <summary>Bytes per element of a safetensors dtype name, or null when unsupported.</summary>
    public static int? ElementSize(string dtype) => dtype switch
    {
        "F64" or "I64" => 8,
        "F32" or "I32" => 4,
        "F16" or "BF16" or "I16" => 2,
        "I8" or "U8" or "BOOL" => 1,
        _ => null,
    };

    public static string FromScalarType(ScalarType st) => st switch
    {
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Float64 => "F64",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Int16 => "I16",
        ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => throw new UserInputException($"dtype {st} cannot be written to safetensors."),
    };
}

/// <summary>
/// One tensor to write, made only when its bytes are written (<see cref="SafetensorsWriter.Write(string, IReadOnlyList{LazyTensor}, IReadOnlyDictionary{string, string}?)"/>):
/// the header needs only <paramref name="Dtype"/> and <paramref name="Shape"/>, so a file can be written holding one
/// tensor at a time. <paramref name="Make"/> runs inside a dispose scope: a new tensor it returns is freed after writing,
/// an existing one (a parameter) is left alone.
/// </summary>
public sealed record LazyTensor(string Name, ScalarType Dtype, long[] Shape, Func<Tensor> Make)
{
    /// <summary>Bytes of the tensor's data.</summary>
    public long ByteLength => Shape.Aggregate(1L, (a, b) => a * b) * (SafetensorsDtypes.ElementSize(SafetensorsDtypes.FromScalarType(Dtype)) ?? 0);

    /// <summary>An existing tensor, written as it is.</summary>
    public static LazyTensor Of(string name, Tensor t) => new(name, t.dtype, t.shape, () => t);
}

/// <summary>
/// Writes safetensors files atomically (<see cref="AtomicFile.Write"/>): a temp file beside the target, flushed, then
/// renamed into place. The header is built from dtypes and shapes first, then the tensors are copied into the file one
/// at a time, so writing never holds a second copy of the weights.
/// </summary>
public static class SafetensorsWriter
{
    /// <summary>Writes existing tensors (any device; each is copied to the CPU on its own while it is written).</summary>
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null) =>
        Write(path, tensors.Select(kv => LazyTensor.Of(kv.Key, kv.Value)).ToList(), metadata);

    /// <summary>Writes tensors made one at a time by <see cref="LazyTensor.Make"/>, in name order.</summary>
    public static void Write(string path, IReadOnlyList<LazyTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var items = tensors.OrderBy(t => t.Name, StringComparer.Ordinal).ToList();
        for (int i = 0; i < items.Count; i++)
        {
            if (items[i].Name == "__metadata__") throw new UserInputException($"{path}: a tensor cannot be named '__metadata__' (reserved by the format).");
            if (items[i].Name.Length == 0) throw new UserInputException($"{path}: a tensor name cannot be empty.");
            if (i > 0 && items[i].Name == items[i - 1].Name) throw new UserInputException($"{path}: two tensors are named '{items[i].Name}'.");
        }
        var header = new Dictionary<string, object>();
        if (metadata is { Count: > 0 }) header["__metadata__"] = metadata;
        long offset = 0;
        foreach (var t in items)
        {
            long n = t.ByteLength;
            header[t.Name] = new Dictionary<string, object>
            {
                ["dtype"] = SafetensorsDtypes.FromScalarType(t.Dtype),
                ["shape"] = t.Shape,
                ["data_offsets"] = new[] { offset, offset + n },
            };
            offset += n;
        }
        byte[] json = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(header));
        int pad = (8 - json.Length % 8) % 8;
        AtomicFile.Write(path, fs =>
        {
            fs.Write(BitConverter.GetBytes((ulong)(json.Length + pad)));
            fs.Write(json);
            for (int i = 0; i < pad; i++) fs.WriteByte((byte)' ');
            foreach (var t in items)
            {
                using var scope = torch.NewDisposeScope();
                var c = t.Make().detach().cpu().contiguous();
                if (c.dtype != t.Dtype || !c.shape.SequenceEqual(t.Shape))
                    throw new InvalidOperationException($"{path}: tensor '{t.Name}' was declared {t.Dtype} [{string.Join(", ", t.Shape)}] but made {c.dtype} [{string.Join(", ", c.shape)}].");
                WriteData(fs, c);
            }
        });
    }

    /// <summary>Copies a contiguous CPU tensor's bytes into the stream, in pieces of under 2 GiB (spans are int-sized).</summary>
    private static void WriteData(Stream fs, Tensor c)
    {
        long n = c.NumberOfElements, per = Math.Max(1, (1L << 30) / c.ElementSize);
        if (n == 0) return;
        if (n * c.ElementSize <= int.MaxValue)
        {
            fs.Write(c.bytes);
            return;
        }
        using var flat = c.view(-1);
        for (long start = 0; start < n; start += per)
        {
            using var piece = flat.narrow(0, start, Math.Min(per, n - start));
            fs.Write(piece.bytes);
        }
    }
}
