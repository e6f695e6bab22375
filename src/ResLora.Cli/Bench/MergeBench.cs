using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using ResLora.Adapters;
using ResLora.Demo;
using ResLora.IO;
using ResLora.Pipelines;
using ResLora.Training;

namespace ResLora.Bench;

/// <summary>One adapter configuration the merge benchmark trains.</summary>
public sealed record MergeBenchConfig(string Structure, int PreNum, string Targets, long Seed)
{
    public string Label => $"{Structure}{(Structure == "ms" ? $"/pre{PreNum}" : "")} {Targets} seed {Seed}";
}

/// <summary>One merge of one adapter, measured against the unmerged adapter on held-out text.</summary>
public sealed record MergeBenchRow(MergeBenchConfig Config, string Merge, ComparisonReport HeldOut, double Seconds, double? DistillFirstKl, double? DistillLastKl);

/// <summary>
/// <c>reslora bench merges</c>: the ResLoRA is/ms merges on a pre-trained model (the demo's base) fine-tuned on the demo's
/// held-out task, each adapter merged with bi, bw / A-merge, the least-squares fold and the fold plus distillation,
/// measured on the task's evaluation split (never used for calibration).
/// </summary>
public static class MergeBench
{
    public static IReadOnlyList<MergeBenchConfig> Configs(IReadOnlyList<long> seeds, bool quick) =>
        (from seed in seeds
         from t in quick ? new[] { "q,v" } : new[] { "q,v", "all-linear" }
         from s in quick ? new[] { ("is", 1), ("ms", -1) } : new[] { ("is", 1), ("ms", 1), ("ms", -1) }
         select new MergeBenchConfig(s.Item1, s.Item2, t, seed)).ToList();

    public static IReadOnlyList<MergeBenchRow> Run(string workDir, IReadOnlyList<MergeBenchConfig> configs, int steps, int distillSteps, bool quick, RuntimeOptions runtime, Action<string> log)
    {
        var settings = quick ? DemoBaseSettings.Quick : new DemoBaseSettings();
        string baseDir = DemoBaseModel.Ensure(settings, DemoBaseModel.DefaultCacheRoot(), runtime);
        var (train, eval) = DemoCorpus.FinetuneTask(quick ? 96 : 600, quick ? 16 : 100, 7);
        Directory.CreateDirectory(workDir);
        string trainPath = Path.Combine(workDir, "train.jsonl"), evalPath = Path.Combine(workDir, "eval.jsonl");
        AtomicFile.WriteAllText(trainPath, string.Concat(train.Select(e => JsonSerializer.Serialize(new { prompt = e.Prompt, completion = e.Completion }) + "\n")));
        AtomicFile.WriteAllText(evalPath, string.Concat(eval.Select(e => JsonSerializer.Serialize(new { prompt = e.Prompt, completion = e.Completion }) + "\n")));
        using var probe = torch.tensor(new long[] { 1, 5, 9, 13, 17 }).unsqueeze(0);
        var rows = new List<MergeBenchRow>();
        foreach (var c in configs)
        {
            string adapter = Path.Combine(workDir, $"{c.Structure}-pre{c.PreNum}-{c.Targets.Replace(',', '_')}-s{c.Seed}");
            if (!File.Exists(Path.Combine(adapter, AdapterFolder.ConfigFileName)))
            {
                if (Directory.Exists(adapter)) Directory.Delete(adapter, recursive: true);
                FineTuning.Run(new FineTuneRequest
                {
                    ModelDir = baseDir,
                    DataPath = trainPath,
                    EvalDataPath = evalPath,
                    Method = new MethodSpec
                    {
                        Method = "reslora",
                        Rank = 8,
                        Alpha = 16,
                        Targets = c.Targets == "all-linear" ? ModuleTargets.AllLinear : ModuleTargets.List("q_proj", "v_proj"),
                        Options = new ResLoraOptions(c.Structure, c.PreNum),
                    },
                    OutDir = adapter,
                    SeqLen = 128,
                    Runtime = runtime,
                    Train = new TrainOptions { Steps = steps, BatchSize = 16, LearningRate = 3e-3, WarmupSteps = Math.Max(1, steps / 10), SaveEvery = 0, EvalGenerateExamples = 0, Seed = c.Seed, LogEvery = Math.Max(1, steps / 10) },
                });
            }
            var merges = c.Structure == "is" ? new[] { "bi", "bw", "ls", "ls+distill" } : new[] { "bi", "a", "ls", "ls+distill" };
            foreach (var m in merges)
            {
                var clock = Stopwatch.StartNew();
                var options = new MergeOptions { MergeKind = m == "ls+distill" ? "ls" : m, DistillSteps = m == "ls+distill" ? distillSteps : 0 };
                var report = MergePipeline.Measure(baseDir, adapter, runtime, probe, options);
                var fold = report.Candidates.Single().Fold;
                rows.Add(new MergeBenchRow(c, m, report.HeldOut!, clock.Elapsed.TotalSeconds, fold?.DistillFirstKl, fold?.DistillLastKl));
                log($"{c.Label} {m}: {ModelComparison.Describe(report.HeldOut!)} ({clock.Elapsed.TotalSeconds:0.0} s)");
            }
        }
        return rows;
    }

    /// <summary>A markdown table per merge (mean over configurations of one kind) and every row.</summary>
    public static string Markdown(IReadOnlyList<MergeBenchRow> rows)
    {
        static string F(double v, string fmt) => v.ToString(fmt, CultureInfo.InvariantCulture);
        var sb = new StringBuilder();
        sb.AppendLine("| structure | targets | merge | runs | mean KL (mean, worst) | max \\|Δlogit\\| (worst) | \\|Δloss\\| (mean) | greedy agreement (mean, worst) | seconds (mean) |");
        sb.AppendLine("|---|---|---|---|---|---|---|---|---|");
        foreach (var g in rows.GroupBy(r => (S: r.Config.Structure + (r.Config.Structure == "ms" ? $" pre_num {r.Config.PreNum}" : ""), r.Config.Targets, r.Merge)))
        {
            var h = g.Select(r => r.HeldOut).ToList();
            sb.AppendLine($"| {g.Key.S} | {g.Key.Targets} | {g.Key.Merge} | {h.Count} | {F(h.Average(x => x.MeanKl), "0.####")}, {F(h.Max(x => x.MeanKl), "0.####")} | {F(h.Max(x => x.MaxAbsLogitDiff), "0.##")} | {F(h.Average(x => x.AbsLossDiff), "0.####")} | {F(h.Average(x => x.GreedyAgreement), "0.000")}, {F(h.Min(x => x.GreedyAgreement), "0.000")} | {F(g.Average(r => r.Seconds), "0.0")} |");
        }
        return sb.ToString();
    }
}
