using System.CommandLine;

namespace ResLora.Cli;

internal static class VersionVerb
{
    public static Command Build()
    {
        var cmd = new Command("version", "Print the versions of reslora, TorchSharp and libtorch, and whether the native library loads.");
        cmd.SetAction(_ => CliErrors.Guard(() =>
        {
            var asm = typeof(ResLora.RuntimeOptions).Assembly.GetName().Version;
            Console.WriteLine($"reslora {asm}");
            Console.WriteLine($"TorchSharp {typeof(torch).Assembly.GetName().Version}");
            using var t = torch.ones(2, 2);
            Console.WriteLine($"libtorch loaded: ones(2,2).sum() = {t.sum().item<float>()}, threads = {torch.get_num_threads()}");
            return 0;
        }));
        return cmd;
    }
}
