using System.Globalization;

namespace ResLora.IO;

/// <summary>How many bytes this process can still take, and where the figure comes from (for the error message).</summary>
public sealed record MemoryReading(long AvailableBytes, string Source);

/// <summary>
/// The memory a new allocation can still get, read before a model-sized load: Linux's <c>MemAvailable</c> plus free swap
/// (<c>/proc/meminfo</c>), capped by the cgroup's limit minus the cgroup's non-reclaimable (anonymous) memory when the
/// process runs under a memory limit (a container). Null where this cannot be read (not Linux): then nothing is checked.
/// </summary>
public static class AvailableMemory
{
    /// <summary>Test hook (per thread): replaces the reading, so a test can pretend to run on a small machine.</summary>
    [ThreadStatic] internal static Func<MemoryReading?>? Override;

    /// <summary>The current reading, or null when unknown.</summary>
    public static MemoryReading? Read() => Override is { } o ? o() : Read("/proc", "/sys/fs/cgroup");

    /// <summary>Reads a Linux <paramref name="procRoot"/> and <paramref name="cgroupRoot"/> (real or a test's copy).</summary>
    internal static MemoryReading? Read(string procRoot, string cgroupRoot)
    {
        var meminfo = Fields(Path.Combine(procRoot, "meminfo"), ':');
        if (meminfo is null || !meminfo.TryGetValue("MemAvailable", out long availKb)) return null;
        long bytes = Saturating(availKb, meminfo.GetValueOrDefault("SwapFree"));
        string source = "MemAvailable + SwapFree in /proc/meminfo";
        if (CgroupHeadroom(procRoot, cgroupRoot) is { } cg && cg.Bytes < bytes)
            (bytes, source) = (cg.Bytes, $"the memory limit of cgroup {cg.Where} less its anonymous memory");
        return new MemoryReading(bytes, source);
    }

    private static long Saturating(long kb1, long kb2) => (long)Math.Min(long.MaxValue, ((double)kb1 + kb2) * 1024);

    /// <summary>Limit − anonymous memory of the process's memory cgroup (v2, else v1), or null without a limit.</summary>
    private static (long Bytes, string Where)? CgroupHeadroom(string procRoot, string cgroupRoot)
    {
        string? v2Path = null, v1Path = null;
        try
        {
            foreach (var line in File.ReadLines(Path.Combine(procRoot, "self", "cgroup")))
            {
                var parts = line.Split(':', 3);
                if (parts.Length != 3) continue;
                if (parts[0] == "0" && parts[1].Length == 0) v2Path = parts[2];
                else if (parts[1].Split(',').Contains("memory")) v1Path = parts[2];
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        // Inside a container the process's own path is often not visible: fall back to the root of the hierarchy.
        foreach (var dir in Candidates(cgroupRoot, v2Path))
        {
            if (ReadNumber(Path.Combine(dir, "memory.max")) is not { } limit) continue;
            long used = Fields(Path.Combine(dir, "memory.stat"), ' ')?.GetValueOrDefault("anon") ?? ReadNumber(Path.Combine(dir, "memory.current")) ?? 0;
            return (Math.Max(0, limit - used), dir);
        }
        foreach (var dir in Candidates(Path.Combine(cgroupRoot, "memory"), v1Path))
        {
            // v1 reports "no limit" as a huge page-aligned number.
            if (ReadNumber(Path.Combine(dir, "memory.limit_in_bytes")) is not { } limit || limit >= 1L << 60) continue;
            var stat = Fields(Path.Combine(dir, "memory.stat"), ' ');
            long used = stat?.GetValueOrDefault("total_rss") ?? stat?.GetValueOrDefault("rss") ?? ReadNumber(Path.Combine(dir, "memory.usage_in_bytes")) ?? 0;
            return (Math.Max(0, limit - used), dir);
        }
        return null;
    }

    private static IEnumerable<string> Candidates(string root, string? own)
    {
        if (own is { Length: > 1 } && !own.Contains("..", StringComparison.Ordinal)) yield return Path.Combine(root, own.TrimStart('/'));
        yield return root;
    }

    /// <summary>A file holding one number; "max" (no limit), absence or garbage give null.</summary>
    private static long? ReadNumber(string path)
    {
        try
        {
            return File.Exists(path) && long.TryParse(File.ReadAllText(path).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long v) ? v : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>"name<paramref name="separator"/> number [unit]" lines as a dictionary (meminfo in kB, memory.stat in bytes).</summary>
    private static Dictionary<string, long>? Fields(string path, char separator)
    {
        try
        {
            if (!File.Exists(path)) return null;
            var d = new Dictionary<string, long>(StringComparer.Ordinal);
            foreach (var line in File.ReadLines(path))
            {
                int i = line.IndexOf(separator);
                if (i <= 0) continue;
                var value = line[(i + 1)..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (value.Length > 0 && long.TryParse(value[0], NumberStyles.None, CultureInfo.InvariantCulture, out long v)) d[line[..i].Trim()] = v;
            }
            return d;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Bytes as a person reads them: 1.5 GB, 300 MB.</summary>
    public static string Format(long bytes) => bytes switch
    {
        >= 1L << 30 => string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 30):0.0} GiB"),
        >= 1L << 20 => string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 20):0.0} MiB"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1024.0:0.0} KiB"),
    };
}
