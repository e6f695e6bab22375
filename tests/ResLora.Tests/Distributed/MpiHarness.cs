using System.Diagnostics;
using System.Text.Json;
using ResLora.Adapters;
using ResLora.IO;

namespace ResLora.Tests.Distributed;

/// <summary>
/// A fact that needs Open MPI's <c>mpirun</c>: skipped (not failed) on a machine with only the .NET SDK, so the README's
/// <c>dotnet test</c> passes there; <c>.ci/run</c> installs Open MPI first, so CI runs these.
/// </summary>
public sealed class MpiFactAttribute : FactAttribute
{
    public MpiFactAttribute()
    {
        if (MpiHarness.MpiRun is null) Skip = "mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev); .ci/run installs it.";
    }
}

/// <summary>The <see cref="MpiFactAttribute"/> of a theory.</summary>
public sealed class MpiTheoryAttribute : TheoryAttribute
{
    public MpiTheoryAttribute()
    {
        if (MpiHarness.MpiRun is null) Skip = "mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev); .ci/run installs it.";
    }
}

/// <summary>Runs the reslora CLI (the apphost copied beside the tests) under mpirun or alone, as a child process.</summary>
internal static class MpiHarness
{
    /// <summary>mpirun on PATH, or null.</summary>
    public static readonly string? MpiRun = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
        .Select(d => Path.Combine(d, "mpirun")).FirstOrDefault(File.Exists);

    /// <summary>The CLI's apphost beside the test assembly (the project reference copies it).</summary>
    public static string Cli => Path.Combine(AppContext.BaseDirectory, OperatingSystem.IsWindows() ? "ResLora.Cli.exe" : "ResLora.Cli");

    /// <summary>
    /// mpirun's arguments for <paramref name="ranks"/> local ranks: root allowed (CI containers), oversubscription allowed
    /// (2 ranks on a 1-core runner), loopback TCP and shared memory only, one torch thread each.
    /// </summary>
    public static string[] MpiArgs(int ranks) => new[]
    {
        "-np", ranks.ToString(System.Globalization.CultureInfo.InvariantCulture), "--allow-run-as-root", "--oversubscribe",
        "--mca", "btl", "self,vader,tcp", "--mca", "btl_tcp_if_include", "lo", "--bind-to", "none",
    };

    /// <summary>Starts a child with the given environment additions; stdout and stderr are collected.</summary>
    public static Process Start(string file, IEnumerable<string> args, IDictionary<string, string>? env, out Func<string> output)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["OMP_NUM_THREADS"] = "1";
        foreach (var (k, v) in env ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        var sb = new System.Text.StringBuilder();
        var p = new Process { StartInfo = psi };
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (sb) sb.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (sb) sb.AppendLine(e.Data); };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        output = () => { lock (sb) return sb.ToString(); };
        return p;
    }

    /// <summary>Runs to the end (at most <paramref name="timeoutSeconds"/>); returns the exit code and everything printed.</summary>
    public static (int Rc, string Output) Run(string file, IEnumerable<string> args, IDictionary<string, string>? env = null, int timeoutSeconds = 300)
    {
        using var p = Start(file, args, env, out var output);
        if (!p.WaitForExit(timeoutSeconds * 1000))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            return (-1, output() + $"\n(timed out after {timeoutSeconds}s)");
        }
        p.WaitForExit(); // drains the output
        return (p.ExitCode, output());
    }

    /// <summary><c>reslora train ...</c> on <paramref name="ranks"/> MPI ranks.</summary>
    public static (int Rc, string Output) Train(int ranks, IEnumerable<string> trainArgs, IDictionary<string, string>? env = null) =>
        Run(MpiRun!, MpiArgs(ranks).Append(Cli).Append("train").Concat(trainArgs), env);

    /// <summary>The step losses of a run's metrics.jsonl, by step.</summary>
    public static SortedDictionary<int, double> Losses(string outDir)
    {
        var d = new SortedDictionary<int, double>();
        foreach (var line in File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl")).Where(l => l.Length > 0))
        {
            using var doc = JsonDocument.Parse(line);
            if (doc.RootElement.TryGetProperty("loss", out var l)) d[doc.RootElement.GetProperty("step").GetInt32()] = l.GetDouble();
        }
        return d;
    }

    /// <summary>Every tensor of an adapter folder's weights file, as float32 arrays.</summary>
    public static Dictionary<string, float[]> AdapterTensors(string outDir)
    {
        var d = new Dictionary<string, float[]>(StringComparer.Ordinal);
        using var f = SafetensorsFile.Open(Path.Combine(outDir, AdapterFolder.WeightsFileName));
        foreach (var e in f.Entries)
        {
            using var t = f.Load(e.Name);
            using var t32 = t.to_type(TorchSharp.torch.ScalarType.Float32).contiguous();
            d[e.Name] = t32.data<float>().ToArray();
        }
        return d;
    }

    /// <summary>Asserts two numbers agree to <paramref name="rel"/> of their size (and <paramref name="abs"/> near zero).</summary>
    public static void Close(double expected, double actual, double rel, double abs, string what) =>
        Assert.True(Math.Abs(expected - actual) <= abs + rel * Math.Abs(expected), $"{what}: expected {expected:R}, got {actual:R} (difference {Math.Abs(expected - actual):E2})");
}
