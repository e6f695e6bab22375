using System.Diagnostics;
using System.Text.Json;
using ResLora.IO;
using ResLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>
/// Loading copies each stored tensor once, straight into its parameter, shard by shard (issue 15, item 4): a ~92 MB
/// bf16 checkpoint in six shards, loaded in a child process (peak RSS is per process) by <c>bench scale worker
/// --load-only</c>.
/// </summary>
public sealed class LoadMemoryTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-loadmem-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>46.1 M parameters; the largest tensors (embedding, lm_head) are 8 MB each of the 92 MB as bf16.</summary>
    private static ModelConfig Config => new()
    {
        VocabSize = 8000,
        HiddenSize = 512,
        IntermediateSize = 1376,
        NumHiddenLayers = 12,
        NumAttentionHeads = 8,
        RmsNormEps = 1e-5,
        MaxPositionEmbeddings = 256,
        BosTokenId = 1,
        EosTokenIds = new[] { 2 },
    };

    private string WriteModel(long shardBytes)
    {
        string dir = Path.Combine(_dir, "model");
        using var gen = new torch.Generator(5);
        var weights = ModelFamilies.ExpectedWeights(Config)
            .Select(kv => new LazyTensor(kv.Key, ScalarType.BFloat16, kv.Value, () => torch.randn(kv.Value, generator: gen).mul_(0.02).to_type(ScalarType.BFloat16)))
            .ToList();
        ModelFolder.Save(dir, Config, weights, shardBytes);
        return dir;
    }

    [Theory]
    // Measured on the Qwen2.5-0.5B shape before the fix: bf16 peak 7.9 GB for 0.99 GB of weights (float32 init temporaries
    // left to the GC, glibc keeping freed blocks, every mapped page resident until the checkpoint closed).
    [InlineData("bfloat16", 2)]
    [InlineData("float32", 4)]
    public async Task Load_ShardedBf16Checkpoint_PeakRssGrowsByTheModelNotByACopy(string dtype, int elementBytes)
    {
        // VmHWM (/proc/self/status) is Linux's; elsewhere the worker reports .NET's peak working set, too coarse to assert on.
        if (!OperatingSystem.IsLinux()) return;
        string dir = WriteModel(shardBytes: 16_000_000);
        Assert.True(Directory.GetFiles(dir, "*.safetensors").Length >= 5);
        long modelBytes = ModelPresets.ParameterCount(Config) * elementBytes;

        var psi = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, OperatingSystem.IsWindows() ? "ResLora.Cli.exe" : "ResLora.Cli"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in new[] { "bench", "scale", "worker", "--load-only", "--model", dir, "--config", $"{{\"dtype\":\"{dtype}\",\"threads\":1}}" })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = await p.StandardOutput.ReadToEndAsync();
        string errors = await err;
        await p.WaitForExitAsync();
        Assert.True(p.ExitCode == 0, errors);
        var r = JsonDocument.Parse(output.Trim().Split('\n')[^1]).RootElement;
        Assert.InRange(r.GetProperty("model_bytes").GetInt64(), modelBytes, modelBytes + 1_000_000); // parameters (+ small buffers)
        long growth = r.GetProperty("peak_rss_after_load").GetInt64() - r.GetProperty("rss_before_load").GetInt64();
        // The model, plus one tensor in flight (its mapped bytes and, for float32, its bf16 read), plus what the first load
        // costs whatever the size (JIT, libtorch's first kernels, allocator arenas: ~30 MB measured). A second copy of the
        // weights would add the model's size again (92 MB as bf16, 184 MB as float32): well over the limit.
        long largest = 8000L * 512 * elementBytes;
        long limit = modelBytes + 2 * largest + 48_000_000;
        Assert.True(growth < limit, $"loading {dtype} grew the peak RSS by {growth / 1e6:0} MB for {modelBytes / 1e6:0} MB of weights (limit {limit / 1e6:0} MB)");
    }

    [Fact]
    public void LoadWeights_ReadsShardsInOrderReleasesEachAndConvertsToTheModelDtype()
    {
        string dir = WriteModel(shardBytes: 16_000_000);
        using var ckpt = HfCheckpoint.Open(dir);
        using var model = ModelFamilies.CreateCausalLM(Config, null, ScalarType.Float32, torch.CPU);
        model.LoadWeights(ckpt);
        using var again = HfCheckpoint.Open(dir);
        foreach (var (name, param) in model.BaseParameters())
        {
            using var stored = again.Load(name, ScalarType.Float32);
            Assert.True(stored.allclose(param, rtol: 0, atol: 0), $"{name} differs from the checkpoint");
        }
        // Every shard was released after its last tensor: the headers still answer, the data no longer does.
        Assert.Equal(new long[] { 8000, 512 }, ckpt.ShapeOf("model.embed_tokens.weight"));
        Assert.Throws<ObjectDisposedException>(() => ckpt.Load("model.embed_tokens.weight").Dispose());
    }
}
