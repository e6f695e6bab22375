using System.Text.Json.Nodes;
using ResLora.Adapters;
using ResLora.IO;
using ResLora.Tests.Infrastructure;

namespace ResLora.Tests.Cli;

/// <summary>
/// <c>train --init pissa|olora|loftq</c> from the CLI on a tiny model: the adapter a user gets is PEFT's rank-2r LoRA of the
/// original base, the checkpoint keeps the trained rank-r pair that a resume reads back, and bad input is one line.
/// </summary>
[Collection("console")]
public sealed class InitCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-init-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Model() => Directory.Exists(Path.Combine(_dir, "model")) ? Path.Combine(_dir, "model") : CliHarness.ModelFolder(Path.Combine(_dir, "model"));

    private string Data() => File.Exists(Path.Combine(_dir, "train.jsonl")) ? Path.Combine(_dir, "train.jsonl") : CliHarness.Data(Path.Combine(_dir, "train.jsonl"), 24, 1);

    private (int Rc, string Out, string Err) Train(string outName, params string[] extra) =>
        CliHarness.Run(new[] { "train", "--model", Model(), "--data", Data(), "--batch-size", "4", "--lr", "3e-3", "--eval-generate", "0", "--alpha", "4", "--out", Path.Combine(_dir, outName), "--threads", "1" }
            .Concat(CliHarness.Templates).Concat(extra).Concat(extra.Contains("--rank") ? Array.Empty<string>() : new[] { "--rank", "2" })
            .Concat(extra.Contains("--steps") ? Array.Empty<string>() : new[] { "--steps", "3" }).ToArray());

    private static JsonNode Config(string dir) => JsonNode.Parse(File.ReadAllText(Path.Combine(dir, AdapterFolder.ConfigFileName)))!;

    [Theory]
    [InlineData("pissa", new string[0])]
    [InlineData("olora", new string[0])]
    [InlineData("loftq", new[] { "--base-bits", "4", "--loftq-iter", "2" })]
    [InlineData("pissa", new[] { "--method", "reflora", "--refactor-warmup", "1" })]
    [InlineData("olora", new[] { "--method", "dora" })]
    public void Init_SavesALoraOfTheOriginalBase_AndResumesFromTheTrainedPair(string init, string[] extra)
    {
        var (rc, _, err) = Train(init, extra.Concat(new[] { "--init", init }).ToArray());
        Assert.True(rc == 0, err);
        string adapter = Path.Combine(_dir, init);
        var cfg = Config(adapter);
        Assert.Equal((4, 8.0, true), (cfg["r"]!.GetValue<int>(), cfg["lora_alpha"]!.GetValue<double>(), cfg["init_lora_weights"]!.GetValue<bool>()));
        var ckpt = Config(Path.Combine(adapter, "checkpoint", "adapter"));
        Assert.Equal((2, init), (ckpt["r"]!.GetValue<int>(), ckpt["init_lora_weights"]!.GetValue<string>()));
        using (var f = SafetensorsFile.Open(Path.Combine(adapter, AdapterFolder.WeightsFileName)))
            Assert.All(f.Entries.Where(e => e.Name.EndsWith("lora_A.weight", StringComparison.Ordinal)), e => Assert.Equal(4, e.Shape[0]));

        // A finished run resumed loads the checkpoint's rank-2 pair over the residual its init recomputes and saves again:
        // the same rank-4 adapter, bit for bit.
        byte[] before = File.ReadAllBytes(Path.Combine(adapter, AdapterFolder.WeightsFileName));
        var resumed = Train(init, extra.Concat(new[] { "--init", init, "--resume" }).ToArray());
        Assert.True(resumed.Rc == 0, resumed.Err);
        Assert.Equal(before, File.ReadAllBytes(Path.Combine(adapter, AdapterFolder.WeightsFileName)));
    }

    [Fact]
    public void Resume_WithAnotherLoftqIter_IsRefused()
    {
        var first = Train("lq", "--init", "loftq", "--base-bits", "4", "--steps", "6", "--save-every", "2");
        Assert.True(first.Rc == 0, first.Err);
        var resumed = Train("lq", "--init", "loftq", "--base-bits", "4", "--loftq-iter", "3", "--steps", "6", "--resume");
        Assert.Equal(2, resumed.Rc);
        Assert.Contains("--loftq-iter 3", resumed.Err);
    }

    [Fact]
    public void TheCheckpointForm_LoadedAsPeftLoadsIt_EqualsTheConvertedAdapterOnTheOriginalBase()
    {
        Assert.Equal(0, Train("p", "--init", "pissa").Rc);
        string adapter = Path.Combine(_dir, "p");
        var warnings = new List<string>();
        using var ids = TinyModels.RandomIds(2, 7, ResLora.Demo.DemoTokenizerFiles.VocabSize, 3);
        using var converted = ResLora.Pipelines.ModelSessions.LoadWithAdapter(Model(), adapter, new RuntimeOptions { Threads = 1 });
        // The checkpoint's folder says "pissa", r = 2: loading runs the init on the original base first, as PEFT does.
        using var trainedForm = ResLora.Pipelines.ModelSessions.LoadWithAdapter(Model(), Path.Combine(adapter, "checkpoint", "adapter"), new RuntimeOptions { Threads = 1 }, warnings.Add);
        Assert.Contains(warnings, w => w.Contains("init_lora_weights = pissa"));
        using var noGrad = TorchSharp.torch.no_grad();
        using var a = converted.forward(ids);
        using var b = trainedForm.forward(ids);
        Assert.True((a - b).abs().max().item<float>() < 1e-5, $"rank-4 LoRA on W vs rank-2 PiSSA over W_res: {(a - b).abs().max().item<float>()}");
    }

    [Theory]
    [InlineData(new[] { "--init", "loftq" }, "--base-bits 4")]
    [InlineData(new[] { "--init", "pissa_niter_" }, "--init 'pissa_niter_'")]
    [InlineData(new[] { "--loftq-iter", "3" }, "--init loftq")]
    [InlineData(new[] { "--init", "pissa", "--rank", "999" }, "--rank")]
    [InlineData(new[] { "--init", "olora", "--method", "loha" }, "--method lora")]
    public void BadInit_IsOneLineNamingTheFix(string[] extra, string expected)
    {
        var (rc, _, err) = Train("bad", extra);
        Assert.Equal(2, rc);
        Assert.Contains(expected, err);
        Assert.Single(err.Trim().Split('\n'));
    }
}
