using ResLora.IO.Gguf;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using Xunit.Abstractions;
using static ResLora.Tests.IO.Gguf.GgufExportLlamaCppTests;

namespace ResLora.Tests.IO.Gguf;

/// <summary>
/// SmolLM3's GGUF export run by llama.cpp's <c>smollm3</c> architecture (LLamaSharp): the logits of a model whose every 4th
/// layer has no rotary equal ours, greedy continuations agree, and a LoRA fine-tune trained and merged from the CLI
/// continues in llama.cpp exactly as the fine-tuned model does here, merged or as a GGUF LoRA adapter.
/// </summary>
[Collection("console")]
public sealed class SmolLM3LlamaCppTests
{
    private readonly ITestOutputHelper _out;
    public SmolLM3LlamaCppTests(ITestOutputHelper output) => _out = output;

    /// <summary>8 layers: layers 3 and 7 have no rotary (llama.cpp's fixed step and the config's default interval agree).</summary>
    private static ModelConfig Config() => GgufTinyFolders.Llama(tied: true) with { ModelType = "smollm3", NumHiddenLayers = 8 };

    private static List<int> OurGreedy(CausalLM model, IReadOnlyList<int> prompt, int n)
    {
        var seq = prompt.ToList();
        var outp = new List<int>();
        for (int k = 0; k < n; k++)
        {
            var last = OurLogits(model, seq.ToArray())[^1];
            int best = Array.IndexOf(last, last.Max());
            outp.Add(best);
            seq.Add(best);
        }
        return outp;
    }

    private static void InTemp(string name, Action<string> body)
    {
        string dir = TestDirs.InMemory(name);
        try { body(dir); }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void F32Export_GivesOurLogitsAndGreedyTokensInLlamaCpp()
    {
        InTemp("smollm3-gguf", dir =>
        {
            var c = Config();
            using var model = GgufTinyFolders.Write(dir, c, GgufTinyFolders.Llama3Regex, seed: 7);
            string gguf = Path.Combine(dir, "model.gguf");
            var report = GgufExport.Write(model, dir, gguf, GgmlType.F32);
            Assert.Equal("smollm3", report.Architecture);

            var ids = Prompt(11, 64);
            using var cpp = new LlamaCppRunner(gguf);
            var theirs = cpp.Logits(ids);
            double rel = RelativeError(OurLogits(model, ids), theirs);
            _out.WriteLine($"smollm3 F32: max |Δlogit| / max |logit| over 64 positions = {rel:0.###e0}");
            Assert.True(rel < 1e-4, $"relative logit error {rel}");

            // llama.cpp really skips rotary on layers 3 and 7: the same weights with rotary everywhere are far from it.
            using (var allRope = ModelFamilies.CreateCausalLM(c.WithExtra("no_rope_layers", Enumerable.Repeat(1, 8).ToArray()), null, TorchSharp.torch.ScalarType.Float32, TorchSharp.torch.CPU))
            {
                var weights = model.BaseParameters();
                allRope.LoadWeights(name => weights[name]);
                double off = RelativeError(OurLogits(allRope, ids), theirs);
                _out.WriteLine($"same weights with rotary on every layer vs llama.cpp: {off:0.###e0}");
                Assert.True(off > 1e-2, $"rotary-everywhere model is too close to llama.cpp ({off}): the NoPE layers would not be tested");
            }

            var prompt = ids.Take(8).ToList();
            var ours = OurGreedy(model, prompt, 32);
            Assert.Equal(ours, cpp.Greedy(prompt, 32));
        });
    }

    [Fact]
    public void TrainMergeExport_LlamaCppContinuesAsTheFineTunedModel()
    {
        InTemp("smollm3-ft", dir =>
        {
            string model = Path.Combine(dir, "model"), adapter = Path.Combine(dir, "adapter"), merged = Path.Combine(dir, "merged");
            GgufTinyFolders.Write(model, Config(), GgufTinyFolders.Llama3Regex, seed: 5).Dispose();
            string data = CliHarness.Data(Path.Combine(dir, "train.jsonl"), 24, 1);
            var tr = CliHarness.Run(new[] { "train", "--model", model, "--data", data, "--method", "lora", "--targets", "all-linear", "--steps", "6", "--batch-size", "8", "--lr", "2e-2", "--eval-fraction", "0", "--out", adapter, "--threads", "1" }.Concat(CliHarness.Templates).ToArray());
            Assert.True(tr.Rc == 0, tr.Err);
            var mg = CliHarness.Run("merge", "--model", model, "--adapter", adapter, "--out", merged);
            Assert.True(mg.Rc == 0, mg.Err);
            string gguf = Path.Combine(dir, "merged.gguf");
            var ex = CliHarness.Run("export", "--as", "gguf", "--model", merged, "--out", gguf, "--gguf-type", "f32");
            Assert.True(ex.Rc == 0, ex.Err);

            var ids = Prompt(21, 64);
            var prompt = ids.Take(8).ToList();
            using var tuned = ModelSessions.LoadWithAdapter(model, adapter, new RuntimeOptions());
            using var baseModel = ModelLoader.Load(model, new RuntimeOptions());
            using var cpp = new LlamaCppRunner(gguf);
            double rel = RelativeError(OurLogits(tuned, ids), cpp.Logits(ids));
            double fromBase = RelativeError(OurLogits(baseModel, ids), cpp.Logits(ids));
            _out.WriteLine($"fine-tuned smollm3 (base + adapter) vs llama.cpp on the merged export: {rel:0.###e0} (base model: {fromBase:0.###e0})");
            Assert.True(rel < 1e-4, $"relative logit error {rel}");
            Assert.True(fromBase > 1e-3, "training must have moved the model for the check to mean something");
            Assert.Equal(OurGreedy(tuned, prompt, 16), cpp.Greedy(prompt, 16));

            // The same fine-tune as a llama.cpp LoRA adapter over the base GGUF (lora_b rows of q/k permuted as the base's).
            string baseGguf = Path.Combine(dir, "base.gguf"), loraGguf = Path.Combine(dir, "lora.gguf");
            GgufExport.Export(model, null, baseGguf, GgmlType.F32, new RuntimeOptions());
            GgufLoraExport.Export(model, adapter, loraGguf, new RuntimeOptions(), new ExportOptions());
            using var cppBase = new LlamaCppRunner(baseGguf);
            var lora = cppBase.Weights.NativeHandle.LoadLoraFromFile(loraGguf);
            double relLora = RelativeError(OurLogits(tuned, ids), cppBase.Logits(ids, lora));
            _out.WriteLine($"fine-tuned smollm3 vs llama.cpp base GGUF + GGUF LoRA: {relLora:0.###e0}");
            Assert.True(relLora < 1e-4, $"GGUF LoRA: relative logit error {relLora}");
        });
    }
}
