using System.Globalization;
using System.Text.Json;
using ResLora.IO;
using ResLora.IO.Json;
using ResLora.Pipelines;

namespace ResLora.Demo;

/// <summary>One adapter's multiple-choice score on the demo's held-out questions.</summary>
/// <param name="Label">The method (or "base").</param>
/// <param name="Acc">Share of questions whose right answer has the highest log-likelihood.</param>
/// <param name="Stderr">Its standard error as lm-eval reports it.</param>
/// <param name="AccNorm">The same with each choice's log-likelihood divided by its length in characters.</param>
/// <param name="Questions">Questions scored.</param>
public sealed record DemoChoiceScore(string Label, double Acc, double Stderr, double AccNorm, int Questions);

/// <summary>
/// The demo's held-out word problems as a 4-way multiple-choice task (the right number and three near misses), scored by
/// log-likelihood the way <c>reslora eval --tasks</c> scores ARC: written as an ordinary task file and JSONL a user can
/// pass to <c>eval --tasks FILE --task-data DIR</c>.
/// </summary>
public static class DemoMultipleChoice
{
    public const string TaskFile = "multiple-choice-task.json";
    public const string DataFile = "multiple-choice.jsonl";

    /// <summary>Writes the task file and its data into <paramref name="dataDir"/>; returns the task file's path.</summary>
    public static string Write(string dataDir, IReadOnlyList<DemoExample> eval, int seed)
    {
        Directory.CreateDirectory(dataDir);
        var lines = new List<string>();
        for (int i = 0; i < eval.Count; i++)
        {
            if (!int.TryParse(eval[i].Completion.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int n)) continue;
            var rng = new Random(seed * 1000 + i);
            var near = new[] { n + 1, n - 1, n + 2, n - 2, n + 10, n - 10, 2 * n }.Where(x => x > 0 && x != n).Distinct().OrderBy(_ => rng.Next()).Take(3).ToList();
            int gold = rng.Next(near.Count + 1);
            near.Insert(gold, n);
            var choices = near.Select(x => x.ToString(CultureInfo.InvariantCulture)).ToArray();
            lines.Add(JsonSerializer.Serialize(new { prompt = eval[i].Prompt, choices, label = gold }, ReportJson.Line));
        }
        AtomicFile.WriteAllText(Path.Combine(dataDir, DataFile), string.Concat(lines.Select(l => l + "\n")));
        string task = Path.Combine(dataDir, TaskFile);
        AtomicFile.WriteAllText(task, JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["name"] = "demo_multiple_choice",
            ["description"] = "The demo's held-out word problems: the right number and three near misses, scored by log-likelihood after the prompt.",
            ["output_type"] = "multiple_choice",
            ["data"] = DataFile,
            ["choices_field"] = "choices",
            ["context_template"] = "{prompt}",
            ["gold_field"] = "label",
        }, ReportJson.Indented));
        return task;
    }

    /// <summary>Scores the base model and each adapter (unmerged, any method) on the task.</summary>
    public static List<DemoChoiceScore> Score(string baseDir, string taskPath, IEnumerable<(string Label, string? AdapterDir)> adapters, RuntimeOptions runtime)
    {
        var scores = new List<DemoChoiceScore>();
        foreach (var (label, dir) in adapters)
        {
            var res = TaskEvalPipeline.Run(new TaskEvalRequest
            {
                ModelDir = baseDir,
                Tasks = new[] { taskPath },
                DataRoot = Path.GetDirectoryName(taskPath),
                AdapterDir = dir,
                Runtime = runtime,
            });
            var acc = res.Metrics.Single(m => m.Metric == "acc");
            var norm = res.Metrics.Single(m => m.Metric == "acc_norm");
            scores.Add(new DemoChoiceScore(label, acc.Value, acc.Stderr, norm.Value, acc.Count));
        }
        return scores;
    }
}
