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
        var steps = new Option<int?>("--steps") { Description = "Fine-tuning steps per run (default 150; quick 30)." };
        var seed = new Option<long?>("--seed") { Description = "Seed of the fine-tuning runs and the task split (default 7); the base model is shared." };
        var threads = new Option<int>("--threads") { Description = "Torch threads (0 = libtorch's default).", DefaultValueFactory = _ => 0 };
        var task = new Option<string>("--task") { Description = "all: the causal-LM story, then (outside --quick) a real pretrained encoder (MiniLM) classifying sentences with LoRA vs ResLoRA, merged; lm or nlu: one part only.", DefaultValueFactory = _ => "all" };
        var nluSteps = new Option<int>("--nlu-steps") { Description = "Fine-tuning steps of each NLU run.", DefaultValueFactory = _ => 60 };
        var cmd = new Command("demo", "The whole story on an embedded default: pre-train a small model (once, cached), fine-tune it with every method on held-out problems, compare, plot, merge and generate.");
        foreach (var o in new Option[] { quick, output, cache, methods, steps, seed, threads, task, nluSteps }) cmd.Options.Add(o);
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
                Runtime = new RuntimeOptions { Threads = th },
            };
            if (o.Steps < 1) throw new UserInputException($"--steps must be at least 1, got {o.Steps}.");
            string part = r.GetValue(task)!.Trim().ToLowerInvariant();
            if (part is not ("all" or "lm" or "nlu")) throw new UserInputException($"--task '{part}' is not known; use all, lm or nlu.");
            if (part == "nlu" && r.GetValue(quick)) throw new UserInputException("--task nlu has no --quick form (it fine-tunes a real 22 M-parameter encoder); drop --quick.");
            if (part != "nlu")
            {
                var log = new LineLog();
                var result = ProgressDisplay.Run("demo", obs => DemoRunner.Run(o, new Tee(obs, log), null));
                Print(result);
            }
            if (part == "nlu" || (part == "all" && !r.GetValue(quick)))
            {
                if (MiniLmAssets.AssemblyPath() is null && part == "all")
                {
                    Console.Out.WriteLine($"(the NLU part needs {MiniLmAssets.AssemblyFile}, which the source build copies beside the CLI; skipped)");
                    return 0;
                }
                if (th > 0) new RuntimeOptions { Threads = th }.Apply();
                var nlu = DemoNlu.Run(outDir, o.CacheRoot ?? DemoBaseModel.DefaultCacheRoot(), r.GetValue(nluSteps), m => Console.Error.WriteLine(m));
                PrintNlu(nlu);
            }
            return 0;
        }));
        return cmd;
    }

    private static string F(double v, string fmt = "0.000") => double.IsNaN(v) ? "-" : v.ToString(fmt, CultureInfo.InvariantCulture);

    private static void Print(DemoResult r)
    {
        var t = new Table().Title("fine-tuning on held-out multiplication problems").AddColumns("method", "eval loss", "accuracy", $"loss @ step {r.Rows[0].EarlyStep}", "steps to LoRA's final", "best eval loss", "best accuracy", "best lr/alpha", "ms/step", "merge", "merge KL (held-out)");
        foreach (var row in r.Rows)
            t.AddRow(row.Label, F(row.Default.EvalLoss), F(row.Default.Accuracy, "P0"), F(row.LossAtEarlyStep), row.StepsToLoraFinal?.ToString(CultureInfo.InvariantCulture) ?? "-",
                F(row.Best.EvalLoss), F(row.Best.Accuracy, "P0"), string.Create(CultureInfo.InvariantCulture, $"{row.Best.Lr}/{row.Best.Alpha}"), F(row.Default.Summary.MeanStepSeconds * 1000, "0.0"), Markup.Escape(row.MergeKind), F(row.MergeHeldOutKl, "0.###e0"));
        CliConsole.Out().Write(t);
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"base model before fine-tuning: accuracy {F(r.BaseAccuracy, "P0")}, eval loss {F(r.BaseEvalLoss)}"));
        Console.Out.WriteLine($"merged {r.Merge.Method} adapter → {r.MergedDir} (held-out KL vs unmerged {(r.Merge.HeldOut is { } h ? F(h.MeanKl, "0.###e0") : "-")}, max |Δlogit| on the probe {r.Merge.MaxAbsDiff.ToString("0.##e0", CultureInfo.InvariantCulture)})");
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

    private sealed class LineLog : ITrainObserver
    {
    }

    private sealed class Tee(ITrainObserver a, ITrainObserver b) : ITrainObserver
    {
        public void OnStart(int totalSteps, int startStep) { a.OnStart(totalSteps, startStep); b.OnStart(totalSteps, startStep); }
        public void OnStep(StepReport report) { a.OnStep(report); b.OnStep(report); }
        public void OnEval(EvalReport report) { a.OnEval(report); b.OnEval(report); }
        public void OnMessage(string message) { a.OnMessage(message); b.OnMessage(message); }
    }
}
