using System.Text.Json;
using System.Text.Json.Nodes;
using ResLora.Adapters;
using ResLora.IO;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.Cli;

/// <summary>
/// The train flags users of PEFT, LLaMA-Factory and mlx-lm look for (issue 27): --train-on-prompt, --modules-to-save,
/// --layers-to-transform, each driven through the CLI on a tiny model and checked in what it writes and loads.
/// </summary>
[Collection("console")]
public sealed class TrainFlagsCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-trainflags-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Model() => Directory.Exists(Path.Combine(_dir, "model")) ? Path.Combine(_dir, "model") : CliHarness.ModelFolder(Path.Combine(_dir, "model"));

    private string Data() => File.Exists(Path.Combine(_dir, "train.jsonl")) ? Path.Combine(_dir, "train.jsonl") : CliHarness.Data(Path.Combine(_dir, "train.jsonl"), 24, 1);

    private (int Rc, string Out, string Err) Train(string outName, params string[] extra) =>
        CliHarness.Run(new[] { "train", "--model", Model(), "--data", Data(), "--steps", extra.Contains("--steps") ? extra[Array.IndexOf(extra, "--steps") + 1] : "3", "--batch-size", "4", "--lr", "3e-3", "--log-every", "1", "--eval-generate", "0", "--out", Path.Combine(_dir, outName), "--threads", "1" }
            .Concat(CliHarness.Templates).Concat(extra.Contains("--steps") ? extra.Where((_, i) => i != Array.IndexOf(extra, "--steps") && i != Array.IndexOf(extra, "--steps") + 1) : extra).ToArray());

    private static List<JsonNode> Metrics(string dir) =>
        File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();

    [Fact]
    public void TrainOnPrompt_EvalScoresThePromptTokensToo()
    {
        var without = Train("plain");
        Assert.True(without.Rc == 0, without.Err);
        var with = Train("onprompt", "--train-on-prompt");
        Assert.True(with.Rc == 0, with.Err);
        int Tokens(string name) => Metrics(Path.Combine(_dir, name)).Last(m => m["eval_tokens"] is not null)["eval_tokens"]!.GetValue<int>();
        // The same held-out records: with the flag every token after the first is scored, without it only " {Answer}" + EOS.
        Assert.True(Tokens("onprompt") > 3 * Tokens("plain"), $"{Tokens("onprompt")} vs {Tokens("plain")}");
        Assert.NotEqual(Metrics(Path.Combine(_dir, "plain"))[0]["loss"]!.GetValue<double>(), Metrics(Path.Combine(_dir, "onprompt"))[0]["loss"]!.GetValue<double>());
    }

    [Fact]
    public void TrainOnPrompt_IsASettingAResumeMustKeep()
    {
        Assert.Equal(0, Train("keep", "--train-on-prompt").Rc);
        var resumed = CliHarness.Run(new[] { "train", "--model", Model(), "--data", Data(), "--steps", "3", "--batch-size", "4", "--lr", "3e-3", "--eval-generate", "0", "--out", Path.Combine(_dir, "keep"), "--resume", "--threads", "1" }.Concat(CliHarness.Templates).ToArray());
        Assert.Equal(2, resumed.Rc);
        Assert.Contains("--train-on-prompt false", resumed.Err);
    }

    [Fact]
    public void ModulesToSave_LmHead_IsTrainedSavedUnderPeftKeysAndAppliedOnLoadAndMerge()
    {
        var (rc, _, err) = Train("mts", "--modules-to-save", "lm_head");
        Assert.True(rc == 0, err);
        string adapter = Path.Combine(_dir, "mts");
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, AdapterFolder.ConfigFileName)))!;
        Assert.Equal(new[] { "lm_head" }, cfg["modules_to_save"]!.AsArray().Select(n => n!.GetValue<string>()));

        torch.Tensor saved, baseHead;
        using (var f = SafetensorsFile.Open(Path.Combine(adapter, AdapterFolder.WeightsFileName)))
        {
            Assert.Contains("base_model.model.lm_head.weight", f.Entries.Select(e => e.Name)); // PEFT's key for a saved module (peft-format.md §2.4)
            saved = f.Load("base_model.model.lm_head.weight");
        }
        using (var f = SafetensorsFile.Open(Directory.GetFiles(Model(), "*.safetensors").Single()))
            baseHead = f.Load("lm_head.weight");
        Assert.False(saved.allclose(baseHead), "lm_head was not trained");

        // Loaded with the adapter, the model's head is the trained one; the round trip gives the logits of that head.
        using var ids = TinyModels.RandomIds(2, 7, ResLora.Demo.DemoTokenizerFiles.VocabSize, 3);
        torch.Tensor loadedLogits;
        using (var m = ModelSessions.LoadWithAdapter(Model(), adapter, new RuntimeOptions { Threads = 1 }))
        using (torch.no_grad())
        {
            Assert.True(m.named_parameters().Single(p => p.name == "lm_head.weight").parameter.allclose(saved, rtol: 0, atol: 0));
            loadedLogits = m.forward(ids).detach().clone();
            using var hidden = m.HiddenStates(ids);
            using var byHand = torch.nn.functional.linear(hidden, saved);
            Assert.True(loadedLogits.allclose(byHand, rtol: 1e-5, atol: 1e-5));
        }

        // Merge writes the trained head into the merged folder, and the merged model gives the adapter's logits.
        string merged = Path.Combine(_dir, "merged");
        var mg = CliHarness.Run("merge", "--model", Model(), "--adapter", adapter, "--out", merged, "--threads", "1");
        Assert.True(mg.Rc == 0, mg.Err);
        using (var f = SafetensorsFile.Open(Directory.GetFiles(merged, "*.safetensors").Single()))
        using (var head = f.Load("lm_head.weight"))
            Assert.True(head.allclose(saved, rtol: 0, atol: 0));
        using (var m = ModelSessions.LoadBase(merged, new RuntimeOptions { Threads = 1 }))
        using (torch.no_grad())
        using (var mergedLogits = m.forward(ids))
            Assert.True(mergedLogits.allclose(loadedLogits, rtol: 1e-4, atol: 1e-4));

        // export --as lora keeps the trained head (it was dropped while the export claimed to be exact).
        string exported = Path.Combine(_dir, "exported");
        var ex = CliHarness.Run("export", "--model", Model(), "--adapter", adapter, "--as", "lora", "--out", exported, "--threads", "1");
        Assert.True(ex.Rc == 0, ex.Err);
        var ecfg = JsonNode.Parse(File.ReadAllText(Path.Combine(exported, AdapterFolder.ConfigFileName)))!;
        Assert.Equal(new[] { "lm_head" }, ecfg["modules_to_save"]!.AsArray().Select(n => n!.GetValue<string>()));
        using (var m = ModelSessions.LoadWithAdapter(Model(), exported, new RuntimeOptions { Threads = 1 }))
        using (torch.no_grad())
        using (var exportedLogits = m.forward(ids))
            Assert.True(exportedLogits.allclose(loadedLogits, rtol: 1e-5, atol: 1e-5));
    }

    [Fact]
    public void ModulesToSave_SurvivesResLorasLeastSquaresMerge()
    {
        // The ls merge folds into a LoRA student built from the base: it must carry the trained head over (it kept the
        // base's head, |Δloss| 0.036 on the demo data, before).
        var (rc, _, err) = Train("mts-is", "--method", "reslora-is", "--modules-to-save", "lm_head", "--steps", "4");
        Assert.True(rc == 0, err);
        string adapter = Path.Combine(_dir, "mts-is");
        torch.Tensor saved;
        using (var f = SafetensorsFile.Open(Path.Combine(adapter, AdapterFolder.WeightsFileName)))
            saved = f.Load("base_model.model.lm_head.weight");
        string merged = Path.Combine(_dir, "merged-ls");
        var mg = CliHarness.Run("merge", "--model", Model(), "--adapter", adapter, "--merge", "ls", "--out", merged, "--threads", "1");
        Assert.True(mg.Rc == 0, mg.Err);
        using var f2 = SafetensorsFile.Open(Directory.GetFiles(merged, "*.safetensors").Single());
        using var head = f2.Load("lm_head.weight");
        Assert.True(head.allclose(saved, rtol: 0, atol: 0));
    }

    [Fact]
    public void ModulesToSave_BadNames_AreClearErrors()
    {
        var unknown = Train("bad1", "--modules-to-save", "lm_hed");
        Assert.Equal(2, unknown.Rc);
        Assert.Contains("--modules-to-save 'lm_hed' matched no module", unknown.Err);
        Assert.Contains("lm_head", unknown.Err);
        var both = Train("bad2", "--modules-to-save", "q_proj");
        Assert.Equal(2, both.Rc);
        Assert.Contains("--modules-to-save", both.Err);
    }

    [Fact]
    public void LayersToTransform_AdaptsOnlyThoseLayers_AndRoundTripsThroughTheConfig()
    {
        var (rc, _, err) = Train("layers", "--targets", "q_proj,v_proj", "--layers-to-transform", "1", "--layers-pattern", "layers");
        Assert.True(rc == 0, err);
        string adapter = Path.Combine(_dir, "layers");
        using (var f = SafetensorsFile.Open(Path.Combine(adapter, AdapterFolder.WeightsFileName)))
        {
            var keys = f.Entries.Select(e => e.Name).ToList();
            Assert.Equal(4, keys.Count); // q_proj and v_proj of layer 1, A and B each
            Assert.All(keys, k => Assert.StartsWith("base_model.model.model.layers.1.", k));
        }
        var (cfg, _) = AdapterConfigJson.Parse(File.ReadAllText(Path.Combine(adapter, AdapterFolder.ConfigFileName)));
        Assert.Equal(new[] { 1 }, cfg.LayersToTransform); // written as PEFT's int-or-list
        Assert.Equal("layers", cfg.LayersPattern!.GetValue<string>());

        // Loading honours the config: the plan adapts layer 1 only, and the weights load without a missing-module error.
        using var m = ModelSessions.LoadWithAdapter(Model(), adapter, new RuntimeOptions { Threads = 1 }, out var plan);
        Assert.Equal(new[] { "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj" }, plan.Decisions.Where(d => d.Adapted).Select(d => d.Spec.Name).Order());
        Assert.Equal(2, AdapterModel.FindAdapters(m).Count);
    }

    [Theory]
    [InlineData("--layers-to-transform", "5", "layers_to_transform (--layers-to-transform) index 5 is not a layer of this model")]
    [InlineData("--layers-to-transform", "x", "--layers-to-transform 'x'")]
    [InlineData("--layers-pattern", "blocks", "--layers-pattern only says")]
    public void LayersToTransform_BadInput_IsAClearError(string flag, string value, string expected)
    {
        var (rc, _, err) = Train("bad-" + value, flag, value);
        Assert.Equal(2, rc);
        Assert.Contains(expected, err);
    }

    [Fact]
    public void LayersToTransform_WithARegexTarget_OrAWrongPattern_IsAClearError()
    {
        var regex = Train("badregex", "--targets", ".*q_proj", "--layers-to-transform", "0");
        Assert.Equal(2, regex.Rc);
        Assert.Contains("regex --targets", regex.Err);
        var pattern = Train("badpattern", "--layers-to-transform", "0", "--layers-pattern", "blocks");
        Assert.Equal(2, pattern.Rc);
        Assert.Contains("layers_pattern 'blocks'", pattern.Err);
    }

    [Fact]
    public void CtrlC_StopsWithACheckpoint_PrintsTheResumeCommand_Exits130_AndResumeMatchesTheWholeRun()
    {
        var whole = Train("whole", "--steps", "4");
        Assert.True(whole.Rc == 0, whole.Err);

        ResLora.Cli.TrainVerb.InterruptHook = cts => cts.Cancel(); // Ctrl+C before the first step ends: stop after step 1
        (int Rc, string Out, string Err) stopped;
        try { stopped = Train("stopped", "--steps", "4", "--overwrite"); }
        finally { ResLora.Cli.TrainVerb.InterruptHook = null; }
        Assert.Equal(130, stopped.Rc);
        string outDir = Path.Combine(_dir, "stopped");
        var line = Assert.Single(stopped.Err.Split('\n'), l => l.StartsWith("interrupted:", StringComparison.Ordinal));
        Assert.Contains($"stopped after step 1 of 4; checkpoint saved in {Path.Combine(outDir, "checkpoint")}", line);
        Assert.Contains($"Resume with: reslora train --model {Model()}", line);
        Assert.Contains("--prompt-template '{Body}' --completion-template ' {Answer}'", line);
        Assert.EndsWith(" --resume", line.TrimEnd());
        Assert.DoesNotContain("--overwrite", line);
        Assert.Equal(1, ResLora.Training.TrainCheckpoint.ReadState(ResLora.Training.TrainCheckpoint.Find(outDir)!).Step);

        var resumed = Train("stopped", "--steps", "4", "--resume");
        Assert.True(resumed.Rc == 0, resumed.Err);
        static IEnumerable<double> Losses(string dir) => Metrics(dir).Where(m => m["loss"] is not null).Select(m => m["loss"]!.GetValue<double>());
        Assert.Equal(Losses(Path.Combine(_dir, "whole")), Losses(outDir));
    }

    [Fact]
    public void SaveEvery_SnapshotsAreAdapterFoldersTheOtherVerbsLoad()
    {
        var (rc, _, err) = Train("snaps", "--steps", "5", "--snapshot-every", "2", "--save-total-limit", "1");
        Assert.True(rc == 0, err);
        string snap = Path.Combine(_dir, "snaps", "checkpoint-4");
        Assert.Equal(new[] { snap }, Directory.GetDirectories(Path.Combine(_dir, "snaps"), "checkpoint-*"));
        using var m = ModelSessions.LoadWithAdapter(Model(), snap, new RuntimeOptions { Threads = 1 });
        Assert.Equal(2 * 2, AdapterModel.FindAdapters(m).Count); // q_proj and v_proj of both layers
    }

    [Fact]
    public void EarlyStopping_WithoutEvaluation_NamesTheFlagAndTheFix()
    {
        var (rc, _, err) = Train("es", "--early-stopping-patience", "2", "--eval-fraction", "0", "--eval-every", "1");
        Assert.Equal(2, rc);
        Assert.Contains("--early-stopping-patience 2", err);
        Assert.Contains("--eval-data", err);
    }
}
