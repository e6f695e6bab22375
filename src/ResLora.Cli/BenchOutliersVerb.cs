using System.CommandLine;
using ResLora.Quantization;

namespace ResLora.Cli;

/// <summary><c>reslora bench plant-outliers</c>: a function-preserving copy of a model with planted activation outliers.</summary>
internal static class BenchOutliersVerb
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Model folder.", Required = true };
        var output = new Option<string>("--out") { Description = "New folder.", Required = true };
        var channels = new Option<int>("--channels") { Description = "Channels to make outliers.", DefaultValueFactory = _ => 4 };
        var factor = new Option<double>("--factor") { Description = "How much larger those channels become.", DefaultValueFactory = _ => 50.0 };
        var seed = new Option<long>("--seed") { Description = "Which channels.", DefaultValueFactory = _ => 1L };
        var cmd = new Command("plant-outliers", "Copy a model with a few normed-activation channels scaled up (RMSNorm γ ×factor, the reading linears' columns ÷factor): same function, LLM-like activation outliers (for RoLoRA benchmarks).");
        foreach (var o in new Option[] { model, output, channels, factor, seed }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string dir = CliPaths.ModelDir(r.GetValue(model));
            string outDir = r.GetValue(output)!;
            if (Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any()) throw new IOException($"--out {outDir} exists and is not empty.");
            int ch = r.GetValue(channels);
            double f = r.GetValue(factor);
            if (ch < 1 || !(f > 0)) throw new UserInputException("--channels must be ≥ 1 and --factor > 0.");
            OutlierPlanting.PlantFolder(dir, outDir, ch, f, r.GetValue(seed));
            Console.Out.WriteLine($"wrote {Path.GetFullPath(outDir)}: {ch} outlier channels ×{f}");
            return 0;
        }));
        return cmd;
    }
}
