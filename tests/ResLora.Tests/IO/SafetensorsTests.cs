using System.Text;
using ResLora.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.IO;

public sealed class SafetensorsTests : IDisposable
{
    [Fact]
    public void Open_ThroughASymlinkAsInTheHubCache_ReadsTheTargetsTensors()
    {
        string root = Directory.CreateTempSubdirectory("reslora-hub-").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(root, "blobs"));
            Directory.CreateDirectory(Path.Combine(root, "snapshots", "abc123"));
            string blob = Path.Combine(root, "blobs", "0f3c9d");
            using (var t = torch.arange(6, dtype: ScalarType.Float32).reshape(2, 3))
                SafetensorsWriter.Write(blob, new[] { new KeyValuePair<string, Tensor>("w", t) });
            string link = Path.Combine(root, "snapshots", "abc123", "model.safetensors");
            File.CreateSymbolicLink(link, Path.Combine("..", "..", "blobs", "0f3c9d"));
            using var f = SafetensorsFile.Open(link);
            using var w = f.Load("w");
            Assert.Equal(new float[] { 0, 1, 2, 3, 4, 5 }, w.data<float>().ToArray());
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-st-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    internal static string WriteSample(string path)
    {
        using var gen = new torch.Generator(3);
        var tensors = new Dictionary<string, Tensor>
        {
            ["a.f32"] = torch.randn(new long[] { 3, 4 }, generator: gen),
            ["b.bf16"] = torch.randn(new long[] { 5 }, generator: gen).to_type(ScalarType.BFloat16),
            ["c.f16"] = torch.randn(new long[] { 2, 2 }, generator: gen).to_type(ScalarType.Float16),
            ["d.i64"] = torch.arange(7, dtype: ScalarType.Int64),
            ["e.empty"] = torch.zeros(new long[] { 0, 3 }),
        };
        SafetensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt", ["note"] = "x" });
        foreach (var t in tensors.Values) t.Dispose();
        return path;
    }

    [Fact]
    public void RoundTrip_KeepsValuesDtypesShapesAndMetadata()
    {
        string p = Path.Combine(_dir, "a.safetensors");
        using var x = torch.randn(3, 5);
        using var y = torch.arange(4, dtype: ScalarType.Int64);
        using var z = torch.randn(2).to_type(ScalarType.BFloat16);
        SafetensorsWriter.Write(p, new Dictionary<string, Tensor> { ["x"] = x, ["y"] = y, ["z"] = z }, new Dictionary<string, string> { ["format"] = "pt" });
        using var f = SafetensorsFile.Open(p);
        Assert.Equal("pt", f.Metadata["format"]);
        using var x2 = f.Load("x");
        using var y2 = f.Load("y");
        using var z2 = f.Load("z");
        Assert.True(x.equal(x2).all().item<bool>());
        Assert.Equal(new long[] { 0, 1, 2, 3 }, y2.data<long>().ToArray());
        Assert.Equal(ScalarType.BFloat16, z2.dtype);
        Assert.True(z.equal(z2).all().item<bool>());
        using var zf = f.Load("z", ScalarType.Float32);
        Assert.Equal(ScalarType.Float32, zf.dtype);
        // Header: 8-byte length, JSON padded with spaces to a multiple of 8.
        var bytes = File.ReadAllBytes(p);
        long n = BitConverter.ToInt64(bytes, 0);
        Assert.Equal(0, n % 8);
        Assert.Contains("\"data_offsets\"", Encoding.UTF8.GetString(bytes, 8, (int)n));
        Assert.Empty(Directory.GetFiles(_dir, "*.tmp"));
    }

    private string WithHeader(string header, int dataBytes)
    {
        string p = Path.Combine(_dir, $"h{Guid.NewGuid():N}.safetensors");
        var h = Encoding.UTF8.GetBytes(header);
        using var fs = File.Create(p);
        fs.Write(BitConverter.GetBytes((ulong)h.Length));
        fs.Write(h);
        fs.Write(new byte[dataBytes]);
        return p;
    }

    [Theory]
    [InlineData("{\"t\":{\"dtype\":\"F32\",\"shape\":[4,8],\"data_offsets\":[0,96]}}", 128, "hold 96 bytes but F32 shape [4, 8] needs 128")]
    [InlineData("{\"t\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "run past the data section")]
    [InlineData("{\"t\":{\"dtype\":\"F33\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16, "dtype 'F33'")]
    [InlineData("{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 16, "non-negative")]
    [InlineData("{\"t\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,4]}}", 16, "end before they begin")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 16, "overlap")]
    [InlineData("{\"t\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,16]}}", 16, "overflows")]
    [InlineData("[1,2]", 0, "must be a JSON object")]
    [InlineData("{\"t\": 5}", 0, "entry must be an object")]
    [InlineData("{\"__metadata__\":{\"a\":1}}", 0, "must be a string")]
    [InlineData("{oops", 0, "not valid JSON")]
    public void MalformedHeaders_NameTheFileTheTensorAndTheProblem(string header, int dataBytes, string expected)
    {
        string p = WithHeader(header, dataBytes);
        var e = Assert.Throws<UserInputException>(() => SafetensorsFile.Open(p));
        Assert.Contains(p, e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void TruncatedAndTinyFiles_AreRefused()
    {
        string p = Path.Combine(_dir, "t.safetensors");
        File.WriteAllBytes(p, new byte[] { 1, 2, 3 });
        Assert.Contains("shorter than the 8-byte", Assert.Throws<UserInputException>(() => SafetensorsFile.Open(p)).Message);
        File.WriteAllBytes(p, BitConverter.GetBytes(1_000_000UL));
        Assert.Contains("runs past the end", Assert.Throws<UserInputException>(() => SafetensorsFile.Open(p)).Message);
    }

    [Fact]
    public void Writer_RefusesBadNames_AndLeavesNoTempFile()
    {
        string p = Path.Combine(_dir, "w.safetensors");
        using var x = torch.zeros(2);
        Assert.Throws<UserInputException>(() => SafetensorsWriter.Write(p, new[] { new KeyValuePair<string, Tensor>("__metadata__", x) }));
        Assert.Throws<UserInputException>(() => SafetensorsWriter.Write(p, new[] { new KeyValuePair<string, Tensor>("a", x), new KeyValuePair<string, Tensor>("a", x) }));
        Assert.False(File.Exists(p));
        Assert.Empty(Directory.GetFiles(_dir));
    }
}

/// <summary>
/// Mutates a valid file 10,000 times, mostly in the header (its bytes, its JSON values and structure, its length field):
/// every outcome is a clean load (each tensor's bytes match its entry) or a <see cref="UserInputException"/> naming the
/// file. Anything else escaping — a crash, an overflow, an access outside the mapping — fails the test.
/// </summary>
public sealed class SafetensorsFuzzTests(Xunit.Abstractions.ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = ResLora.Tests.Infrastructure.TestDirs.InMemory("reslora-fuzz-"); // 10,000 files written

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    public const int Mutations = 10_000;

    private static readonly string[] Dtypes = { "F32", "F16", "BF16", "I64", "I32", "U8", "BOOL", "F64", "X9", "", "f32", "F8_E4M3" };
    private static readonly string[] Numbers = { "-1", "0", "1", "7", "255", "4294967296", "9223372036854775807", "9223372036854775808", "18446744073709551615", "1e30", "1.5", "-0", "01" };
    private static readonly string[] Values = { "null", "true", "\"x\"", "[]", "{}", "[1]", "[-1, 2]", "[0, 99999999999]", "{\"a\": 1}", "1e400", "\"\\ud800\"" };

    /// <summary>One mutation of <paramref name="valid"/>: the header in ten ways out of twelve, the data or the length in the rest.</summary>
    internal static byte[] Mutate(byte[] valid, Random r)
    {
        int headerLen = (int)BitConverter.ToUInt64(valid, 0);
        byte[] data = valid[(8 + headerLen)..];
        string header = Encoding.UTF8.GetString(valid, 8, headerLen);
        byte[] Pack(string h, byte[] d)
        {
            var hb = Encoding.UTF8.GetBytes(h);
            return BitConverter.GetBytes((ulong)hb.Length).Concat(hb).Concat(d).ToArray();
        }
        byte[] b = (byte[])valid.Clone();
        switch (r.Next(12))
        {
            case 0: return b[..r.Next(0, b.Length)]; // truncation
            case 1: // bit flips in the header
                for (int k = r.Next(1, 6); k > 0; k--) { int at = 8 + r.Next(headerLen); b[at] ^= (byte)(1 << r.Next(8)); }
                return b;
            case 2: // JSON punctuation in the header
                for (int k = r.Next(1, 4); k > 0; k--) b[8 + r.Next(headerLen)] = (byte)"0123456789[]{},:\" -.e\\"[r.Next(21)];
                return b;
            case 3: // numbers: offsets, shape entries, the header length they imply
                return Pack(System.Text.RegularExpressions.Regex.Replace(header, @"\d+", m => r.Next(5) == 0 ? Numbers[r.Next(Numbers.Length)] : m.Value), data);
            case 4: // dtype labels
                return Pack(System.Text.RegularExpressions.Regex.Replace(header, "\"(F32|F16|BF16|I64)\"", m => r.Next(2) == 0 ? $"\"{Dtypes[r.Next(Dtypes.Length)]}\"" : m.Value), data);
            case 5: // structure: a field removed, given another type, an unknown field, a shape of another rank
                {
                    var root = System.Text.Json.Nodes.JsonNode.Parse(header)!.AsObject();
                    var names = root.Select(kv => kv.Key).ToList();
                    var entry = root[names[r.Next(names.Count)]] as System.Text.Json.Nodes.JsonObject;
                    if (entry is null) return Pack(header.Replace("\"format\"", Values[r.Next(Values.Length)]), data);
                    string field = new[] { "dtype", "shape", "data_offsets", "extra" }[r.Next(4)];
                    switch (r.Next(4))
                    {
                        case 0: entry.Remove(field); break;
                        case 1: entry[field] = System.Text.Json.Nodes.JsonNode.Parse(Values[r.Next(Values.Length - 2)]); break;
                        case 2 when entry["shape"] is System.Text.Json.Nodes.JsonArray sh: sh.Add(r.Next(4)); break;
                        default: entry[field] = r.Next(1000); break;
                    }
                    return Pack(root.ToJsonString(), data);
                }
            case 6: // two tensors share offsets; a duplicated key
                {
                    var m = System.Text.RegularExpressions.Regex.Matches(header, @"""data_offsets"":\[\d+,\d+\]");
                    if (m.Count >= 2 && r.Next(2) == 0) return Pack(header.Replace(m[1].Value, m[0].Value), data);
                    int close = header.LastIndexOf('}');
                    return Pack(header[..close] + ",\"a.f32\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}" + header[close..], data);
                }
            case 7: // bytes inserted into or removed from the header, the length field kept consistent
                {
                    var hb = Encoding.UTF8.GetBytes(header).ToList();
                    int at = r.Next(hb.Count);
                    if (r.Next(2) == 0) hb.RemoveRange(at, Math.Min(hb.Count - at, r.Next(1, 6)));
                    else hb.InsertRange(at, Enumerable.Range(0, r.Next(1, 6)).Select(_ => (byte)r.Next(256)));
                    return BitConverter.GetBytes((ulong)hb.Count).Concat(hb).Concat(data).ToArray();
                }
            case 8: // the header padded with whitespace or garbage after the JSON
                return Pack(header + (r.Next(2) == 0 ? new string(' ', r.Next(1, 64)) : "x"), data);
            case 9: // the data section shortened or lengthened
                return r.Next(2) == 0 ? b[..Math.Max(8 + headerLen, b.Length - r.Next(1, 16))] : b.Concat(new byte[r.Next(1, 16)]).ToArray();
            case 10: // the length field
                Array.Copy(BitConverter.GetBytes(r.Next(4) switch
                {
                    0 => ulong.MaxValue - (ulong)r.Next(100),
                    1 => (ulong)SafetensorsFile.MaxHeaderBytes + (ulong)r.Next(100),
                    2 => (ulong)(headerLen + r.Next(-8, 9)),
                    _ => (ulong)r.Next(0, valid.Length * 2),
                }), 0, b, 0, 8);
                return b;
            default: // bit flips anywhere (the data too: values change, sizes do not)
                for (int k = r.Next(1, 8); k > 0; k--) { int at = r.Next(b.Length); b[at] ^= (byte)(1 << r.Next(8)); }
                return b;
        }
    }

    [Fact]
    public void TenThousandMutatedFiles_OnlyEverLoadOrGiveAnErrorNamingTheFile()
    {
        byte[] valid = File.ReadAllBytes(SafetensorsTests.WriteSample(Path.Combine(_dir, "valid.safetensors")));
        var r = new Random(20261124);
        string p = Path.Combine(_dir, "m.safetensors");
        int loaded = 0, refused = 0;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var cpu = System.Diagnostics.Process.GetCurrentProcess().TotalProcessorTime;
        for (int i = 0; i < Mutations; i++)
        {
            File.WriteAllBytes(p, Mutate(valid, r));
            try
            {
                using var f = SafetensorsFile.Open(p);
                foreach (var e in f.Entries)
                {
                    using var t = f.Load(e.Name);
                    Assert.Equal(e.ByteLength, t.NumberOfElements * t.ElementSize);
                }
                loaded++;
            }
            catch (UserInputException e)
            {
                Assert.Contains(p, e.Message);
                refused++;
            }
        }
        output.WriteLine($"{Mutations} mutations: {loaded} loaded, {refused} refused, in {clock.Elapsed.TotalSeconds:0.0} s ({(System.Diagnostics.Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalSeconds:0.0} s CPU)");
        Assert.True(refused > 5000, $"refused {refused}");
        Assert.True(loaded > 500, $"loaded {loaded}");
    }
}
