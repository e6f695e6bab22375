using TorchSharp;

namespace ResLora.Tests.Infrastructure;

/// <summary>
/// <see cref="NativeHeap.LiveBytes"/> (behind <c>bench scale --live-heap</c>) follows a tensor's allocation and release.
/// In the non-parallel "console" collection, so no other test allocates meanwhile.
/// </summary>
[Collection("console")]
public sealed class NativeHeapLiveBytesTests
{
    [Fact]
    public void LiveBytes_RiseByATensorsSize_AndFallWhenItIsFreed()
    {
        if (!OperatingSystem.IsLinux()) return; // glibc's mallinfo2 only; elsewhere LiveBytes is null by design
        Assert.NotNull(NativeHeap.LiveBytes());
        const long size = 256L << 20;
        const long slack = 32L << 20;
        torch.zeros(1).Dispose();
        long before = NativeHeap.LiveBytes()!.Value;
        var t = torch.ones(size / 4, dtype: torch.ScalarType.Float32);
        long held = NativeHeap.LiveBytes()!.Value;
        t.Dispose();
        long after = NativeHeap.LiveBytes()!.Value;
        Assert.InRange(held - before, size - slack, size + slack); // other native users come and go by a few KB
        Assert.InRange(held - after, size - slack, size + slack);
    }
}
