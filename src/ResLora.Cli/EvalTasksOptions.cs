using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using ResLora.IO;
using ResLora.Pipelines;
using ResLora.Scoring.Tasks;

namespace ResLora.Cli;

/// <summary><c>reslora eval --tasks</c>: benchmark tasks (multiple choice by log-likelihood, generate and extract) for one or several adapters.</summary>
internal sealed class EvalTasksOptions
{
    public Option<string?> Tasks { get; } = new("--tasks") { Description = $"Comma-separated benchmark tasks (built-in names or task files; 'list' prints them): multiple choice scored by log-likelihood as lm-evaluation-harness does (acc, acc_norm with stderr), or generate-and-extract as LLM-Adapters does. Built in: {string.Join(", ", TaskLibrary.Names)}. With --tasks, --data is optional (one task's own data file)." };
    public Option<string?> TaskData { get; } = new(TaskLibrary.DataFlag) { Description = "The folder with the tasks' test sets (ARC-Easy/test.json, boolq/test.json, ...: LLM-Adapters' dataset folder). Nothing is downloaded." };
    public Option<int> NumFewshot { get; } = new("--num-fewshot") { Description = "Examples (with their answers) before each question, drawn from the task's other records with --fewshot-seed.", DefaultValueFactory = _ => 0 };
    public Option<int> FewshotSeed { get; } = new("--fewshot-seed") { Description = "Seed of the few-shot draw.", DefaultValueFactory = _ => 1234 };
    public Option<int?> Limit { get; } = new("--limit") { Description = "Score only the first N questions of each task." };
    public Option<int?> MaxLength { get; } = new("--max-length") { Description = "Longest input of a log-likelihood forward in tokens, cut from the left as lm-eval does (default: the model's max_position_embeddings)." };
    public Option<string?> Output { get; } = new("--output") { Description = "Write the results (metric, stderr and count per task and adapter, and the settings) as JSON to this file." };
    public Option<bool> PerChoice { get; } = new("--per-choice-forwards") { Description = "Score every choice as its own context + choice row (lm-eval's way) instead of forwarding each question's context once and reusing its KV cache; the numbers agree to float32 rounding, this is slower." };

    public void AddTo(Command cmd)
    {
        foreach (var o in new Option[] { Tasks, TaskData, NumFewshot, FewshotSeed, Limit, MaxLength, Output, PerChoice }) cmd.Options.Add(o);
    }

    public bool Given(ParseResult r) => r.GetValue(Tasks) is not null;

    /// <summary><c>--tasks list</c>: each built-in task, its kind and its data file under --task-data.</summary>
    public static int List()
    {
        foreach (var n in TaskLibrary.Names)
        {
            var t = TaskLibrary.Load(n);
            Console.Out.WriteLine($"{n,-16} {(t.OutputType == TaskOutputType.MultipleChoice ? "multiple choice" : "generate"),-16} {t.Data}");
        }
        return 0;
    }

    /// <summary>Runs the tasks and prints the table; the settings shared with plain eval come in <paramref name="shared"/>.</summary>
    public int Run(ParseResult r, TaskEvalRequest shared, string? predictionsPath)
    {
        var names = r.GetValue(Tasks)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var req = shared with
        {
            Tasks = names,
            DataRoot = r.GetValue(TaskData),
            NumFewshot = r.GetValue(NumFewshot),
            FewshotSeed = r.GetValue(FewshotSeed),
            Limit = r.GetValue(Limit),
            MaxLength = r.GetValue(MaxLength),
            SharedContext = !r.GetValue(PerChoice),
        };
        var res = TaskEvalPipeline.Run(req, m => Console.Error.WriteLine(m), w => Console.Error.WriteLine($"warning: {w}"));
        Console.Out.Write(Table(res));
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{res.Predictions.Count} answers in {res.Seconds:0.00} s (loading {res.LoadSeconds:0.0} s)"));
        if (r.GetValue(Output) is { } output)
        {
            AtomicFile.WriteAllText(output, ResultsJson(res, req).ToJsonString(IO.Json.ReportJson.Indented));
            Console.Out.WriteLine($"results: {Path.GetFullPath(output)}");
        }
        if (predictionsPath is not null)
        {
            var sb = new StringBuilder();
            foreach (var p in res.Predictions) sb.Append(JsonSerializer.Serialize(p, PredictionJson)).Append('\n');
            AtomicFile.WriteAllText(predictionsPath, sb.ToString());
            Console.Out.WriteLine($"predictions: {Path.GetFullPath(predictionsPath)}");
        }
        return 0;
    }

    private static readonly JsonSerializerOptions PredictionJson = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>One row per task, adapter and metric, values in percent as lm-eval's table prints them.</summary>
    public static string Table(TaskEvalResult res)
    {
        var sb = new StringBuilder("| task | adapter | metric | value | ± stderr | n |\n|---|---|---|---|---|---|\n");
        foreach (var m in res.Metrics)
            sb.Append(CultureInfo.InvariantCulture, $"| {m.Task} | {m.Adapter} | {m.Metric} | {m.Value * 100:0.0} | {m.Stderr * 100:0.0} | {m.Count} |\n");
        return sb.ToString();
    }

    /// <summary>lm-eval's results layout (<c>results.TASK.acc,none</c>), one block per adapter, and the settings.</summary>
    public static JsonObject ResultsJson(TaskEvalResult res, TaskEvalRequest req)
    {
        var adapters = new JsonObject();
        foreach (var label in res.Adapters)
        {
            var results = new JsonObject();
            foreach (var g in res.Metrics.Where(m => m.Adapter == label).GroupBy(m => m.Task))
            {
                var t = new JsonObject();
                foreach (var m in g)
                {
                    t[$"{m.Metric},none"] = m.Value;
                    t[$"{m.Metric}_stderr,none"] = m.Stderr;
                }
                t["samples"] = g.First().Count;
                results[g.Key] = t;
            }
            adapters[label] = new JsonObject { ["results"] = results };
        }
        return new JsonObject
        {
            ["model"] = Path.GetFullPath(req.ModelDir),
            ["adapters"] = adapters,
            ["config"] = new JsonObject
            {
                ["tasks"] = new JsonArray(req.Tasks.Select(t => (JsonNode?)t).ToArray()),
                ["num_fewshot"] = req.NumFewshot,
                ["fewshot_seed"] = req.FewshotSeed,
                ["limit"] = req.Limit,
                ["shared_context"] = req.SharedContext,
                ["wbits"] = req.Quantize.WBits,
                ["abits"] = req.Quantize.ABits,
            },
            ["seconds"] = Math.Round(res.Seconds, 3),
            ["load_seconds"] = Math.Round(res.LoadSeconds, 3),
        };
    }
}
