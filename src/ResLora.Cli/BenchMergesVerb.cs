using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using ResLora.Bench;

namespace ResLora.Cli;

/// <summary><c>reslora bench merges</c>: ResLoRA is/ms merges (bi, bw/A-merge, ls, ls+distill) against the unmerged adapter on held-out text.</summary>
internal static class BenchMergesVerb
{
    public static Command Build()
    {
        var output = new Option<string>("--out") { Description = "Work folder (adapters are kept and reused) and merges.md/merges.json.", DefaultValueFactory = _ => "reslora-bench-merges" };
        var seeds = new Option<string>("--seeds") { Description = "Comma-separated training seeds.", DefaultValueFactory = _ => "1,2" };
        var steps = new Option<int>("--steps") { Description = "Fine-tuning steps per adapter.", DefaultValueFactory = _ => 150 };
        var distill = new Option<int>("--distill") { Description = "Distillation steps of the ls+distill merge.", DefaultValueFactory = _ => 300 };
        var threads = new Option<int>("--threads") { Description = "Torch threads.", DefaultValueFactory = _ => 2 };
        var quick = new Option<bool>("--quick") { Description = "Tiny base model, q,v only, is and ms/-1, few steps: checks the benchmark runs." };
        var cmd = new Command("merges", "ResLoRA is/ms merges (bi, bw / A-merge, least-squares fold, fold + distillation) on the demo's pre-trained base: mean KL, max |Δlogit|, |Δloss| and greedy agreement against the unmerged adapter on held-out text, over seeds.");
        foreach (var o in new Option[] { output, seeds, steps, distill, threads, quick }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var runtime = new RuntimeOptions { Threads = r.GetValue(threads) };
            bool q = r.GetValue(quick);
            var seedList = r.GetValue(seeds)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(s => long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) ? v : throw new UserInputException($"--seeds: '{s}' is not an integer.")).ToList();
            int n = q ? 20 : r.GetValue(steps), d = q ? 10 : r.GetValue(distill);
            string dir = r.GetValue(output)!;
            var rows = MergeBench.Run(dir, MergeBench.Configs(seedList, q), n, d, q, runtime, Console.Error.WriteLine);
            string md = MergeBench.Markdown(rows);
            Console.Out.Write(md);
            IO.AtomicFile.WriteAllText(Path.Combine(dir, "merges.md"), md);
            IO.AtomicFile.WriteAllText(Path.Combine(dir, "merges.json"), JsonSerializer.Serialize(rows, IO.Json.ReportJson.Indented));
            return 0;
        }));
        return cmd;
    }
}
