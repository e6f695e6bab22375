using System.Text.Json.Nodes;
using ResLora.Tests.Infrastructure;
using Xunit.Abstractions;

namespace ResLora.Tests.Cli;

/// <summary>
/// ResLoRA's shortcut annealing from the command line (issue 31): the record it writes, the exact merge and export of an
/// adapter annealed to weight 0, a resume in the middle of the window, and the refusals naming the flag.
/// </summary>
[Collection("console")]
public sealed class AnnealCliTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-anneal-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Model() => Directory.Exists(Path.Combine(_dir, "model")) ? Path.Combine(_dir, "model") : CliHarness.ModelFolder(Path.Combine(_dir, "model"));

    private string Data() => File.Exists(Path.Combine(_dir, "train.jsonl")) ? Path.Combine(_dir, "train.jsonl") : CliHarness.Data(Path.Combine(_dir, "train.jsonl"), 24, 1);

    private (int Rc, string Out, string Err) Train(string outName, int steps, params string[] extra) =>
        CliHarness.Run(new[] { "train", "--model", Model(), "--data", Data(), "--method", "reslora", "--targets", "q_proj,v_proj", "--steps", steps.ToString(System.Globalization.CultureInfo.InvariantCulture),
                "--batch-size", "4", "--lr", "3e-3", "--log-every", "1", "--eval-generate", "0", "--eval-fraction", "0", "--out", Path.Combine(_dir, outName), "--threads", "1" }
            .Concat(CliHarness.Templates).Concat(extra).ToArray());

    private static double Printed(string text, string label)
    {
        var m = System.Text.RegularExpressions.Regex.Match(text, System.Text.RegularExpressions.Regex.Escape(label) + @"\s*([-+0-9.eE]+)");
        Assert.True(m.Success, $"'{label}' not found in: {text}");
        return double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
    }

    [Theory]
    [InlineData("is", "linear")]
    [InlineData("ms", "cosine")]
    public void Annealed_WritesTheRecord_AndMergesAndExportsExactly(string structure, string schedule)
    {
        var (rc, _, err) = Train("a", 5, "--structure", structure, "--anneal-shortcuts", "3", "--anneal-schedule", schedule);
        Assert.True(rc == 0, err);
        string adapter = Path.Combine(_dir, "a");
        var anneal = JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!["reslora_anneal"]!;
        Assert.Equal(3, anneal["steps"]!.GetValue<int>());
        Assert.Equal(schedule, anneal["schedule"]!.GetValue<string>());
        Assert.Equal(0.0, anneal["final_weight"]!.GetValue<double>());

        const string probe = "Tom has 3 apples and gets 4 more. How many apples? Answer: 7";
        var mg = CliHarness.Run("merge", "--model", Model(), "--adapter", adapter, "--out", Path.Combine(_dir, "merged"), "--probe", probe, "--threads", "1");
        Assert.True(mg.Rc == 0, mg.Err);
        Assert.Contains("exact (shortcuts annealed to 0)", mg.Out);
        double maxDiff = Printed(mg.Out, "max |Δ|");
        output.WriteLine($"{structure}/{schedule}: merged vs unmerged max |Δlogit| {maxDiff:G3}");
        Assert.True(maxDiff < 1e-4, mg.Out);
        Assert.Contains("exact (shortcuts annealed to 0)", File.ReadAllText(Path.Combine(_dir, "merged", "merge_report.json")));

        var ls = CliHarness.Run("merge", "--model", Model(), "--adapter", adapter, "--out", Path.Combine(_dir, "merged-ls"), "--merge", "ls", "--threads", "1");
        Assert.Equal(2, ls.Rc);
        Assert.Contains("annealed to weight 0", ls.Err);

        var ex = CliHarness.Run("export", "--model", Model(), "--adapter", adapter, "--as", "lora", "--out", Path.Combine(_dir, "lora"), "--threads", "1");
        Assert.True(ex.Rc == 0, ex.Err);
        Assert.Contains(": exact (shortcuts annealed to 0", ex.Out);
        var report = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "lora", "export_report.json")))!;
        Assert.Equal("exact", report["mode"]!.GetValue<string>());
        Assert.Equal("annealed", report["route"]!.GetValue<string>());
    }

    private static List<double> Losses(string dir) =>
        File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).Where(m => m["loss"] is not null).Select(m => m["loss"]!.GetValue<double>()).ToList();

    [Fact]
    public void ResumeMidAnneal_EqualsTheUninterruptedRun_AndAChangedScheduleIsRefused()
    {
        string[] flags = { "--structure", "is", "--anneal-shortcuts", "4", "--anneal-schedule", "cosine" };
        var whole = Train("whole", 4, flags);
        Assert.True(whole.Rc == 0, whole.Err);

        ResLora.Cli.TrainVerb.InterruptHook = cts => cts.Cancel(); // stop after step 1: inside the window (w = ½(1 + cos(π/4)))
        (int Rc, string Out, string Err) stopped;
        try { stopped = Train("stopped", 4, flags); }
        finally { ResLora.Cli.TrainVerb.InterruptHook = null; }
        Assert.Equal(130, stopped.Rc);
        string outDir = Path.Combine(_dir, "stopped");
        Assert.Equal(1, ResLora.Training.TrainCheckpoint.ReadState(ResLora.Training.TrainCheckpoint.Find(outDir)!).Step);

        var changed = Train("stopped", 4, "--structure", "is", "--anneal-shortcuts", "3", "--anneal-schedule", "cosine", "--resume");
        Assert.Equal(2, changed.Rc);
        Assert.Contains("reslora_anneal", changed.Err);

        var resumed = Train("stopped", 4, flags.Append("--resume").ToArray());
        Assert.True(resumed.Rc == 0, resumed.Err);
        Assert.Equal(4, Losses(Path.Combine(_dir, "whole")).Count);
        Assert.Equal(Losses(Path.Combine(_dir, "whole")), Losses(outDir));
        Assert.Equal(File.ReadAllBytes(Path.Combine(_dir, "whole", "adapter_model.safetensors")), File.ReadAllBytes(Path.Combine(outDir, "adapter_model.safetensors")));
        Assert.Equal(0.0, JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "adapter_config.json")))!["reslora_anneal"]!["final_weight"]!.GetValue<double>());
    }

    [Fact]
    public void ComposesWithRefactoringAndAPackedBase()
    {
        var (rc, _, err) = Train("composed", 4, "--structure", "bs", "--refactor", "full", "--refactor-warmup", "1", "--base-bits", "8", "--anneal-shortcuts", "2");
        Assert.True(rc == 0, err);
        string adapter = Path.Combine(_dir, "composed");
        Assert.Equal(0.0, JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!["reslora_anneal"]!["final_weight"]!.GetValue<double>());
        Assert.True(File.Exists(Path.Combine(adapter, "reslora_training.json")));
        var mg = CliHarness.Run("merge", "--model", Model(), "--adapter", adapter, "--out", Path.Combine(_dir, "merged"), "--threads", "1");
        Assert.True(mg.Rc == 0, mg.Err);
        Assert.Contains("exact (shortcuts annealed to 0)", mg.Out);
        output.WriteLine($"bs + refactor + int8 base: merged vs unmerged max |Δlogit| {Printed(mg.Out, "max |Δ|"):G3}");
        Assert.True(Printed(mg.Out, "max |Δ|") < 1e-4, mg.Out);
    }

    [Theory]
    [InlineData("0", null, "--anneal-shortcuts 0")]
    [InlineData("-2", null, "--anneal-shortcuts -2")]
    [InlineData("9", null, "--anneal-shortcuts 9 is longer than the run (4 optimizer steps)")]
    [InlineData("2", "exponential", "--anneal-schedule")]
    [InlineData(null, "cosine", "--anneal-schedule")]
    public void BadValues_Exit2_NamingTheFlag(string? steps, string? schedule, string expected)
    {
        var extra = new List<string> { "--structure", "is" };
        if (steps is not null) extra.AddRange(new[] { "--anneal-shortcuts", steps });
        if (schedule is not null) extra.AddRange(new[] { "--anneal-schedule", schedule });
        var (rc, _, err) = Train("bad", 4, extra.ToArray());
        Assert.Equal(2, rc);
        Assert.Contains(expected, err);
    }
}

public sealed class NluBenchAnnealLabelTests
{
    [Theory]
    [InlineData("reslora-is+anneal40", "is", 40, "linear")]
    [InlineData("reslora-ms+anneal25cos", "ms", 25, "cosine")]
    public void AnnealSuffix_SetsStepsAndSchedule_AndKeepsTheStructure(string label, string structure, int steps, string schedule)
    {
        var spec = ResLora.Demo.NluBench.SpecFor(label, new ResLora.Demo.NluSettings());
        var o = Assert.IsType<ResLora.Adapters.ResLoraOptions>(spec.Options);
        Assert.Equal("reslora-" + structure, spec.Method);
        Assert.Equal(structure, o.Structure);
        Assert.Equal(steps, o.AnnealSteps);
        Assert.Equal(schedule, o.AnnealSchedule);
        // ms keeps the paper's GLUE setting.
        Assert.Equal(structure == "ms" ? 4 : null, o.PreNum);
    }

    [Theory]
    [InlineData("lora+anneal40")]
    [InlineData("reslora-bs+anneal40")]
    [InlineData("reslora-is+anneal")]
    [InlineData("reslora-is+warm40")]
    public void AnnealSuffix_OnlyOnIsAndMs_WithAStepCount(string label)
    {
        var e = Assert.Throws<ResLora.UserInputException>(() => ResLora.Demo.NluBench.SpecFor(label, new ResLora.Demo.NluSettings()));
        Assert.Contains(label, e.Message);
        Assert.Contains("+annealK", e.Message);
    }
}
