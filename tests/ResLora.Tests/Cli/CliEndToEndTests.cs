using ResLora.Adapters;
using ResLora.Cli;
using ResLora.Demo;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Text;
using TorchSharp;

namespace ResLora.Tests.Cli;

[CollectionDefinition("console", DisableParallelization = true)]
public sealed class ConsoleCollection
{
}

/// <summary>A tiny model written as a Hugging Face folder, trained from the CLI, evaluated, merged and generated from.</summary>
[Collection("console")]
public sealed class CliEndToEndTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string ModelFolder()
    {
        string dir = Path.Combine(_dir, "model");
        var c = TinyModels.Config(vocab: DemoTokenizerFiles.VocabSize);
        using var m = TinyModels.Build(c, seed: 2);
        ResLora.Models.ModelFolder.Save(dir, c, m.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)));
        DemoTokenizerFiles.Write(dir);
        return dir;
    }

    private string Data(string name, int n, int seed)
    {
        var (train, _) = DemoCorpus.FinetuneTask(n, 1, seed);
        string p = Path.Combine(_dir, name);
        File.WriteAllLines(p, train.Select(e => System.Text.Json.JsonSerializer.Serialize(new { Body = e.Prompt, Answer = int.Parse(e.Completion) })));
        return p;
    }


    [Fact]
    public void Train_Eval_Merge_Generate()
    {
        string model = ModelFolder(), data = Data("train.jsonl", 48, 1), evalData = Data("eval.jsonl", 8, 2), adapter = Path.Combine(_dir, "adapter");
        var tpl = new[] { "--prompt-template", "{Body}", "--completion-template", " {Answer}" };
        var (rc, output, err) = CliHarness.Run(new[] { "train", "--model", model, "--data", data, "--eval-data", evalData, "--method", "lora", "--targets", "all-linear", "--steps", "12", "--batch-size", "8", "--lr", "3e-3", "--log-every", "4", "--save-every", "6", "--out", adapter, "--threads", "1" }.Concat(tpl).ToArray());
        Assert.True(rc == 0, err);
        Assert.Contains("done: 12 steps", output);
        foreach (var f in new[] { "adapter_config.json", "adapter_model.safetensors", "metrics.jsonl", "train_summary.json", "loss.png" })
            Assert.True(File.Exists(Path.Combine(adapter, f)), f);
        Assert.Contains("\"peft_type\": \"LORA\"", File.ReadAllText(Path.Combine(adapter, "adapter_config.json")));

        // Re-running into the same folder without --resume is refused; with --resume it finds the run complete.
        var again = CliHarness.Run(new[] { "train", "--model", model, "--data", data, "--out", adapter }.Concat(tpl).ToArray());
        Assert.Equal(2, again.Rc);
        Assert.Contains("--resume", again.Err);

        var ev = CliHarness.Run(new[] { "eval", "--model", model, "--adapter", adapter, "--data", evalData, "--accuracy-examples", "4", "--max-new-tokens", "3" }.Concat(tpl).ToArray());
        Assert.True(ev.Rc == 0, ev.Err);
        Assert.Contains("perplexity", ev.Out);
        Assert.Contains("exact-match accuracy", ev.Out);

        string merged = Path.Combine(_dir, "merged");
        var mg = CliHarness.Run("merge", "--model", model, "--adapter", adapter, "--out", merged);
        Assert.True(mg.Rc == 0, mg.Err);
        Assert.Contains("merged 14 lora modules", mg.Out);

        var g1 = CliHarness.Run("generate", "--model", merged, "--prompt", "What is 3 times 4? Answer:", "--max-new-tokens", "5");
        var g2 = CliHarness.Run("generate", "--model", model, "--adapter", adapter, "--prompt", "What is 3 times 4? Answer:", "--max-new-tokens", "5");
        Assert.True(g1.Rc == 0, g1.Err);
        Assert.Equal(g2.Out, g1.Out);
        Assert.DoesNotContain("What is", g1.Out);

        var insp = CliHarness.Run("inspect", "--model", model);
        Assert.True(insp.Rc == 0, insp.Err);
        Assert.Contains("q_proj", insp.Out);
    }

    [Fact]
    public void RoLora_RotatesTrainsMergesQuantizesAndEvaluates()
    {
        string model = ModelFolder(), data = Data("train.jsonl", 32, 1), adapter = Path.Combine(_dir, "adapter");
        var tpl = new[] { "--prompt-template", "{Body}", "--completion-template", " {Answer}" };
        var (rc, _, err) = CliHarness.Run(new[] { "train", "--model", model, "--data", data, "--method", "rolora", "--rotation-seed", "5", "--steps", "4", "--batch-size", "8", "--lr", "3e-3", "--eval-fraction", "0", "--out", adapter }.Concat(tpl).ToArray());
        Assert.True(rc == 0, err);
        string rotated = Path.Combine(adapter, "rotated-base");
        Assert.Contains("reslora_rotation", File.ReadAllText(Path.Combine(rotated, "config.json")));
        Assert.Contains("\"rotation_signs_sha256\"", File.ReadAllText(Path.Combine(adapter, "adapter_config.json")));
        // On the un-rotated base the adapter is refused; on its rotated base it merges.
        var wrong = CliHarness.Run("merge", "--model", model, "--adapter", adapter, "--out", Path.Combine(_dir, "bad"));
        Assert.Equal(2, wrong.Rc);
        Assert.Contains("not rotated", wrong.Err);
        var mg = CliHarness.Run("merge", "--model", rotated, "--adapter", adapter, "--out", Path.Combine(_dir, "merged"));
        Assert.True(mg.Rc == 0, mg.Err);
        var q = CliHarness.Run("quantize", "--model", Path.Combine(_dir, "merged"), "--wbits", "4", "--abits", "8", "--out", Path.Combine(_dir, "w4a8"));
        Assert.True(q.Rc == 0, q.Err);
        Assert.Contains("reslora_quantization", File.ReadAllText(Path.Combine(_dir, "w4a8", "config.json")));
        var ev = CliHarness.Run(new[] { "eval", "--model", Path.Combine(_dir, "w4a8"), "--data", data, "--accuracy-examples", "0" }.Concat(tpl).ToArray());
        Assert.True(ev.Rc == 0, ev.Err);
        var ev2 = CliHarness.Run(new[] { "eval", "--model", rotated, "--adapter", adapter, "--data", data, "--accuracy-examples", "0", "--wbits", "4", "--abits", "4" }.Concat(tpl).ToArray());
        Assert.True(ev2.Rc == 0, ev2.Err);
        string text = Path.Combine(_dir, "text.jsonl");
        File.WriteAllLines(text, new[] { "{\"text\": \"Tom has 3 apples and gets 4 more.\"}", "{\"text\": \"What is 9 minus 2? Answer: 7\"}" });
        var k = CliHarness.Run("inspect", "--model", rotated, "--kurtosis", "--data", text);
        Assert.True(k.Rc == 0, k.Err);
        Assert.Contains("mlp.down_proj", k.Out);
    }

    [Fact]
    public void RefLora_TrainsFromTheCli_AndMerges()
    {
        string model = ModelFolder(), data = Data("train.jsonl", 32, 1), adapter = Path.Combine(_dir, "adapter");
        var (rc, output, err) = CliHarness.Run("train", "--model", model, "--data", data, "--method", "reflora", "--refactor-warmup", "2", "--targets", "all-linear",
            "--steps", "6", "--batch-size", "8", "--lr", "3e-3", "--eval-fraction", "0", "--out", adapter, "--prompt-template", "{Body}", "--completion-template", " {Answer}");
        Assert.True(rc == 0, err);
        // RefLoRA trains ordinary LoRA weights: saved as peft_type LORA (PEFT loads it) with a note of the refactoring.
        Assert.Contains("\"peft_type\": \"LORA\"", File.ReadAllText(Path.Combine(adapter, "adapter_config.json")));
        Assert.Contains("\"refactoring\": \"reflora\"", File.ReadAllText(Path.Combine(adapter, "reslora_training.json")));
        string res = Path.Combine(_dir, "res");
        var (rc2, _, err2) = CliHarness.Run("train", "--model", model, "--data", data, "--method", "reslora", "--structure", "bs", "--refactor", "full", "--refactor-warmup", "2", "--targets", "q_proj,v_proj",
            "--steps", "5", "--batch-size", "8", "--eval-fraction", "0", "--out", res, "--prompt-template", "{Body}", "--completion-template", " {Answer}");
        Assert.True(rc2 == 0, err2);
        Assert.Contains("\"peft_type\": \"RESLORA\"", File.ReadAllText(Path.Combine(res, "adapter_config.json")));
        Assert.True(File.Exists(Path.Combine(res, "reslora_training.json")));
        var mg = CliHarness.Run("merge", "--model", model, "--adapter", adapter, "--out", Path.Combine(_dir, "merged"));
        Assert.True(mg.Rc == 0, mg.Err);
        var bad = CliHarness.Run("train", "--model", model, "--data", data, "--method", "lora", "--structure", "is", "--out", Path.Combine(_dir, "x"), "--prompt-template", "{Body}", "--completion-template", " {Answer}");
        Assert.Equal(2, bad.Rc);
        Assert.Contains("--structure does not apply", bad.Err);
    }

    private static double Printed(string text, string label)
    {
        var m = System.Text.RegularExpressions.Regex.Match(text, System.Text.RegularExpressions.Regex.Escape(label) + @"\s*([-+0-9.eE]+|NaN|∞|-∞|Infinity)");
        Assert.True(m.Success, $"'{label}' not found in: {text}");
        return double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
    }

    [Theory]
    [InlineData("is", "auto")]
    [InlineData("bs", null)]
    [InlineData("ms", "a")]
    public void ResLoraMerge_AfterCliTraining_WritesAModelWhoseLogitsMatchTheReport(string structure, string? merge)
    {
        string model = ModelFolder(), data = Data("train.jsonl", 32, 1), adapter = Path.Combine(_dir, "adapter"), mergedDir = Path.Combine(_dir, "merged");
        var (rc, _, err) = CliHarness.Run("train", "--model", model, "--data", data, "--method", "reslora", "--structure", structure, "--targets", "q_proj,v_proj",
            "--steps", "6", "--batch-size", "8", "--lr", "3e-3", "--eval-fraction", "0", "--out", adapter, "--prompt-template", "{Body}", "--completion-template", " {Answer}");
        Assert.True(rc == 0, err);
        string cfg = File.ReadAllText(Path.Combine(adapter, "adapter_config.json"));
        Assert.Contains("\"peft_type\": \"RESLORA\"", cfg);
        Assert.Contains($"\"structure\": \"{structure}\"", cfg);
        Assert.Contains("\"input_norm\"", cfg);
        const string probe = "Tom has 3 apples and gets 4 more. How many apples? Answer: 7";
        var args = new List<string> { "merge", "--model", model, "--adapter", adapter, "--out", mergedDir, "--probe", probe };
        if (merge is not null) { args.Add("--merge"); args.Add(merge); }
        var mg = CliHarness.Run(args.ToArray());
        Assert.True(mg.Rc == 0, mg.Err);
        Assert.Contains("merged 4 reslora", mg.Out);
        double reportedMax = Printed(mg.Out, "max |Δ|"), reportedScale = Printed(mg.Out, "largest logit");
        Assert.True(double.IsFinite(reportedMax) && double.IsFinite(reportedScale) && reportedScale > 0, mg.Out);
        if (merge == "auto")
        {
            // Every candidate was measured; the one kept has the smallest reported difference, and it is the one merged.
            double bi = Printed(mg.Err, "merge bi: max |Δlogit| on the probe"), bw = Printed(mg.Err, "merge bw: max |Δlogit| on the probe"), ls = Printed(mg.Err, "merge ls: max |Δlogit| on the probe");
            double min = new[] { bi, bw, ls }.Min();
            Assert.Contains(min == bi ? "(merge bi)" : min == bw ? "(merge bw)" : "(merge ls)", mg.Out);
        }

        // The merged folder, loaded as a plain model, against the unmerged adapter and the bare base on the same probe.
        var runtime = new RuntimeOptions();
        var ids = Prompts.Ids(TokenizerLoader.Load(model), probe).Select(i => (long)i).ToArray();
        using var probeIds = torch.tensor(ids).unsqueeze(0);
        using var mergedModel = ModelSessions.LoadBase(mergedDir, runtime);
        using var unmergedModel = ModelSessions.LoadWithAdapter(model, adapter, runtime);
        using var baseModel = ModelSessions.LoadBase(model, runtime);
        Assert.Empty(AdapterModel.ByModulePath(mergedModel));
        using var merged = mergedModel.forward(probeIds);
        using var unmerged = unmergedModel.forward(probeIds);
        using var bare = baseModel.forward(probeIds);
        double mergeDiff = (merged - unmerged).abs().max().item<float>();
        double adapterEffect = (unmerged - bare).abs().max().item<float>();
        double scale = unmerged.abs().max().item<float>();
        Assert.True(double.IsFinite(mergeDiff) && double.IsFinite(adapterEffect));
        Assert.True(Math.Abs(reportedScale - scale) <= 1e-3 * scale, $"reported largest logit {reportedScale} vs {scale}");
        Assert.True(Math.Abs(reportedMax - mergeDiff) <= 1e-3 * mergeDiff + 1e-6, $"reported max |Δ| {reportedMax} vs measured on the saved folder {mergeDiff}");
        Assert.True(adapterEffect > 1e-4, $"the trained adapter must change the logits ({adapterEffect})");
        if (structure == "bs")
            Assert.True(mergeDiff <= 1e-4 * Math.Max(1, scale), $"bs merges exactly: max |Δlogit| {mergeDiff}");
        else
            Assert.True(mergeDiff < adapterEffect, $"{structure}: the merged model ({mergeDiff}) must be closer to the adapter than the base is ({adapterEffect})");

        var lora = CliHarness.Run("merge", "--model", model, "--adapter", adapter, "--out", Path.Combine(_dir, "m2"), "--merge", "bogus");
        Assert.Equal(2, lora.Rc);
        Assert.Contains("'merge'", lora.Err);
    }

    [Fact]
    public void BadInputs_GetOneLineErrors_AndLeaveNoOutput()
    {
        string model = ModelFolder(), data = Data("train.jsonl", 8, 1);
        string outDir = Path.Combine(_dir, "o");
        (string[] Args, string Expect)[] cases =
        {
            (new[] { "train", "--model", Path.Combine(_dir, "none"), "--data", data, "--out", outDir }, "no such folder"),
            (new[] { "train", "--model", model, "--data", Path.Combine(_dir, "none.jsonl"), "--out", outDir }, "not found"),
            (new[] { "train", "--model", model, "--data", data, "--out", outDir, "--method", "nope" }, "--method 'nope'"),
            (new[] { "train", "--model", model, "--data", data, "--out", outDir, "--targets", "q_prj" }, "q_prj"),
            (new[] { "train", "--model", model, "--data", data, "--out", outDir, "--seq-len", "4096" }, "max_position_embeddings"),
            (new[] { "train", "--model", model, "--data", data, "--out", outDir, "--lr", "-1" }, "--lr"),
            (new[] { "train", "--model", model, "--data", data, "--out", outDir, "--prompt-template", "{Body}", "--completion-template", " {Missing}" }, "'Missing'"),
            (new[] { "generate", "--model", model, "--temperature", "-2" }, "--temperature"),
            (new[] { "train", "--model", model, "--data", data, "--out", outDir, "--dtype", "float16" }, "float16"),
        };
        var tpl = new[] { "--prompt-template", "{Body}", "--completion-template", " {Answer}" };
        foreach (var (args0, expect) in cases)
        {
            var args = args0[0] == "train" && !args0.Contains("--prompt-template") ? args0.Concat(tpl).ToArray() : args0;
            var (rc, _, err) = CliHarness.Run(args);
            Assert.True(rc == 2, $"{string.Join(' ', args)} → rc {rc}: {err}");
            Assert.Contains(expect, err);
            Assert.StartsWith("error: ", err);
            Assert.DoesNotContain("   at ", err);
        }
        Assert.False(File.Exists(Path.Combine(outDir, "adapter_model.safetensors")));
    }
}
