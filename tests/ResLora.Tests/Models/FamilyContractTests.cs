using ResLora.Demo;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>
/// Every causal-LM family through the whole user path, as a Hugging Face folder on disk: load (equal to the model that
/// wrote it), train a few steps from the CLI, merge, reload the merged folder (equal to base + adapter), generate the
/// same text from both. A new family is added to <see cref="Families"/> with one line.
/// </summary>
[Collection("console")]
public sealed class FamilyContractTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-family-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>One tiny config per model type the registry accepts for causal LMs.</summary>
    public static TheoryData<string> Families()
    {
        var d = new TheoryData<string>();
        foreach (var f in ModelFamilies.All.OfType<ICausalLMFamily>())
            foreach (var t in f.ModelTypes) d.Add(t);
        return d;
    }

    private static ModelConfig ConfigOf(string modelType)
    {
        var c = TinyModels.Config(vocab: DemoTokenizerFiles.VocabSize) with { ModelType = modelType };
        return modelType switch
        {
            "mistral" => c with { SlidingWindow = 6 },
            "qwen2" => c with { SlidingWindow = 8, UseSlidingWindow = true, MaxWindowLayers = 1 },
            "qwen3" => c with { HeadDimRaw = 12, TieWordEmbeddings = true },
            "smollm3" => (c with { TieWordEmbeddings = true }).WithExtra("no_rope_layers", new[] { 1, 0 }),
            "phi3" => Phi3Tests.Tiny(window: 6, tied: true, vocab: c.VocabSize),
            "gemma3_text" => Gemma3Tests.Tiny(vocab: c.VocabSize),
            _ => c,
        };
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Family_Loads_Trains_Merges_Reloads_AndGeneratesTheSameText(string modelType)
    {
        var c = ConfigOf(modelType);
        string model = Path.Combine(_dir, "model");
        using var probe = TinyModels.RandomIds(2, 12, c.VocabSize, 3);
        using (var built = TinyModels.Build(c, seed: 2))
        {
            ModelFolder.Save(model, c, built.BaseParameters().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)));
            DemoTokenizerFiles.Write(model);
            // A field no record models must survive every rewrite of config.json (merge below).
            string cfgPath = Path.Combine(model, "config.json");
            var node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(cfgPath))!;
            node["initializer_range"] = 0.02;
            File.WriteAllText(cfgPath, node.ToJsonString());
            using var loaded = ModelLoader.Load(model, new RuntimeOptions());
            Assert.Equal(ModelFamilies.Find(modelType), loaded.Family);
            using var a = built.forward(probe);
            using var b = loaded.forward(probe);
            Assert.Equal(0f, (a - b).abs().max().item<float>()); // float32 round trip through safetensors is exact
        }
        // The saved config keeps what the family reads (model_type, head_dim, windows).
        var saved = ModelFolder.LoadConfig(model);
        Assert.Equal(c.ModelType, saved.ModelType);
        Assert.Equal(c.HeadDim, saved.HeadDim);
        Assert.Equal(c.SlidingWindow, saved.SlidingWindow);
        Assert.Equal(c.UseSlidingWindow, saved.UseSlidingWindow);

        string data = CliHarness.Data(Path.Combine(_dir, "train.jsonl"), 24, 1), adapter = Path.Combine(_dir, "adapter");
        var tr = CliHarness.Run(new[] { "train", "--model", model, "--data", data, "--method", "lora", "--targets", "all-linear", "--steps", "4", "--batch-size", "8", "--lr", "1e-2", "--eval-fraction", "0", "--out", adapter, "--threads", "1" }.Concat(CliHarness.Templates).ToArray());
        Assert.True(tr.Rc == 0, tr.Err);

        string merged = Path.Combine(_dir, "merged");
        var mg = CliHarness.Run("merge", "--model", model, "--adapter", adapter, "--out", merged);
        Assert.True(mg.Rc == 0, mg.Err);
        Assert.Equal(c.ModelType, ModelFolder.LoadConfig(merged).ModelType);
        Assert.Contains("\"initializer_range\": 0.02", File.ReadAllText(Path.Combine(merged, "config.json")));
        using (var unmerged = ModelSessions.LoadWithAdapter(model, adapter, new RuntimeOptions()))
        using (var reloaded = ModelLoader.Load(merged, new RuntimeOptions()))
        using (var baseModel = ModelLoader.Load(model, new RuntimeOptions()))
        using (torch.no_grad())
        {
            using var u = unmerged.forward(probe);
            using var m = reloaded.forward(probe);
            using var b = baseModel.forward(probe);
            Assert.True((u - m).abs().max().item<float>() < 1e-4, $"{modelType}: merged vs unmerged");
            Assert.True((u - b).abs().max().item<float>() > 1e-3, $"{modelType}: training must have moved the model");
        }

        var g1 = CliHarness.Run("generate", "--model", merged, "--prompt", "What is 3 times 4? Answer:", "--max-new-tokens", "6");
        var g2 = CliHarness.Run("generate", "--model", model, "--adapter", adapter, "--prompt", "What is 3 times 4? Answer:", "--max-new-tokens", "6");
        Assert.True(g1.Rc == 0, g1.Err);
        Assert.Equal(g2.Out, g1.Out);
        var insp = CliHarness.Run("inspect", "--model", model);
        Assert.True(insp.Rc == 0, insp.Err);
    }

    [Fact]
    public void UnknownModelType_IsRefusedByEveryVerb_WithTheSupportedList()
    {
        var c = TinyModels.Config(vocab: DemoTokenizerFiles.VocabSize);
        string model = Path.Combine(_dir, "mamba");
        using (var built = TinyModels.Build(c, seed: 2))
            ModelFolder.Save(model, c, built.BaseParameters().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)));
        DemoTokenizerFiles.Write(model);
        string cfg = Path.Combine(model, "config.json");
        File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("\"model_type\": \"llama\"", "\"model_type\": \"mamba\""));
        string data = CliHarness.Data(Path.Combine(_dir, "d.jsonl"), 8, 1);
        foreach (var args in new[]
        {
            new[] { "inspect", "--model", model },
            new[] { "generate", "--model", model, "--prompt", "hi" },
            new[] { "train", "--model", model, "--data", data, "--out", Path.Combine(_dir, "o") },
        })
        {
            var r = CliHarness.Run(args);
            Assert.True(r.Rc == 2, $"{args[0]}: rc {r.Rc}\n{r.Err}");
            Assert.Contains("'mamba' is not supported", r.Err);
            Assert.Contains("qwen3", r.Err);
            Assert.DoesNotContain("   at ", r.Err); // no stack trace
        }
    }
}
