using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using ResLora.Adapters;
using ResLora.Cli;
using ResLora.IO;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Tests.Pipelines;
using ResLora.Training;

namespace ResLora.Tests.Cli;

/// <summary>
/// Issue 27: <c>generate --prompts</c> with one adapter folder applies it; <c>eval --adapter NAME=DIR</c> evaluates the
/// named adapter; causal-LM <c>eval --predictions</c>; eval prints accuracy as a percentage as train does; and
/// <c>generate --stop</c> / <c>--repetition-penalty</c>.
/// </summary>
[Collection("console")]
public sealed class GenerateEvalCliTests : IClassFixture<MultiAdapterFixture>
{
    private static readonly string[] Prompts = { "the cat sat", "once upon a time", "hello" };

    private readonly MultiAdapterFixture _f;

    public GenerateEvalCliTests(MultiAdapterFixture fixture) => _f = fixture;

    private string WriteFile(string name, IEnumerable<string> lines)
    {
        string p = Path.Combine(_f.Root, Guid.NewGuid().ToString("N") + "-" + name);
        File.WriteAllLines(p, lines);
        return p;
    }

    private string Generate(params string[] extra)
    {
        var args = new[] { "generate", "--model", _f.ModelDir, "--threads", "1" }.Concat(extra.Contains("--max-new-tokens") ? extra : extra.Concat(new[] { "--max-new-tokens", "8" }));
        var (rc, output, err) = CliHarness.Run(args.ToArray());
        Assert.True(rc == 0, err);
        return output.TrimEnd('\n');
    }

    [Fact]
    public void GeneratePrompts_WithOneAdapterFolder_AppliesItAndReportsItsPath()
    {
        string adapter = _f.Dir("lora");
        string file = WriteFile("prompts.jsonl", Prompts.Select(p => JsonSerializer.Serialize(new { prompt = p })));
        string batch = Generate("--prompts", file, "--adapter", adapter);
        var lines = batch.Split('\n');
        Assert.Equal(Prompts.Length, lines.Length);
        bool differsFromBase = false;
        for (int i = 0; i < Prompts.Length; i++)
        {
            var root = JsonDocument.Parse(lines[i]).RootElement;
            Assert.Equal(adapter, root.GetProperty("adapter").GetString());
            string withAdapter = Generate("--prompt", Prompts[i], "--adapter", adapter);
            Assert.Equal(withAdapter, root.GetProperty("output").GetString());
            differsFromBase |= Generate("--prompt", Prompts[i]) != withAdapter;
        }
        Assert.True(differsFromBase, "the adapter should change at least one answer, or this test proves nothing");
    }

    private string EvalData(bool withAdapterField = false) => WriteFile("eval.jsonl", Prompts.Select(p => withAdapterField
        ? JsonSerializer.Serialize(new { prompt = p, completion = " and then", adapter = "x" })
        : JsonSerializer.Serialize(new { prompt = p, completion = " and then" })));

    private string Eval(params string[] extra)
    {
        var (rc, output, err) = CliHarness.Run(new[] { "eval", "--model", _f.ModelDir, "--threads", "1", "--accuracy-examples", "0" }.Concat(extra).ToArray());
        Assert.True(rc == 0, err);
        return output.Trim();
    }

    [Fact]
    public void EvalNamedAdapters_RecordsNameNone_EachAdapterIsEvaluatedOnEveryRecordUnderItsName()
    {
        string data = EvalData();
        string lora = Eval("--data", data, "--adapter", _f.Dir("lora"));
        string dora = Eval("--data", data, "--adapter", _f.Dir("dora"));
        string base_ = Eval("--data", data);
        Assert.NotEqual(base_, lora);
        Assert.Equal($"x: {lora}", Eval("--data", data, "--adapter", $"x={_f.Dir("lora")}"));
        Assert.Equal(new[] { $"x: {lora}", $"y: {dora}" }, Eval("--data", data, "--adapter", $"x={_f.Dir("lora")}", "--adapter", $"y={_f.Dir("dora")}").Split('\n'));
        // Records that name their adapter are still routed (x for all of them here), with the total after.
        Assert.Equal(new[] { $"x: {lora}", $"all: {lora}" }, Eval("--data", EvalData(withAdapterField: true), "--adapter", $"x={_f.Dir("lora")}").Split('\n'));
    }

    [Fact]
    public void EvalPredictions_CausalLm_WritesPromptReferenceGeneratedAndCorrect_CutAtTheFirstNewline()
    {
        string adapter = _f.Dir("lora");
        string data = WriteFile("qa.jsonl", Prompts.Select((p, i) => JsonSerializer.Serialize(new { prompt = p, completion = i == 0 ? Generate("--prompt", p, "--adapter", adapter, "--max-new-tokens", "6").Split('\n')[0] : " 12" })));
        string outDir = Path.Combine(_f.Root, Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(outDir);
        string preds = Path.Combine(outDir, "preds.jsonl");
        var (rc, output, err) = CliHarness.Run("eval", "--model", _f.ModelDir, "--adapter", adapter, "--data", data, "--max-new-tokens", "6", "--predictions", preds, "--threads", "1");
        Assert.True(rc == 0, err);
        Assert.Equal(new[] { "preds.jsonl" }, Directory.GetFiles(outDir).Select(Path.GetFileName)); // no temp file left
        var lines = File.ReadAllLines(preds);
        Assert.Equal(Prompts.Length, lines.Length);
        int correct = 0;
        for (int i = 0; i < lines.Length; i++)
        {
            var root = JsonDocument.Parse(lines[i]).RootElement;
            Assert.Equal(i, root.GetProperty("index").GetInt32());
            Assert.Equal(Prompts[i], root.GetProperty("prompt").GetString());
            string generated = root.GetProperty("generated").GetString()!;
            string reference = root.GetProperty("reference").GetString()!;
            // The rule: the greedy answer, cut at EOS and (for a one-line reference) the first newline, trimmed, equals the reference trimmed.
            Assert.Equal(Generate("--prompt", Prompts[i], "--adapter", adapter, "--max-new-tokens", "6").Split('\n')[0], generated);
            bool ok = root.GetProperty("correct").GetBoolean();
            Assert.Equal(generated.Trim() == reference.Trim(), ok);
            if (ok) correct++;
        }
        Assert.True(JsonDocument.Parse(lines[0]).RootElement.GetProperty("correct").GetBoolean());
        Assert.Contains($"exact-match accuracy {((double)correct / lines.Length).ToString("P1", System.Globalization.CultureInfo.InvariantCulture)} on {lines.Length}", output);
        Assert.Contains($"predictions: {Path.GetFullPath(preds)}", output);
    }

    [Fact]
    public void EvalClassifier_PrintsAccuracyAsAPercentageAsTrainDoes()
    {
        string dir = Path.Combine(_f.Root, Guid.NewGuid().ToString("N"));
        var (model, _, _) = TinyEncoders.WriteFolder(Path.Combine(dir, "bert"), seed: 4);
        string data = WriteFile("cls.jsonl", new[] { "good", "bad", "good", "bad" }.Select(w => new JsonObject { ["text"] = $"the movie was {w} .", ["label"] = w == "good" ? "pos" : "neg" }.ToJsonString()));
        string outDir = Path.Combine(dir, "adapter");
        FineTuning.Run(new FineTuneRequest
        {
            ModelDir = model,
            DataPath = data,
            EvalFraction = 0,
            Method = new MethodSpec { Method = "lora", Rank = 2, Alpha = 4, Targets = ModuleTargets.AllLinear },
            Train = new TrainOptions { Steps = 1, BatchSize = 4, SaveEvery = 0, LogEvery = 1 },
            OutDir = outDir,
        });
        var (rc, output, err) = CliHarness.Run("eval", "--model", model, "--adapter", outDir, "--data", data);
        Assert.True(rc == 0, err);
        Assert.Matches(new Regex(@"accuracy \d{1,3}\.\d %"), output);
        Assert.DoesNotMatch(new Regex(@"accuracy 0\.\d{4}"), output);
    }

    [Fact]
    public void GenerateStop_CutsTheOutputBeforeTheStopString()
    {
        string full = Generate("--prompt", "the cat sat", "--max-new-tokens", "12");
        Assert.True(full.Length >= 6, $"'{full}' is too short to cut");
        string stop = full.Substring(3, 2);
        string expected = full[..full.IndexOf(stop, StringComparison.Ordinal)];
        Assert.Equal(expected, Generate("--prompt", "the cat sat", "--max-new-tokens", "12", "--stop", stop));
        Assert.Equal(expected, Generate("--prompt", "the cat sat", "--max-new-tokens", "12", "--stop", "never-in-the-output", "--stop", stop));
        // The same rule in a batch.
        string file = WriteFile("p.jsonl", new[] { JsonSerializer.Serialize(new { prompt = "the cat sat" }) });
        var line = JsonDocument.Parse(Generate("--prompts", file, "--max-new-tokens", "12", "--stop", stop)).RootElement;
        Assert.Equal(expected, line.GetProperty("output").GetString());
    }

    [Fact]
    public void GenerateRepetitionPenalty_OneIsOff_BadValuesNameTheFlag()
    {
        Assert.Equal(Generate("--prompt", "the cat sat"), Generate("--prompt", "the cat sat", "--repetition-penalty", "1"));
        // A batch (left-padded rows of different lengths) penalizes what each prompt alone does.
        string file = WriteFile("p.jsonl", Prompts.Select(p => JsonSerializer.Serialize(new { prompt = p })));
        var lines = Generate("--prompts", file, "--max-new-tokens", "16", "--repetition-penalty", "3").Split('\n');
        bool changed = false;
        for (int i = 0; i < Prompts.Length; i++)
        {
            string alone = Generate("--prompt", Prompts[i], "--max-new-tokens", "16", "--repetition-penalty", "3");
            Assert.Equal(alone, JsonDocument.Parse(lines[i]).RootElement.GetProperty("output").GetString());
            changed |= alone != Generate("--prompt", Prompts[i], "--max-new-tokens", "16");
        }
        Assert.True(changed, "a penalty of 3 should change at least one answer");
        foreach (var bad in new[] { "0", "-1.5", "NaN" })
        {
            var (rc, _, err) = CliHarness.Run("generate", "--model", _f.ModelDir, "--prompt", "x", "--repetition-penalty", bad);
            Assert.Equal(CliErrors.UserErrorExit, rc);
            Assert.Contains("--repetition-penalty", err);
            Assert.DoesNotContain("   at ", err);
        }
        var empty = CliHarness.Run("generate", "--model", _f.ModelDir, "--prompt", "x", "--stop", "");
        Assert.Equal(CliErrors.UserErrorExit, empty.Rc);
        Assert.Contains("--stop", empty.Err);
    }
}
