using System.CommandLine;
using System.Reflection;

namespace ResLora.Cli;

internal static class VersionVerb
{
    public static Command Build()
    {
        var cmd = new Command("version", "Print the versions of reslora, TorchSharp and the libtorch TorchSharp is built against (it refuses to load another), where the native library was loaded from, and whether it runs.");
        cmd.SetAction(_ => CliErrors.Guard(() =>
        {
            Console.WriteLine($"reslora {Informational(typeof(ResLora.RuntimeOptions).Assembly)}");
            string torchSharp = Informational(typeof(torch).Assembly);
            Console.WriteLine($"TorchSharp {torchSharp}");
            using var t = torch.ones(2, 2);
            // TorchSharp exposes the libtorch version it is built against; its native part checks the loaded one at start.
            Console.WriteLine($"libtorch {torch.__version__} (as built into TorchSharp {torchSharp}){(LoadedFrom() is { } path ? $", loaded from {path}" : "")}");
            Console.WriteLine($"libtorch runs: ones(2,2).sum() = {t.sum().item<float>()}, threads = {torch.get_num_threads()}");
            return 0;
        }));
        return cmd;
    }

    private static string Informational(Assembly a) =>
        (a.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? a.GetName().Version?.ToString() ?? "?").Split('+')[0];

    /// <summary>The folder of the libtorch shared library mapped into this process (Linux), or null.</summary>
    private static string? LoadedFrom()
    {
        try
        {
            if (!OperatingSystem.IsLinux()) return null;
            var line = File.ReadLines("/proc/self/maps").FirstOrDefault(l => l.Contains("/libtorch_cpu.so", StringComparison.Ordinal) || l.Contains("/libtorch.so", StringComparison.Ordinal));
            return line is null ? null : Path.GetDirectoryName(line[line.IndexOf('/')..]);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }
}
