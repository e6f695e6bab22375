using System.Runtime.InteropServices;
using TorchSharp;

namespace ResLora.Tests.Infrastructure;

public sealed class TorchSharpNativeFixTests
{
    [Fact]
    public void Libtorch_LoadsAndComputes()
    {
        using var a = torch.arange(6, dtype: torch.float32).reshape(2, 3);
        using var s = a.matmul(a.t());
        Assert.Equal(new float[] { 5, 14, 14, 50 }, s.data<float>().ToArray());
    }

    [Fact]
    public void GlueLibrary_InTestOutput_HasGlibcxx3432MarkedWeak()
    {
        if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux)) return;
        string glue = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        Assert.True(File.Exists(glue), $"expected the glue library at {glue}");
        var flags = ElfVersionNeeds.FlagsOf(File.ReadAllBytes(glue), "GLIBCXX_3.4.32");
        Assert.NotNull(flags);
        Assert.Equal(0x2, flags!.Value & 0x2);
    }
}
