using System.Globalization;

// Root namespace on purpose: RuntimeOptions (root) uses this, and root types may depend on no ResLora.* namespace
// (tests/ResLora.Tests/Architecture/LayerRulesTests.cs).
namespace ResLora;

/// <summary>What the machine offers this process: the CPUs it may run on, its CPU quota, and how busy those CPUs are.</summary>
/// <param name="AllowedCpus">CPUs in the process's affinity mask (Linux: <c>Cpus_allowed_list</c>; elsewhere the processor count).</param>
/// <param name="QuotaCores">The cgroup CPU quota in cores (quota / period), or null when unlimited or unknown.</param>
/// <param name="BusyOtherCores">Cores' worth of CPU time other processes used on <paramref name="AllowedCpus"/> over the probe
/// window, or null when it could not be measured.</param>
internal sealed record CpuBudget(int AllowedCpus, double? QuotaCores, double? BusyOtherCores);

/// <summary>The torch thread count for a run, and the sentence that says why (printed in the run's first lines).</summary>
/// <param name="Threads">Intra-op threads; 0 leaves libtorch's default.</param>
/// <param name="Reason">Why, e.g. "2 cores allowed, 1 busy with other processes; --threads N to override".</param>
public sealed record ThreadChoice(int Threads, string Reason)
{
    /// <summary>The line a verb prints: "threads: 1 (2 cores allowed, 1 busy with other processes; --threads N to override)".</summary>
    public override string ToString() => Threads == 0 ? $"threads: libtorch's default, one per core ({Reason})" : $"threads: {Threads} ({Reason})";
}

/// <summary>
/// Chooses the torch thread count from the cores actually free: libtorch's default (one thread per core) spins its OpenMP
/// threads at every barrier, so one busy process beside a 2-thread run on 2 cores cost 3.1× (issue 36: 14,419 tokens/s
/// alone, 4,715 beside a busy loop; 1 thread kept 10,212). The count is the cores the process may use (affinity, cgroup
/// quota) minus the cores other processes kept busy over a short window, at least 1. Parsing and the decision are pure
/// functions; <see cref="Probe"/> reads the real files.
/// </summary>
internal static class ThreadBudget
{
    /// <summary>How long <see cref="Probe"/> watches /proc/stat: long enough to see a busy process, short beside a load.</summary>
    public static readonly TimeSpan Window = TimeSpan.FromMilliseconds(150);

    /// <summary>
    /// Other processes' use at or above this many cores counts as one busy core (then 1.5 as two, ...): a background blip
    /// under half a core is not worth giving a thread up for.
    /// </summary>
    public const double BusyRounding = 0.5;

    /// <summary>The decision: cores allowed (affinity, quota rounded up as .NET's ProcessorCount does) minus busy ones, at least 1.</summary>
    public static ThreadChoice Choose(CpuBudget b)
    {
        int allowed = Math.Max(1, b.AllowedCpus);
        string why = Plural(allowed, "core") + " allowed";
        if (b.QuotaCores is { } q && Math.Ceiling(q) < allowed)
        {
            allowed = Math.Max(1, (int)Math.Ceiling(q - 1e-9));
            why = $"{Plural(allowed, "core")} allowed (CPU quota {q.ToString("0.##", CultureInfo.InvariantCulture)} of {Plural(b.AllowedCpus, "CPU")})";
        }
        if (b.BusyOtherCores is not { } busyCores)
            return new ThreadChoice(allowed, why + ", load not measured; --threads N to override");
        int busy = (int)Math.Floor(Math.Max(0, busyCores) + (1 - BusyRounding));
        int threads = Math.Max(1, allowed - busy);
        string load = busy == 0 ? "none busy with other processes" : $"{busy} busy with other processes";
        return new ThreadChoice(threads, $"{why}, {load}; --threads N to override");
    }

    /// <summary>cgroup v2 <c>cpu.max</c> ("max 100000" or "150000 100000") as cores; null when unlimited or unreadable.</summary>
    public static double? ParseCpuMax(string content)
    {
        var parts = content.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length < 1 || parts[0] == "max") return null;
        long period = parts.Length > 1 && long.TryParse(parts[1], NumberStyles.Integer, CultureInfo.InvariantCulture, out long p) ? p : 100_000;
        return Cores(parts[0], period);
    }

    /// <summary>cgroup v1 <c>cpu.cfs_quota_us</c> and <c>cpu.cfs_period_us</c> as cores; null when the quota is -1 (unlimited).</summary>
    public static double? ParseCfsQuota(string quota, string period) =>
        long.TryParse(period.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out long p) ? Cores(quota.Trim(), p) : null;

    private static double? Cores(string quota, long period) =>
        long.TryParse(quota, NumberStyles.Integer, CultureInfo.InvariantCulture, out long q) && q > 0 && period > 0 ? (double)q / period : null;

    /// <summary>The CPU ids of /proc/self/status's <c>Cpus_allowed_list</c> ("0-3,6,8-9"); null when the line is missing.</summary>
    public static IReadOnlySet<int>? ParseAllowedCpus(string status)
    {
        foreach (var line in status.Split('\n'))
        {
            if (!line.StartsWith("Cpus_allowed_list:", StringComparison.Ordinal)) continue;
            var set = new SortedSet<int>();
            foreach (var range in line["Cpus_allowed_list:".Length..].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                var ends = range.Split('-');
                int lo = int.Parse(ends[0], CultureInfo.InvariantCulture), hi = ends.Length > 1 ? int.Parse(ends[1], CultureInfo.InvariantCulture) : lo;
                for (int c = lo; c <= hi; c++) set.Add(c);
            }
            return set;
        }
        return null;
    }

    /// <summary>
    /// Per-CPU (busy, total) jiffies from /proc/stat's <c>cpuN</c> lines. Busy is everything but idle and iowait (user, nice,
    /// system, irq, softirq, steal: steal is time the hypervisor gave to others, just as unavailable); guest time is already
    /// inside user (proc(5)).
    /// </summary>
    public static IReadOnlyDictionary<int, (long Busy, long Total)> ParseProcStat(string content)
    {
        var cpus = new Dictionary<int, (long, long)>();
        foreach (var line in content.Split('\n'))
        {
            if (!line.StartsWith("cpu", StringComparison.Ordinal) || line.Length < 4 || !char.IsAsciiDigit(line[3])) continue;
            var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            int id = int.Parse(f[0].AsSpan(3), CultureInfo.InvariantCulture);
            long V(int i) => i < f.Length ? long.Parse(f[i], CultureInfo.InvariantCulture) : 0;
            long total = V(1) + V(2) + V(3) + V(4) + V(5) + V(6) + V(7) + V(8);
            cpus[id] = (total - V(4) - V(5), total);
        }
        return cpus;
    }

    /// <summary>utime + stime (clock ticks) of /proc/[pid]/stat: fields 14 and 15, counted after the ')' that ends the command name.</summary>
    public static long ParseProcessTicks(string stat)
    {
        var f = stat[(stat.LastIndexOf(')') + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        // f[0] is field 3 (state), so field n is f[n - 3].
        return long.Parse(f[11], CultureInfo.InvariantCulture) + long.Parse(f[12], CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// Cores' worth of time other processes used on <paramref name="cpus"/> between two /proc/stat readings: the busy share of
    /// those CPUs times their number, less this process's own ticks over the same window (/proc/stat and /proc/self/stat both
    /// count in USER_HZ ticks).
    /// </summary>
    public static double BusyOtherCores(IReadOnlyDictionary<int, (long Busy, long Total)> before, IReadOnlyDictionary<int, (long Busy, long Total)> after,
        IEnumerable<int> cpus, long ownTicks)
    {
        long busy = 0, total = 0;
        int n = 0;
        foreach (int c in cpus)
        {
            if (!before.TryGetValue(c, out var b) || !after.TryGetValue(c, out var a)) continue;
            busy += a.Busy - b.Busy;
            total += a.Total - b.Total;
            n++;
        }
        if (total <= 0 || n == 0) return 0;
        // total / n is the window's length in ticks (every CPU's counters advance by it).
        double others = (busy - ownTicks) / ((double)total / n);
        return Math.Max(0, others);
    }

    /// <summary>
    /// Reads the real machine (Linux): affinity, cgroup v2 or v1 quota, and two /proc/stat readings <see cref="Window"/> apart.
    /// Elsewhere: <see cref="Environment.ProcessorCount"/>, no quota, load not measured.
    /// </summary>
    public static CpuBudget Probe()
    {
        if (!OperatingSystem.IsLinux()) return new CpuBudget(Environment.ProcessorCount, null, null);
        var allowed = Read("/proc/self/status") is { } s ? ParseAllowedCpus(s) : null;
        double? quota = Read("/sys/fs/cgroup/cpu.max") is { } v2 ? ParseCpuMax(v2)
            : Read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") is { } q && Read("/sys/fs/cgroup/cpu/cpu.cfs_period_us") is { } p ? ParseCfsQuota(q, p)
            : null;
        int count = allowed?.Count ?? Environment.ProcessorCount;
        double? busy = null;
        try
        {
            var stat0 = ParseProcStat(File.ReadAllText("/proc/stat"));
            long own0 = ParseProcessTicks(File.ReadAllText("/proc/self/stat"));
            Thread.Sleep(Window);
            var stat1 = ParseProcStat(File.ReadAllText("/proc/stat"));
            long own1 = ParseProcessTicks(File.ReadAllText("/proc/self/stat"));
            busy = BusyOtherCores(stat0, stat1, allowed ?? (IEnumerable<int>)stat1.Keys, own1 - own0);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            // A /proc we cannot read (a sandbox): choose from the allowed cores alone, and say the load was not measured.
        }
        return new CpuBudget(count, quota, busy);
    }

    private static string? Read(string path)
    {
        try
        {
            return File.Exists(path) ? File.ReadAllText(path) : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static string Plural(int n, string what) => $"{n} {what}{(n == 1 ? "" : "s")}";
}
