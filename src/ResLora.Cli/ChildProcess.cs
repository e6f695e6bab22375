using System.Diagnostics;

namespace ResLora.Cli;

/// <summary>
/// Benchmarks that measure a process's own peak RSS run each configuration in a child: this executable again (under
/// <c>dotnet</c>, with the CLI assembly first) or another program, its last stdout line being JSON.
/// </summary>
internal static class ChildProcess
{
    /// <summary>Start information for this executable with <paramref name="args"/>, output redirected.</summary>
    public static ProcessStartInfo Self(IEnumerable<string> args)
    {
        string exe = Environment.ProcessPath ?? throw new InvalidOperationException("cannot find our own executable.");
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true };
        if (Path.GetFileNameWithoutExtension(exe) == "dotnet") psi.ArgumentList.Add(typeof(ChildProcess).Assembly.Location);
        foreach (var a in args) psi.ArgumentList.Add(a);
        return psi;
    }

    /// <summary>
    /// Runs <paramref name="psi"/> to its end (stderr read alongside, so neither pipe can fill and stall the child) and
    /// returns its last stdout line; a non-zero exit throws, naming <paramref name="what"/> and quoting stderr.
    /// </summary>
    public static string LastLine(ProcessStartInfo psi, string what)
    {
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {psi.FileName}.");
        var err = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{what} failed with exit code {p.ExitCode}: {err.Result.Trim()}");
        return stdout.Trim().Split('\n')[^1];
    }
}
