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

/// <summary>Mutates valid files thousands of times: every outcome is a clean load or an InvalidDataException naming the file.</summary>
public sealed class SafetensorsFuzzTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-fuzz-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void MutatedFiles_OnlyEverGiveCleanErrors()
    {
        byte[] valid = File.ReadAllBytes(SafetensorsTests.WriteSample(Path.Combine(_dir, "valid.safetensors")));
        int headerLen = (int)BitConverter.ToUInt64(valid, 0);
        var r = new Random(20261124);
        string p = Path.Combine(_dir, "m.safetensors");
        int loaded = 0, refused = 0;
        string[] dtypes = { "F32", "F16", "BF16", "I64", "U8", "F64", "X9", "" };
        for (int i = 0; i < 3000; i++)
        {
            byte[] b = (byte[])valid.Clone();
            switch (r.Next(5))
            {
                case 0: b = b[..r.Next(0, b.Length)]; break; // truncation
                case 1: for (int k = r.Next(1, 8); k > 0; k--) { int at = r.Next(b.Length); b[at] ^= (byte)(1 << r.Next(8)); } break; // bit flips anywhere
                case 2: for (int k = r.Next(1, 4); k > 0; k--) { int at = 8 + r.Next(headerLen); b[at] = (byte)"0123456789[]{},:\" -"[r.Next(19)]; } break; // header characters
                case 3:
                    {
                        // Header edits that keep JSON valid: numbers and dtype strings.
                        string h = Encoding.UTF8.GetString(b, 8, headerLen);
                        h = System.Text.RegularExpressions.Regex.Replace(h, @"\d+", m => r.Next(4) == 0 ? r.Next(-5, 400).ToString() : m.Value);
                        h = System.Text.RegularExpressions.Regex.Replace(h, "\"(F32|F16|BF16|I64)\"", m => r.Next(3) == 0 ? $"\"{dtypes[r.Next(dtypes.Length)]}\"" : m.Value);
                        var hb = Encoding.UTF8.GetBytes(h);
                        b = BitConverter.GetBytes((ulong)hb.Length).Concat(hb).Concat(valid[(8 + headerLen)..]).ToArray();
                        break;
                    }
                default: Array.Copy(BitConverter.GetBytes(r.Next(4) == 0 ? ulong.MaxValue - (ulong)r.Next(100) : (ulong)r.Next(0, valid.Length * 2)), 0, b, 0, Math.Min(8, b.Length)); break; // header length
            }
            File.WriteAllBytes(p, b);
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
        Assert.True(refused > 1000, $"refused {refused}");
        Assert.True(loaded > 10, $"loaded {loaded}");
    }
}
