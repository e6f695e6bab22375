using ResLora.Cli;
using ResLora.Tests.Infrastructure;

namespace ResLora.Tests.Cli;

/// <summary>End to end through the CLI: `demo --quick` pre-trains, fine-tunes, compares, merges and generates.</summary>
[Collection("console")]
public sealed class DemoQuickTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-demo-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void DemoQuick_ProducesTheTable_ReportPlot_AndAMergedModel()
    {
        string outDir = Path.Combine(_dir, "out");
        int rc = CliApp.Run(new[] { "demo", "--quick", "--out", outDir, "--cache", Path.Combine(_dir, "cache"), "--threads", "1" });
        Assert.Equal(0, rc);
        string report = File.ReadAllText(Path.Combine(outDir, "report.md"));
        Assert.Contains("| lora |", report);
        Assert.True(new FileInfo(Path.Combine(outDir, "loss.png")).Length > 1000);
        Assert.True(File.Exists(Path.Combine(outDir, "merged", "model.safetensors")));
        Assert.True(File.Exists(Path.Combine(outDir, "merged", "tokenizer.json")));
        Assert.True(File.Exists(Path.Combine(outDir, "runs", "lora", "lr3e-3_alpha16", "adapter_model.safetensors")));
        var results = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "results.json")));
        var methods = results.RootElement.EnumerateArray().Select(r => r.GetProperty("method").GetString()).ToList();
        Assert.Contains("reslora-is", methods);
        Assert.Contains("reslora-bs", methods);
        Assert.Contains("ia3", methods); // a registered method joins the demo with no change here
        foreach (var row in results.RootElement.EnumerateArray())
        {
            double diff = row.GetProperty("merge_max_abs_diff").GetDouble();
            double kl = row.GetProperty("merge_heldout_mean_kl").GetDouble();
            string m = row.GetProperty("method").GetString()!;
            // Exact merges (LoRA, DoRA, ResLoRA-bs) agree to float rounding; is/ms merges are approximations, measured
            // on held-out text, and --merge auto tried the least-squares fold among them.
            if (m is "lora" or "dora" or "reslora-bs") { Assert.True(diff < 1e-3, row.ToString()); Assert.True(Math.Abs(kl) < 1e-6, row.ToString()); }
            else Assert.True(double.IsFinite(diff) && double.IsFinite(kl) && kl > -1e-6, row.ToString());
            if (m is "reslora-is" or "reslora-ms") Assert.Contains("(merge ", row.GetProperty("merge").GetString());
        }
        // The merged model answers a handful of held-out questions, each marked, with the accuracy.
        Assert.Matches(@"The merged model on 5 held-out questions: \*\*\d of 5 right", report);
        Assert.Equal(5, System.Text.RegularExpressions.Regex.Matches(report, @"\| (right|wrong) \|").Count);
        Assert.True(File.Exists(Path.Combine(outDir, "merged", "merge_report.json")));
        // The multiple-choice table: the base model and every method, acc ± stderr, from a task file a user can rerun.
        Assert.Contains("## Multiple choice", report);
        Assert.Matches(@"\| base \| \d+\.\d ± \d+\.\d \| \d+\.\d \|", report);
        Assert.Matches(@"\| reslora-is \| \d+\.\d ± \d+\.\d \| \d+\.\d \|", report);
        string mcTask = Path.Combine(outDir, "data", "multiple-choice-task.json");
        var (mcRc, mcOut, mcErr) = CliHarness.Run("eval", "--model", Path.Combine(outDir, "merged"), "--tasks", mcTask, "--limit", "3");
        Assert.True(mcRc == 0, mcErr);
        Assert.Matches(@"\| demo_multiple_choice \| base \| acc \| \d+\.\d \| \d+\.\d \| 3 \|", mcOut);
        // The preference part: DPO from the LoRA and ResLoRA adapters, a row each, pairs a user can pass to train.
        Assert.Contains("## Preference tuning (DPO)", report);
        Assert.Matches(@"\| lora \| \d+ ?% \| \d+ ?% \| \d+ ?% \| \d+ ?% \| \d+ ?% \| -?\d+\.\d{3} \|", report);
        Assert.Matches(@"\| reslora-is \| \d+ ?% \| \d+ ?% \| \d+ ?% \| \d+ ?% \| \d+ ?% \| -?\d+\.\d{3} \|", report);
        Assert.True(File.Exists(Path.Combine(outDir, "runs-preference", "reslora-bs", "adapter_model.safetensors")));
        Assert.Contains("\"chosen\"", File.ReadLines(Path.Combine(outDir, "data", "preference-train-lora.jsonl")).First());
    }
}
