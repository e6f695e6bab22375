using System.Runtime.CompilerServices;
using TorchSharp;

namespace ResLora.Tests.Infrastructure;

internal static class TestSetup
{
    /// <summary>Tests run libtorch on one thread: its OpenMP threads spin and degrade badly on a busy 2-core machine.</summary>
    [ModuleInitializer]
    internal static void Init()
    {
        torch.set_num_threads(1);
        // CLI runs without --threads take this instead of probing the machine (RuntimeOptions.ChooseThreads).
        Environment.SetEnvironmentVariable(RuntimeOptions.ThreadsVariable, "1");
    }
}
