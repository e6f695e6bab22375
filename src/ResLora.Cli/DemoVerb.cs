using System.CommandLine;
using System.Globalization;
using ResLora.Demo;
using ResLora.Training;
using Spectre.Console;

namespace ResLora.Cli;

internal static class DemoVerb
{
    public static Command Build()
    {
        var quick = new Option<bool>("--quick") { Description = "Tiny model and budget (CI): shows the pipeline runs in well under a minute; the numbers mean little." };
        var output = new Option<string>("--out") { Description = "Output folder (report.md, loss.png, results.json, data/, runs/, merged/).", DefaultValueFactory = _ => "reslora-demo" };
        var cache = new Option<string?>("--cache") { Description = "Where the pre-trained base model is cached (default: ~/.cache/reslora or $XDG_CACHE_HOME/reslora)." };
        var methods = new Option<string?>("--methods") { Description = "Comma-separated method labels to compare (default: all this build has; lora is always included)." };
        var steps = new Option<int?>("--steps") { Description = "Fine-tuning steps per run (default 200; quick 30)." };
        var seed = new Option<long?>("--seed") { Description = "Seed of the fine-tuning runs and the task split (default 7); the base model is shared." };
        var threads = new Option<int>("--threads") { Description = "Torch threads (0 = libtorch's default).", DefaultValueFactory = _ => 0 };
        var task = new Option<string>("--task") { Description = "all: the causal-LM story, DPO on its LoRA and ResLoRA adapters (preference pairs from the same problems), then (outside --quick) a real pretrained encoder (MiniLM) classifying sentences with LoRA vs ResLoRA, merged; lm, preference (lm, then DPO) or nlu: those parts only.", DefaultValueFactory = _ => "all" };
        var nluSteps = new Option<int>("--nlu-steps") { Description = "Fine-tuning steps of each NLU run.", DefaultValueFactory = _ => 60 };
        var sweep = new Option<bool>("--sweep") { Description = "Also run every method at two larger step sizes (lr 6e-3, alpha 16 and lr 3e-3, alpha 32) and report each method's best setting (three times the fine-tuning runs)." };
        var cmd = new Command("demo", "The whole story on an embedded default: pre-train a small model (once, cached), fine-tune it with every method on held-out problems, compare, plot, merge and generate.");
        foreach (var o in new Option[] { quick, output, cache, methods, steps, seed, threads, task, nluSteps, sweep }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            int th = r.GetValue(threads);
            if (th < 0) throw new UserInputException($"--threads must be 0 or more, got {th}.");
            string outDir = r.GetValue(output)!;
            var o = r.GetValue(quick) ? DemoOptions.QuickDefaults(outDir) : new DemoOptions { OutDir = outDir };
            o = o with
            {
                CacheRoot = r.GetValue(cache),
                Methods = r.GetValue(methods)?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
                Steps = r.GetValue(steps) ?? o.Steps,
                Seed = r.GetValue(seed) ?? o.Seed,
                Sweep = r.GetValue(sweep) ? DemoOptions.StandardSweep : o.Sweep,
                Runtime = new RuntimeOptions { Threads = th },
            };
            if (o.Steps < 1) throw new UserInputException($"--steps must be at least 1, got {o.Steps}.");
            string part = r.GetValue(task)!.Trim().ToLowerInvariant();
            if (part is not ("all" or "lm" or "preference" or "nlu")) throw new UserInputException($"--task '{part}' is not known; use all, lm, preference or nlu.");
            if (part == "nlu" && r.GetValue(quick)) throw new UserInputException("--task nlu has no --quick form (it fine-tunes a real 22 M-parameter encoder); drop --quick.");
            var parts = Parts(part, r.GetValue(quick));
            DemoResult? lm = null;
            DemoNluResult? nlu = null;
            DemoPreferenceResult? pref = null;
            if (parts.Contains("lm"))
            {
                if (parts.Count > 1) Console.Error.WriteLine($"part 1 of {parts.Count}: a small language model learns multiplication word problems");
                lm = DemoProgressDisplay.Run(p => DemoRunner.Run(o, new MessageLog(), p));
                Print(lm);
            }
            if (parts.Contains("preference"))
            {
                Console.Error.WriteLine($"part {parts.ToList().IndexOf("preference") + 1} of {parts.Count}: DPO aligns the fine-tuned adapters with preference pairs (right answer chosen, the adapter's own wrong answer or a near miss rejected)");
                var clock = System.Diagnostics.Stopwatch.StartNew();
                pref = DemoPreference.Run(lm!, o, m => Console.Error.WriteLine($"[demo preference {clock.Elapsed.TotalSeconds:0} s] {m}"));
                PrintPreference(pref);
            }
            if (parts.Contains("nlu"))
            {
                if (parts.Count > 1) Console.Error.WriteLine($"part {parts.Count} of {parts.Count}: a real pretrained encoder (all-MiniLM-L6-v2) learns sentiment");
                if (th > 0) new RuntimeOptions { Threads = th }.Apply();
                var clock = System.Diagnostics.Stopwatch.StartNew();
                nlu = DemoNlu.Run(outDir, o.CacheRoot ?? DemoBaseModel.DefaultCacheRoot(), r.GetValue(nluSteps), m => Console.Error.WriteLine($"[demo nlu {clock.Elapsed.TotalSeconds:0} s] {m}"));
                PrintNlu(nlu);
            }
            PrintSummary(lm, pref, nlu, r.GetValue(quick));
            return 0;
        }));
        return cmd;
    }

    private static string F(double v, string fmt = "0.000") => double.IsNaN(v) ? "-" : v.ToString(fmt, CultureInfo.InvariantCulture);

    private static void Print(DemoResult r)
    {
        bool swept = r.Swept;
        var t = new Table().Title("fine-tuning on held-out multiplication word problems").AddColumns("method", "eval loss", "accuracy", $"train loss @ step {r.Rows[0].EarlyStep}", "steps to LoRA's final");
        if (swept) t.AddColumns("best eval loss", "best accuracy", "best lr/alpha");
        t.AddColumns("wall ms/step", "merge", "merge KL (held-out)");
        foreach (var row in r.Rows)
        {
            var cells = new List<string> { row.Label, F(row.Default.EvalLoss), F(row.Default.Accuracy, "P0"), F(row.LossAtEarlyStep), row.StepsToLoraFinal?.ToString(CultureInfo.InvariantCulture) ?? "-" };
            if (swept) cells.AddRange(new[] { F(row.Best.EvalLoss), F(row.Best.Accuracy, "P0"), string.Create(CultureInfo.InvariantCulture, $"{row.Best.Lr}/{row.Best.Alpha}") });
            cells.AddRange(new[] { F(row.Default.Summary.MeanStepSeconds * 1000, "0"), Markup.Escape(row.MergeKind), F(row.MergeHeldOutKl, "0.###e0") });
            t.AddRow(cells.ToArray());
        }
        CliConsole.Out().Write(t);
        Console.Out.WriteLine("(wall ms/step is wall-clock time: on a machine shared with other jobs it measures their load as much as the method.)");
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"base model before fine-tuning: accuracy {F(r.BaseAccuracy, "P0")}, eval loss {F(r.BaseEvalLoss)}"));
        Console.Out.WriteLine($"merged {r.MergedLabel} adapter ({r.Merge.Method}) → {r.MergedDir} (held-out KL vs unmerged {(r.Merge.HeldOut is { } h ? F(h.MeanKl, "0.###e0") : "-")}, max |Δlogit| on the probe {r.Merge.MaxAbsDiff.ToString("0.##e0", CultureInfo.InvariantCulture)})");
        foreach (var a in r.Answers)
            Console.Out.WriteLine($"  {(a.Correct ? "right" : "wrong")}: {a.Prompt.Replace("\n", " ").Trim()} → {a.Answer.Trim()}   (reference: {a.Reference.Trim()})");
        Console.Out.WriteLine($"merged model on {r.Answers.Count} held-out questions: {r.Answers.Count(a => a.Correct)} right ({F(r.AnswerAccuracy, "P0")})");
        Console.Out.WriteLine($"report: {r.ReportPath}   plot: {r.PlotPath}   ({r.WallSeconds:0} s)");
    }

    private static void PrintNlu(DemoNluResult r)
    {
        Console.Out.WriteLine();
        Console.Out.WriteLine("a real pretrained encoder (all-MiniLM-L6-v2) learns sentiment; accuracy on sentences whose opinion words it never saw in fine-tuning:");
        Console.Out.Write(r.Table);
        Console.Out.WriteLine($"the merged {r.MergedMethod} classifier ({r.MergedDir}) on held-out sentences:");
        foreach (var e in r.Examples)
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {(e.Gold == e.Predicted ? "right" : "wrong")}: \"{e.Text}\" → {e.Predicted} ({e.Probability:P0})   (reference: {e.Gold})"));
    }

    /// <summary>
    /// The parts a demo invocation runs: lm, preference (DPO on lm's adapters) and/or nlu. <c>all</c> runs them all (nlu only outside <c>--quick</c>); the NLU part needs the
    /// MiniLM assembly (<see cref="MiniLmAssets.AssemblyPath"/>: beside the CLI, or in the NuGet cache), and without it
    /// <c>all</c> refuses at once with the reason rather than skipping a promised part after the LM part's minutes.
    /// </summary>
    internal static IReadOnlyList<string> Parts(string task, bool quick)
    {
        var parts = new List<string>();
        if (task != "nlu") parts.Add("lm");
        if (task is "all" or "preference") parts.Add("preference");
        if (task == "nlu" || (task == "all" && !quick))
        {
            if (MiniLmAssets.AssemblyPath() is null) throw new UserInputException(string.Format(CultureInfo.InvariantCulture, MiniLmAssets.MissingMessage, AppContext.BaseDirectory) + (task == "all" ? " Or run only the language-model part with --task lm." : ""));
            parts.Add("nlu");
        }
        return parts;
    }

    /// <summary>The ten-second summary: what fine-tuning did, which method won, what the merged model answers.</summary>
    private static void PrintPreference(DemoPreferenceResult r)
    {
        Console.Out.WriteLine();
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"DPO from each fine-tuned adapter ({r.TrainPairs} pairs: the right answer chosen, the adapter's own wrong answer or a near miss rejected; {r.Steps} steps, β {DemoPreference.Beta}, lr {DemoPreference.Lr}; the SFT model is the reference), on held-out questions:"));
        var t = new Table().AddColumns("method", "preference accuracy SFT", "after DPO", "exact match SFT", "after DPO", "reward accuracy");
        foreach (var row in r.Rows) t.AddRow(row.Label, F(row.SftAccuracy, "P0"), F(row.DpoAccuracy, "P0"), F(row.SftExactMatch, "P0"), F(row.DpoExactMatch, "P0"), F(row.RewardAccuracy, "P0"));
        CliConsole.Out().Write(t);
        Console.Out.WriteLine($"pairs of the last method: {r.TrainPath} (train), {r.EvalPath} (held out); e.g. reslora train --objective dpo --data {r.TrainPath} --init-adapter <an SFT adapter> ...");
    }

    private static void PrintSummary(DemoResult? lm, DemoPreferenceResult? pref, DemoNluResult? nlu, bool quick)
    {
        var lines = new List<string>();
        if (quick) lines.Add("--quick: a tiny model and 30 steps show that every stage runs, not that fine-tuning works; without --quick the methods reach 80-90 % held-out accuracy (docs/benchmarks.md).");
        if (lm is not null)
        {
            var top = lm.Rows.OrderByDescending(x => double.IsNaN(x.Default.Accuracy) ? -1 : x.Default.Accuracy).First();
            var lora = lm.Rows.First(x => x.Label == "lora");
            lines.Add(string.Create(CultureInfo.InvariantCulture, $"fine-tuning took held-out accuracy from {F(lm.BaseAccuracy, "P0")} (the base model) to {F(top.Default.Accuracy, "P0")} ({top.Label}; LoRA {F(lora.Default.Accuracy, "P0")}), all at the same rank, steps and learning rate."));
            var faster = lm.Rows.Where(x => x.Label != "lora" && x.StepsToLoraFinal is { } s && s < lm.Rows[0].Default.Summary.Steps * 0.9).OrderBy(x => x.StepsToLoraFinal).FirstOrDefault();
            if (faster is not null) lines.Add(string.Create(CultureInfo.InvariantCulture, $"{faster.Label} reached LoRA's final training loss at step {faster.StepsToLoraFinal} of {faster.Default.Summary.Steps}."));
            lines.Add(string.Create(CultureInfo.InvariantCulture, $"the merged {lm.MergedLabel} model (no adapter at inference) answered {lm.Answers.Count(a => a.Correct)} of {lm.Answers.Count} held-out questions right; it differs from the unmerged model by KL {(lm.Merge.HeldOut is { } h ? F(h.MeanKl, "0.##e0") : "-")} on held-out text."));
        }
        if (pref is not null)
            lines.Add("DPO on preference pairs moved held-out preference accuracy " + string.Join(", ", pref.Rows.Select(x => string.Create(CultureInfo.InvariantCulture, $"{x.Label} {F(x.SftAccuracy, "P0")} → {F(x.DpoAccuracy, "P0")}"))) + " (greedy exact match " + string.Join(", ", pref.Rows.Select(x => string.Create(CultureInfo.InvariantCulture, $"{F(x.SftExactMatch, "P0")} → {F(x.DpoExactMatch, "P0")}"))) + ").");
        if (nlu is not null)
        {
            var last = nlu.Runs.GroupBy(x => x.Label).Select(g => (g.Key, Acc: g.Average(x => x.Curve[^1].Accuracy), Merged: g.Average(x => x.MergedAccuracy))).ToList();
            lines.Add("MiniLM on sentences with opinion words it never saw in fine-tuning: " + string.Join(", ", last.Select(x => string.Create(CultureInfo.InvariantCulture, $"{x.Key} {x.Acc:P0} (merged {x.Merged:P0})"))) + ".");
        }
        if (lines.Count == 0) return;
        Console.Out.WriteLine();
        Console.Out.WriteLine("In short:");
        foreach (var l in lines) Console.Out.WriteLine("  - " + l);
    }

    /// <summary>Demo messages (run results, the base model's score) as lines on stderr.</summary>
    private sealed class MessageLog : ITrainObserver
    {
        public void OnMessage(string message) => DemoProgressDisplay.Message(message);
    }
}
