using LLama.Native;

namespace ResLora.Tests.IO.Gguf;

/// <summary>LLamaSharp finds and loads llama.cpp's native library on this machine (the GGUF checks depend on it).</summary>
public class LlamaCppNativeTests
{
    [Fact]
    public void NativeLibraryLoads()
    {
        NativeApi.llama_empty_call();
        Assert.True(NativeApi.llama_max_devices() >= 1);
    }
}
