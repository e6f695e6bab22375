using System.Runtime.InteropServices;

// Root namespace: RuntimeOptions (root) calls this (see ThreadBudget.cs).
namespace ResLora;

/// <summary>
/// Passive waiting for libtorch's OpenMP threads. By default libgomp (libtorch's OpenMP on Linux) spins a waiting thread
/// for 300,000 iterations before it sleeps, and Intel's/LLVM's OpenMP (Windows, macOS) for 200 ms (KMP_BLOCKTIME): on a
/// machine shared with other work those spins take cores the others need and slow every barrier of this run too. With
/// <c>OMP_WAIT_POLICY=PASSIVE</c> both runtimes put a waiting thread to sleep at once (libgomp: spin count 0; LLVM's:
/// block time 0). The runtimes read the variable once, when libtorch is loaded, so it must be set in the native
/// environment (<c>setenv</c>; .NET's <see cref="Environment.SetEnvironmentVariable(string, string)"/> does not reach it
/// on Unix) before the first torch call.
/// Opt-in (<see cref="OptIn"/> = 1): measured alone on 2 cores (bench/contention.sh, docs/benchmarks.md), passive waiting
/// cost a third of the training speed, while the thread choice from the free cores (<see cref="ThreadBudget"/>) already
/// keeps a run beside a busy process at 0.65–0.7× its speed alone; spinning only hurts when threads outnumber free cores.
/// </summary>
internal static partial class OpenMpWait
{
    /// <summary>The variable set, and the value.</summary>
    public const string Variable = "OMP_WAIT_POLICY", Passive = "PASSIVE";

    /// <summary>The environment variable that asks for passive waiting (value 1).</summary>
    public const string OptIn = "RESLORA_PASSIVE_WAIT";

    /// <summary>Variables by which a user already chose how OpenMP threads wait; any of them set leaves the choice to the user.</summary>
    public static readonly string[] UserChoices = { "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "KMP_LIBRARY" };

    /// <summary>Whether to set passive waiting, given the environment: when <see cref="OptIn"/> is 1 and the user set none of <see cref="UserChoices"/>.</summary>
    public static bool ShouldSet(Func<string, string?> env) => env(OptIn) == "1" && UserChoices.All(v => env(v) is null);

    /// <summary>
    /// Sets <c>OMP_WAIT_POLICY=PASSIVE</c> when asked and the user chose no wait policy (<see cref="ShouldSet"/>); true when it did.
    /// setenv's overwrite flag is 0 as well, so a value already in the native environment is never replaced.
    /// </summary>
    public static bool Apply()
    {
        if (!ShouldSet(Environment.GetEnvironmentVariable)) return false;
        try
        {
            if (OperatingSystem.IsWindows()) return SetWindows(Variable, Passive);
            return _set = SetEnv(Variable, Passive, 0) == 0;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;
        }
    }

    private static bool _set;

    /// <summary>Whether this process asked for passive waiting (<see cref="Apply"/>); the user's own setting is not counted.</summary>
    public static bool Requested => _set;

    /// <summary>The value in the native environment now (what the OpenMP runtime reads at load), or null; Unix only.</summary>
    public static string? NativeValue(string name) => OperatingSystem.IsWindows() ? Environment.GetEnvironmentVariable(name) : Marshal.PtrToStringUTF8(GetEnv(name));

    private static bool SetWindows(string name, string value)
    {
        // On Windows the process environment block is the native one.
        Environment.SetEnvironmentVariable(name, value);
        return _set = true;
    }

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);

    [LibraryImport("libc", EntryPoint = "getenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr GetEnv(string name);
}
