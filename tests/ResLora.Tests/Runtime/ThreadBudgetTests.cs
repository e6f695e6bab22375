namespace ResLora.Tests.Runtime;

/// <summary>The thread choice: parsing of cgroup, affinity and /proc files, the decision, and what wins over it.</summary>
public sealed class ThreadBudgetTests
{
    [Theory]
    [InlineData("max 100000\n", null)]
    [InlineData("150000 100000\n", 1.5)]
    [InlineData("200000 100000", 2.0)]
    [InlineData("50000 100000", 0.5)]
    public void ParseCpuMax_ReadsCgroupV2Quota(string content, double? cores) => Assert.Equal(cores, ThreadBudget.ParseCpuMax(content));

    [Theory]
    [InlineData("-1\n", "100000\n", null)]
    [InlineData("150000\n", "100000\n", 1.5)]
    [InlineData("300000", "100000", 3.0)]
    public void ParseCfsQuota_ReadsCgroupV1Quota(string quota, string period, double? cores) => Assert.Equal(cores, ThreadBudget.ParseCfsQuota(quota, period));

    [Fact]
    public void ParseAllowedCpus_ReadsRangesAndSingles()
    {
        const string status = "Name:\tdotnet\nCpus_allowed:\tff\nCpus_allowed_list:\t0-2,5,7-8\nMems_allowed_list:\t0\n";
        Assert.Equal(new[] { 0, 1, 2, 5, 7, 8 }, ThreadBudget.ParseAllowedCpus(status)!.ToArray());
        Assert.Null(ThreadBudget.ParseAllowedCpus("Name:\tx\n"));
    }

    [Fact]
    public void ParseProcStat_BusyIsAllButIdleAndIowait()
    {
        // user nice system idle iowait irq softirq steal guest guest_nice
        const string stat = "cpu  30 0 10 50 10 0 0 0 0 0\ncpu0 20 1 5 30 4 1 1 2 7 0\ncpu1 10 0 5 20 6 0 0 0 0 0\nintr 1 2\n";
        var s = ThreadBudget.ParseProcStat(stat);
        Assert.Equal(new[] { 0, 1 }, s.Keys.Order().ToArray()); // the aggregate "cpu" line is not a CPU
        Assert.Equal((30L, 64L), s[0]); // guest (7) is already inside user: not added
        Assert.Equal((15L, 41L), s[1]);
    }

    [Fact]
    public void ParseProcessTicks_IsUtimePlusStime_EvenWithSpacesInTheName()
    {
        const string stat = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194304 100 0 0 0 123 45 0 0 20 0 7 0 100 1000 50";
        Assert.Equal(168, ThreadBudget.ParseProcessTicks(stat));
    }

    private static Dictionary<int, (long Busy, long Total)> Cpus(params (long Busy, long Total)[] c) =>
        c.Select((v, i) => (v, i)).ToDictionary(x => x.i, x => x.v);

    [Fact]
    public void BusyOtherCores_OneBusyCoreOfTwo_LessOwnTicks()
    {
        // 20 ticks of window; cpu0 fully busy, cpu1 busy 6 ticks of which this process used 4.
        var before = Cpus((100, 1000), (50, 1000));
        var after = Cpus((120, 1020), (56, 1020));
        Assert.Equal(1.1, ThreadBudget.BusyOtherCores(before, after, new[] { 0, 1 }, ownTicks: 4), 9);
        // Only cpu1 allowed: 6 of its 20 ticks busy, 4 of them this process's.
        Assert.Equal(0.3, ThreadBudget.BusyOtherCores(before, after, new[] { 1 }, ownTicks: 0), 9);
        Assert.Equal(0.1, ThreadBudget.BusyOtherCores(before, after, new[] { 1 }, ownTicks: 4), 9);
        // This process's own time never makes the machine look less than idle.
        Assert.Equal(0.0, ThreadBudget.BusyOtherCores(before, after, new[] { 1 }, ownTicks: 50));
    }

    [Theory]
    [InlineData(2, null, 0.0, 2, "2 cores allowed, none busy with other processes")]
    [InlineData(2, null, 0.4, 2, "2 cores allowed, none busy with other processes")]
    [InlineData(2, null, 0.6, 1, "2 cores allowed, 1 busy with other processes")]
    [InlineData(2, null, 1.05, 1, "2 cores allowed, 1 busy with other processes")]
    [InlineData(2, null, 3.7, 1, "2 cores allowed, 4 busy with other processes")]
    [InlineData(8, null, 2.0, 6, "8 cores allowed, 2 busy with other processes")]
    [InlineData(8, 1.5, 0.0, 2, "2 cores allowed (CPU quota 1.5 of 8 CPUs), none busy with other processes")]
    [InlineData(8, 0.5, 0.0, 1, "1 core allowed (CPU quota 0.5 of 8 CPUs), none busy with other processes")]
    [InlineData(2, 4.0, 1.0, 1, "2 cores allowed, 1 busy with other processes")]
    [InlineData(1, null, 0.0, 1, "1 core allowed, none busy with other processes")]
    public void Choose_AllowedMinusBusy_AtLeastOne(int cpus, double? quota, double busy, int threads, string reason)
    {
        var c = ThreadBudget.Choose(new CpuBudget(cpus, quota, busy));
        Assert.Equal(threads, c.Threads);
        Assert.Equal(reason + "; --threads N to override", c.Reason);
    }

    [Fact]
    public void Choose_LoadNotMeasured_UsesTheAllowedCoresAndSaysSo()
    {
        var c = ThreadBudget.Choose(new CpuBudget(4, null, null));
        Assert.Equal(4, c.Threads);
        Assert.Equal("threads: 4 (4 cores allowed, load not measured; --threads N to override)", c.ToString());
    }

    private static CpuBudget NoProbe() => throw new InvalidOperationException("the machine must not be probed when the count is given");

    [Fact]
    public void ChooseThreads_ExplicitFlagWinsOverEnvironmentAndProbe()
    {
        var c = RuntimeOptions.ChooseThreads(3, _ => "1", NoProbe);
        Assert.Equal(new ThreadChoice(3, "--threads"), c);
        Assert.Equal(0, RuntimeOptions.ChooseThreads(0, _ => "1", NoProbe).Threads); // 0: libtorch's default, the old choice
        Assert.Throws<UserInputException>(() => RuntimeOptions.ChooseThreads(-1, _ => null, NoProbe));
    }

    [Fact]
    public void ChooseThreads_EnvironmentWinsOverProbe_AndABadValueNamesTheVariable()
    {
        var c = RuntimeOptions.ChooseThreads(null, v => v == RuntimeOptions.ThreadsVariable ? "2" : null, NoProbe);
        Assert.Equal(2, c.Threads);
        Assert.StartsWith("RESLORA_THREADS=2", c.Reason, StringComparison.Ordinal);
        var e = Assert.Throws<UserInputException>(() => RuntimeOptions.ChooseThreads(null, _ => "two", NoProbe));
        Assert.Contains("RESLORA_THREADS='two'", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ChooseThreads_NothingGiven_ProbesTheMachine()
    {
        var c = RuntimeOptions.ChooseThreads(null, _ => null, () => new CpuBudget(2, null, 1.0));
        Assert.Equal("threads: 1 (2 cores allowed, 1 busy with other processes; --threads N to override)", c.ToString());
    }

    [Fact]
    public void Probe_OnLinux_AllowsWhatDotnetProcessorCountSees()
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("DOTNET_PROCESSOR_COUNT") is not null) return;
        var b = ThreadBudget.Probe();
        // .NET's ProcessorCount on Linux is min(affinity, quota rounded up): the same rule as Choose's allowed cores.
        int allowed = b.QuotaCores is { } q ? Math.Min(b.AllowedCpus, (int)Math.Ceiling(q)) : b.AllowedCpus;
        Assert.Equal(Environment.ProcessorCount, allowed);
        Assert.NotNull(b.BusyOtherCores);
        Assert.InRange(b.BusyOtherCores!.Value, 0, b.AllowedCpus + 0.5);
    }
}
