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
/// After the load the threshold is <see cref="Mode"/>'s: training frees and allocates activation-sized blocks all the
/// time, and the lower the threshold, the more of them are returned to the system at once (a lower peak) and faulted in
/// afresh when allocated again (slower steps). Measured at Qwen2.5-0.5B's shape, batch 4 × 512, with huge pages
/// (docs/benchmarks.md): bf16 32 MiB 5.60 GB at 16.2 s a step, 4 MiB 4.58 GB at 24.1 s, 128 KiB 3.52 GB at 39.9 s;
/// float32 8.48 GB at 45.7 s, 6.18 GB at 53.0 s, 6.04 GB at 61.3 s.
/// </summary>
internal static partial class NativeHeap
{
    private const int MmapThreshold = -3; // M_MMAP_THRESHOLD in glibc's malloc.h
    private const int LoadThreshold = 1 << 20;

    /// <summary>The policy after a model is loaded (<see cref="RuntimeOptions.Heap"/>).</summary>
    public static HeapMode Mode { get; set; } = HeapMode.Fast;

    private static int SteadyThreshold => Mode switch
    {
        HeapMode.Fast => 32 << 20, // glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: where its own adjustment ends up
        HeapMode.Lean => 128 << 10, // glibc's initial threshold, held fixed
        _ => 4 << 20,
    };

    [LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int Mallopt(int param, int value);

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);

    /// <summary>
    /// While the result is alive, blocks of 1 MiB and more are mapped on their own and returned to the system when freed.
    /// Disposing it sets <see cref="Mode"/>'s threshold and trims the heap.
    /// </summary>
    public static IDisposable ReturnLargeBlocks()
    {
        Set(LoadThreshold);
        return new Restore();
    }

    /// <summary>
    /// Asks libtorch to back tensors of 2 MiB and more with transparent huge pages (its <c>THP_MEM_ALLOC_ENABLE</c>; the
    /// kernel's setting must be <c>madvise</c> or <c>always</c>). Measured at Qwen2.5-0.5B's shape, batch 4 × 512, balanced
    /// heap, with against without: a bf16 training step 38.4 → 24.1 s, float32 89.5 → 53.0 s, at the same peak RSS
    /// (docs/benchmarks.md). libtorch reads the variable once,
    /// at its first allocation, so this must run before any tensor exists; false when it did nothing (not Linux, not
    /// glibc, or the variable is the user's).
    /// </summary>
    public static bool UseHugePages()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("THP_MEM_ALLOC_ENABLE") is not null) return false;
        return _hugePagesSet = Libc(() => SetEnv("THP_MEM_ALLOC_ENABLE", "1", 0)) == 0;
    }

    private static bool _hugePagesSet;

    /// <summary>Whether libtorch was asked for huge pages: by <see cref="UseHugePages"/> or by the user's THP_MEM_ALLOC_ENABLE=1.</summary>
    public static bool HugePagesRequested => _hugePagesSet || Environment.GetEnvironmentVariable("THP_MEM_ALLOC_ENABLE") == "1";

    private static readonly bool UserChoice =
        Environment.GetEnvironmentVariable("MALLOC_MMAP_THRESHOLD_") is not null
        || (Environment.GetEnvironmentVariable("GLIBC_TUNABLES")?.Contains("mmap_threshold", StringComparison.Ordinal) ?? false);

    private static void Set(int threshold)
    {
        if (!OperatingSystem.IsLinux() || UserChoice) return;
        Libc(() => Mallopt(MmapThreshold, threshold));
    }

    /// <summary>
    /// Calls a C library function, or returns null where it does not exist: not glibc (musl has no mallopt or mallinfo2),
    /// or a glibc older than the function.
    /// </summary>
    private static T? Libc<T>(Func<T> call) where T : struct
    {
        try
        {
            return call();
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return null;
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MallInfo2
    {
        public nuint Arena, Ordblks, Smblks, Hblks, Hblkhd, Usmblks, Fsmblks, Uordblks, Fordblks, Keepcost;
    }

    [LibraryImport("libc", EntryPoint = "mallinfo2")]
    private static partial MallInfo2 Mallinfo2();

    /// <summary>
    /// Bytes glibc's allocator has handed out and not had back (every arena's blocks in use plus mapped blocks): what
    /// libtorch's tensors and the other native users hold now, without the freed memory the heap keeps resident. Null
    /// where glibc (2.33 or later) is not the allocator.
    /// </summary>
    public static long? LiveBytes()
    {
        if (!OperatingSystem.IsLinux()) return null;
        return Libc(() =>
        {
            var m = Mallinfo2();
            return (long)(m.Uordblks + m.Hblkhd);
        });
    }

    private sealed class Restore : IDisposable
    {
        public void Dispose()
        {
            Set(SteadyThreshold);
            if (OperatingSystem.IsLinux()) Libc(() => MallocTrim(0));
        }
    }
}

/// <summary>
/// What glibc does with freed activation-sized blocks once a model is loaded (<c>--heap</c>; Linux with glibc only).
/// </summary>
public enum HeapMode
{
    /// <summary>Blocks under 32 MiB are kept for reuse: the fastest steps, the highest peak (the default).</summary>
    Fast,
    /// <summary>Blocks of 4 MiB and more go back to the system when freed; smaller ones are kept for reuse.</summary>
    Balanced,
    /// <summary>Blocks of 128 KiB and more go back to the system: the lowest peak, the slowest steps.</summary>
    Lean,
}
