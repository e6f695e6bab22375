using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.Models;

/// <summary>A model too big for the memory left is refused before anything is allocated, naming the fix.</summary>
public sealed class LoadChecksTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-mem-").FullName;

    public void Dispose()
    {
        AvailableMemory.Override = null;
        Directory.Delete(_dir, recursive: true);
    }

    private string TinyFolder()
    {
        string dir = Path.Combine(_dir, "model");
        var c = TinyModels.Config();
        using var m = TinyModels.Build(c);
        ModelFolder.Save(dir, c, m.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)));
        return dir;
    }

    [Fact]
    public void Load_WhenTheWeightsExceedTheAvailableMemory_IsRefusedNamingFolderEstimateAndBfloat16()
    {
        string dir = TinyFolder();
        long need = LoadChecks.EstimateBytes(ModelFamilies.ExpectedWeights(TinyModels.Config()), torch.ScalarType.Float32);
        AvailableMemory.Override = () => new MemoryReading(need - 1, "a test");
        var e = Assert.Throws<UserInputException>(() => ModelSessions.LoadBase(dir, new RuntimeOptions()).Dispose());
        Assert.Contains(dir, e.Message);
        Assert.Contains(AvailableMemory.Format(need), e.Message);
        Assert.Contains("available (a test)", e.Message);
        Assert.Contains("--dtype bfloat16", e.Message);
        Assert.DoesNotContain("\n", e.Message);

        // bfloat16 halves the estimate: the same machine loads it. And with the memory there, float32 loads too.
        using (var bf16 = ModelSessions.LoadBase(dir, new RuntimeOptions { Dtype = "bfloat16" })) Assert.Equal(torch.ScalarType.BFloat16, bf16.BaseParameters().First().Value.dtype);
        AvailableMemory.Override = () => new MemoryReading(need, "a test");
        ModelSessions.LoadBase(dir, new RuntimeOptions()).Dispose();
    }

    [Fact]
    public void EncoderLoad_WhenTheWeightsExceedTheAvailableMemory_IsRefusedToo()
    {
        var (dir, _, _) = TinyEncoders.WriteFolder(Path.Combine(_dir, "bert"));
        AvailableMemory.Override = () => new MemoryReading(1000, "a test");
        var e = Assert.Throws<UserInputException>(() => ResLora.Models.Encoders.EncoderLoader.LoadEncoder(dir, new RuntimeOptions()).Dispose());
        Assert.StartsWith($"{dir}: the model's weights need about", e.Message);
        AvailableMemory.Override = null;
        ResLora.Models.Encoders.EncoderLoader.LoadEncoder(dir, new RuntimeOptions()).Dispose();
    }

    [Fact]
    public void EstimateBytes_IsEveryWeightAtTheDtypePlusTheLargestOnce()
    {
        var expected = new Dictionary<string, long[]> { ["a"] = new long[] { 10, 4 }, ["b"] = new long[] { 6 } };
        Assert.Equal((40 + 6 + 40) * 4, LoadChecks.EstimateBytes(expected, torch.ScalarType.Float32));
        Assert.Equal((40 + 6 + 40) * 2, LoadChecks.EstimateBytes(expected, torch.ScalarType.BFloat16));
        // A config.json whose sizes passed the shape check can still describe an enormous model: no overflow.
        var huge = new Dictionary<string, long[]> { ["a"] = new long[] { long.MaxValue / 2, 4 } };
        Assert.Equal(long.MaxValue, LoadChecks.EstimateBytes(huge, torch.ScalarType.Float32));
    }

    private string FakeSystem(long memAvailableKb, long swapFreeKb, string cgroupLine, params (string File, string Text)[] cgroupFiles)
    {
        string root = Path.Combine(_dir, $"sys-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path.Combine(root, "proc", "self"));
        File.WriteAllText(Path.Combine(root, "proc", "meminfo"), $"MemTotal:       24683584 kB\nMemFree:         1000000 kB\nMemAvailable:   {memAvailableKb} kB\nSwapTotal:       {swapFreeKb} kB\nSwapFree:        {swapFreeKb} kB\n");
        File.WriteAllText(Path.Combine(root, "proc", "self", "cgroup"), cgroupLine + "\n");
        foreach (var (file, text) in cgroupFiles)
        {
            string p = Path.Combine(root, "cgroup", file);
            Directory.CreateDirectory(Path.GetDirectoryName(p)!);
            File.WriteAllText(p, text);
        }
        return root;
    }

    [Fact]
    public void Read_WithoutACgroupLimit_IsMemAvailablePlusFreeSwap()
    {
        string root = FakeSystem(2_000_000, 500_000, "0::/", ("memory.max", "max\n"));
        var r = AvailableMemory.Read(Path.Combine(root, "proc"), Path.Combine(root, "cgroup"))!;
        Assert.Equal(2_500_000L * 1024, r.AvailableBytes);
        Assert.Contains("/proc/meminfo", r.Source);
    }

    [Fact]
    public void Read_UnderACgroupV2Limit_IsTheLimitLessTheCgroupsAnonymousMemory()
    {
        string root = FakeSystem(20_000_000, 0, "0::/box", ("box/memory.max", "4294967296\n"), ("box/memory.stat", "anon 1073741824\nfile 999999999\n"));
        var r = AvailableMemory.Read(Path.Combine(root, "proc"), Path.Combine(root, "cgroup"))!;
        Assert.Equal(3L << 30, r.AvailableBytes);
        Assert.Contains("cgroup", r.Source);
    }

    [Fact]
    public void Read_UnderACgroupV1Limit_IsTheLimitLessItsRss_AndNoLimitMeansMeminfo()
    {
        string limited = FakeSystem(20_000_000, 0, "4:memory:/job", ("memory/job/memory.limit_in_bytes", "2147483648\n"), ("memory/job/memory.stat", "cache 5\nrss 7\ntotal_rss 1073741824\n"));
        Assert.Equal(1L << 30, AvailableMemory.Read(Path.Combine(limited, "proc"), Path.Combine(limited, "cgroup"))!.AvailableBytes);
        // The process's own cgroup folder is often not visible in a container: the hierarchy's root is read instead.
        string unlimited = FakeSystem(3_000_000, 0, "4:memory:/elsewhere", ("memory/memory.limit_in_bytes", "9223372036854771712\n"));
        Assert.Equal(3_000_000L * 1024, AvailableMemory.Read(Path.Combine(unlimited, "proc"), Path.Combine(unlimited, "cgroup"))!.AvailableBytes);
    }

    [Fact]
    public void Read_WithoutMeminfo_IsUnknown_AndNothingIsChecked()
    {
        Assert.Null(AvailableMemory.Read(Path.Combine(_dir, "none"), Path.Combine(_dir, "none")));
        if (OperatingSystem.IsLinux()) Assert.True(AvailableMemory.Read()!.AvailableBytes > 0);
    }
}
