using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using ResLora.Demo;
using Spectre.Console;

namespace ResLora.Cli;

/// <summary><c>reslora bench nlu</c>: the methods on a real pretrained encoder (MiniLM), held-out accuracy unmerged and merged.</summary>
internal static class BenchNluVerb
{
    public static Command Build()
    {
        var model = new Option<string?>("--model") { Description = "A BERT-family encoder folder (default: all-MiniLM-L6-v2 from the build, converted once into --cache)." };
        var cache = new Option<string>("--cache") { Description = "Where the converted MiniLM folder is kept.", DefaultValueFactory = _ => Path.Combine(Path.GetTempPath(), "reslora-cache") };
        var output = new Option<string>("--out") { Description = "Folder for runs, nlu.json and nlu.md.", DefaultValueFactory = _ => "reslora-bench-nlu" };
        var methods = new Option<string>("--methods") { Description = "Comma-separated methods; reslora-is and reslora-ms may end in +annealK (linear) or +annealKcos (cosine) to anneal the shortcuts over the last K steps (an exact merge).", DefaultValueFactory = _ => string.Join(",", new NluSettings().Methods) };
        var seeds = new Option<string>("--seeds") { Description = "Comma-separated seeds.", DefaultValueFactory = _ => "1,2" };
        var steps = new Option<int>("--steps") { Description = "Training steps per run.", DefaultValueFactory = _ => 150 };
        var evalEvery = new Option<int>("--eval-every") { Description = "Held-out evaluation every N steps (the accuracy curve).", DefaultValueFactory = _ => 25 };
        var lr = new Option<double>("--lr") { Description = "Learning rate.", DefaultValueFactory = _ => 2e-3 };
        var rank = new Option<int>("--rank") { Description = "Adapter rank (equal for every method).", DefaultValueFactory = _ => 8 };
        var threads = new Option<int>("--threads") { Description = "Torch threads.", DefaultValueFactory = _ => 1 };
        var cmd = new Command("nlu", "Fine-tune a real pretrained encoder (MiniLM) on sentiment with each method; accuracy on sentences whose opinion words were never seen in fine-tuning, at fixed early steps and at the end, unmerged and merged.");
        foreach (var o in new Option[] { model, cache, output, methods, seeds, steps, evalEvery, lr, rank, threads }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            int th = r.GetValue(threads);
            if (th < 1) throw new UserInputException($"--threads must be at least 1, got {th}.");
            new RuntimeOptions { Threads = th }.Apply();
            var s = new NluSettings
            {
                Steps = r.GetValue(steps),
                EvalEvery = r.GetValue(evalEvery),
                LearningRate = r.GetValue(lr),
                Rank = r.GetValue(rank),
                Alpha = 2.0 * r.GetValue(rank),
                Methods = r.GetValue(methods)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
                Seeds = r.GetValue(seeds)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                    .Select(x => long.TryParse(x, CultureInfo.InvariantCulture, out long v) ? v : throw new UserInputException($"--seeds: '{x}' is not an integer.")).ToList(),
            };
            if (s.Steps < 1 || s.EvalEvery < 1) throw new UserInputException("--steps and --eval-every must be at least 1.");
            string dir = r.GetValue(model) ?? MiniLmAssets.EnsureHfFolder(r.GetValue(cache)!, m => Console.Error.WriteLine(m));
            string outDir = r.GetValue(output)!;
            Console.Error.WriteLine($"bench nlu: {s.Methods.Count} methods × {s.Seeds.Count} seeds × {s.Steps} steps on {dir}, {th} thread(s)");
            var runs = NluBench.Run(dir, Path.Combine(outDir, "runs"), s, m => Console.Error.WriteLine(m));
            string md = NluBench.Markdown(runs, s);
            Console.Out.Write(md);
            AtomicWrite(Path.Combine(outDir, "nlu.md"), md);
            AtomicWrite(Path.Combine(outDir, "nlu.json"), JsonSerializer.Serialize(runs.Select(x => new
            {
                method = x.Label,
                seed = x.Seed,
                curve = x.Curve.Select(c => new { step = c.Step, accuracy = c.Accuracy, loss = c.Loss }),
                merged_accuracy = x.MergedAccuracy,
                merged_loss = x.MergedLoss,
                seconds = x.Seconds,
                trainable_parameters = x.TrainableParameters,
            }), IO.Json.ReportJson.Indented));
            return 0;
        }));
        return cmd;
    }

    private static void AtomicWrite(string path, string text) => ResLora.IO.AtomicFile.WriteAllText(path, text);
}
