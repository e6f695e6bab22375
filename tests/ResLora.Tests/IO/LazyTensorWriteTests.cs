using ResLora.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.IO;

/// <summary>Weights made one at a time while they are written (random-init benchmark models never exist whole).</summary>
public sealed class LazyTensorWriteTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-lazy-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void SaveWeights_Lazy_MakesEachTensorOnceAndReadsBackSharded()
    {
        var made = new Dictionary<string, int>();
        var items = Enumerable.Range(0, 6).Select(i => new LazyTensor($"w{i}", ScalarType.BFloat16, new long[] { 64, 32 }, () =>
        {
            made[$"w{i}"] = made.GetValueOrDefault($"w{i}") + 1;
            return torch.full(new long[] { 64, 32 }, i + 0.5, dtype: ScalarType.BFloat16);
        })).ToList();
        // 4 KiB per tensor, shards of at most 10 KiB: three shards of two.
        Assert.Equal("bfloat16", HfCheckpoint.SaveWeights(_dir, items, maxShardBytes: 10_000));
        Assert.Equal(3, Directory.GetFiles(_dir, "*.safetensors").Length);
        Assert.All(made.Values, n => Assert.Equal(1, n));
        using var ckpt = HfCheckpoint.Open(_dir);
        for (int i = 0; i < 6; i++)
        {
            using var t = ckpt.Load($"w{i}", ScalarType.Float32);
            Assert.Equal(i + 0.5, t.mean().item<float>(), 3);
        }
    }

    [Fact]
    public void Write_TensorNotAsDeclared_IsRefusedNamingIt()
    {
        var bad = new LazyTensor("w", ScalarType.BFloat16, new long[] { 4 }, () => torch.zeros(4, dtype: ScalarType.Float32));
        var e = Assert.Throws<InvalidOperationException>(() => SafetensorsWriter.Write(Path.Combine(_dir, "x.safetensors"), new[] { bad }));
        Assert.Contains("'w'", e.Message, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(_dir, "x.safetensors")));
    }
}
