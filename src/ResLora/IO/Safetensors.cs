using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.IO;

/// <summary>One tensor entry of a safetensors header.</summary>
public sealed record SafetensorsEntry(string Name, string Dtype, long[] Shape, long Begin, long End)
{
    public long ByteLength => End - Begin;
}

/// <summary>
/// Reader of the safetensors format: u64 little-endian header length N, N bytes of JSON
/// <c>{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}</c>, then the raw
/// little-endian data; offsets are relative to the end of the header.
/// NOTE: initial implementation (whole-file read); the IO issue replaces it with a memory-mapped, fully checked reader.
/// </summary>
public sealed class SafetensorsFile : IDisposable
{
    private readonly byte[] _bytes;
    private readonly long _dataStart;
    private readonly Dictionary<string, SafetensorsEntry> _entries;

    public string FilePath { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    public IReadOnlyList<SafetensorsEntry> Entries { get; }

    private SafetensorsFile(string path, byte[] bytes, long dataStart, List<SafetensorsEntry> entries, Dictionary<string, string> meta)
    {
        FilePath = path;
        _bytes = bytes;
        _dataStart = dataStart;
        Entries = entries;
        _entries = entries.ToDictionary(e => e.Name);
        Metadata = meta;
    }

    public static SafetensorsFile Open(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        if (bytes.Length < 8) throw new InvalidDataException($"{path}: not a safetensors file (shorter than its 8-byte header length).");
        ulong n = BitConverter.ToUInt64(bytes, 0);
        if (n > (ulong)(bytes.Length - 8)) throw new InvalidDataException($"{path}: header length {n} runs past the end of the file ({bytes.Length} bytes).");
        var entries = new List<SafetensorsEntry>();
        var meta = new Dictionary<string, string>();
        using (var doc = JsonDocument.Parse(bytes.AsMemory(8, (int)n)))
        {
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (p.Name == "__metadata__")
                {
                    foreach (var m in p.Value.EnumerateObject()) meta[m.Name] = m.Value.GetString() ?? "";
                    continue;
                }
                string dtype = p.Value.GetProperty("dtype").GetString()!;
                long[] shape = p.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                var offs = p.Value.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                entries.Add(new SafetensorsEntry(p.Name, dtype, shape, offs[0], offs[1]));
            }
        }
        return new SafetensorsFile(path, bytes, 8 + (long)n, entries, meta);
    }

    public bool Contains(string name) => _entries.ContainsKey(name);

    public SafetensorsEntry GetEntry(string name) =>
        _entries.TryGetValue(name, out var e) ? e : throw new KeyNotFoundException($"{FilePath}: no tensor named '{name}'.");

    /// <summary>Copies one tensor into a new torch tensor (on CPU, in its stored dtype unless <paramref name="dtype"/> is given).</summary>
    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
    {
        var e = GetEntry(name);
        ScalarType st = SafetensorsDtypes.ToScalarType(e.Dtype, FilePath, name);
        Tensor t = torch.empty(e.Shape, st);
        t.bytes = _bytes.AsSpan((int)(_dataStart + e.Begin), (int)e.ByteLength);
        if (dtype is { } d && d != st) { var c = t.to_type(d); t.Dispose(); t = c; }
        if (device is not null && device.type != DeviceType.CPU) { var c = t.to(device); t.Dispose(); t = c; }
        return t;
    }

    public void Dispose() { }
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
        _ => throw new InvalidDataException($"{file}: tensor '{tensor}' has dtype '{dtype}', which is not supported (F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)."),
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
        _ => throw new ArgumentException($"dtype {st} cannot be written to safetensors."),
    };
}

/// <summary>Writes safetensors files atomically: a temp file beside the target, flushed, then renamed into place.</summary>
public static class SafetensorsWriter
{
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var items = tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        var header = new Dictionary<string, object>();
        if (metadata is { Count: > 0 }) header["__metadata__"] = metadata;
        long offset = 0;
        var blobs = new List<byte[]>();
        foreach (var (name, t) in items)
        {
            using var c = t.detach().cpu().contiguous();
            byte[] b = c.bytes.ToArray();
            header[name] = new Dictionary<string, object>
            {
                ["dtype"] = SafetensorsDtypes.FromScalarType(c.dtype),
                ["shape"] = c.shape,
                ["data_offsets"] = new[] { offset, offset + b.Length },
            };
            offset += b.Length;
            blobs.Add(b);
        }
        byte[] json = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(header));
        int pad = (8 - json.Length % 8) % 8;
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir, "." + Path.GetFileName(path) + "." + Guid.NewGuid().ToString("N")[..8] + ".tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write))
            {
                fs.Write(BitConverter.GetBytes((ulong)(json.Length + pad)));
                fs.Write(json);
                for (int i = 0; i < pad; i++) fs.WriteByte((byte)' ');
                foreach (var b in blobs) fs.Write(b);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }
}
