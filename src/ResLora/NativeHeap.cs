using System.Runtime.InteropServices;

namespace ResLora;

/// <summary>
/// glibc heap settings around model-sized allocations. glibc serves blocks under its mmap threshold from its heap and
/// keeps them when freed; the threshold starts at 128 KiB and rises to the size of each large block freed (up to
/// 32 MiB), so building a model (a float32 draw per weight, freed after conversion) left a third of a bf16 model's size
/// resident as free heap (measured 1.39 GB resident for a 0.99 GB Qwen2.5-0.5B-shaped model; 1.04 GB with a fixed
/// 1 MiB threshold). Keeping 1 MiB after the load was measured too: an NF4 base's training peak fell (0.99 → 0.59 GB,
/// SmolLM2-135M shape, batch 1 × 64) but its step took twice as long (every dequantized block mapped and faulted in
/// afresh), so training runs at 32 MiB. Does nothing where glibc is not the allocator, or where the user set the
/// threshold (<c>MALLOC_MMAP_THRESHOLD_</c>, <c>GLIBC_TUNABLES</c>).
/// </summary>
internal static partial class NativeHeap
{
    private const int MmapThreshold = -3; // M_MMAP_THRESHOLD in glibc's malloc.h
    private const int LoadThreshold = 1 << 20;
    private const int SteadyThreshold = 32 << 20; // glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit

    [LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int Mallopt(int param, int value);

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);

    /// <summary>
    /// While the result is alive, blocks of 1 MiB and more are mapped on their own and returned to the system when freed.
    /// Disposing it sets the threshold to 32 MiB (where glibc's own adjustment ends up during training) and trims the heap.
    /// </summary>
    public static IDisposable ReturnLargeBlocks()
    {
        Set(LoadThreshold);
        return new Restore();
    }

    private static readonly bool UserChoice =
        Environment.GetEnvironmentVariable("MALLOC_MMAP_THRESHOLD_") is not null
        || (Environment.GetEnvironmentVariable("GLIBC_TUNABLES")?.Contains("mmap_threshold", StringComparison.Ordinal) ?? false);

    private static void Set(int threshold)
    {
        if (!OperatingSystem.IsLinux() || UserChoice) return;
        try
        {
            Mallopt(MmapThreshold, threshold);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            // Not glibc (e.g. musl): its allocator has no such setting.
        }
    }

    private sealed class Restore : IDisposable
    {
        public void Dispose()
        {
            Set(SteadyThreshold);
            if (!OperatingSystem.IsLinux()) return;
            try
            {
                MallocTrim(0);
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
            {
            }
        }
    }
}
