using ResLora.IO.Gguf;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Tests.Models;
using Xunit.Abstractions;

namespace ResLora.Tests.IO.Gguf;

/// <summary>
/// Phi-3 / Phi-4-mini GGUF export (llama.cpp's <c>phi3</c>) run by llama.cpp through LLamaSharp: partial rotary and
/// LongRoPE's factor tensors and attention factor, fused attn_qkv / ffn_up, tied output; a fine-tuned model's merged
/// export and its GGUF LoRA. llama.cpp chooses LongRoPE's long factors when its context (256 here) exceeds the original
/// context, whatever the positions; reslora (as transformers) when the sequence does.
/// </summary>
[Collection("console")]
public sealed class Phi3LlamaCppTests
{
    private readonly ITestOutputHelper _out;
    public Phi3LlamaCppTests(ITestOutputHelper output) => _out = output;

    private static ModelConfig Config(int original, int maxPos, bool tied, bool longrope = true, int? window = null) =>
        Phi3Tests.Tiny(longrope: longrope, window: window, tied: tied, original: original, maxPos: maxPos, vocab: GgufTinyFolders.ByteLevelVocab)
            with
        { BosTokenId = null, EosTokenIds = null };

    private static List<int> OurGreedy(CausalLM model, IReadOnlyList<int> prompt, int n)
    {
        var seq = prompt.ToList();
        var outp = new List<int>();
        for (int k = 0; k < n; k++)
        {
            var last = GgufExportLlamaCppTests.OurLogits(model, seq.ToArray())[^1];
            int best = Array.IndexOf(last, last.Max());
            outp.Add(best);
            seq.Add(best);
        }
        return outp;
    }

    /// <summary>
    /// A temporary folder whose name does not contain "phi3"/"phi-3": llama.cpp's vocabulary loader gives models whose
    /// general.name (here the folder's name) contains those words Phi-3's token attributes and then requires the tokens
    /// &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt; and &lt;|endoftext|&gt;, which this byte-level test vocabulary lacks.
    /// </summary>
    private static void InTemp(string prefix, Action<string> body)
    {
        string dir = TestDirs.InMemory(prefix);
        try { body(dir); }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    // llama.cpp pads its context to a multiple of 256, so the runner's 128 is 256 there: original 512 keeps it short.
    [InlineData("short-regime", 512, 2048, true)]  // 256 ≤ original 512: short factors on both sides; attention factor sqrt(1 + ln 4 / ln 512)
    [InlineData("long-regime", 32, 256, false)]   // 64 tokens > original 32 and llama.cpp's context > 32: long factors on both sides
    [InlineData("no-rope-scaling", 512, 512, false)]
    public void F32Export_GivesOurLogitsInLlamaCpp(string name, int original, int maxPos, bool tied)
    {
        InTemp("gguf-p3", dir =>
        {
            var c = Config(original, maxPos, tied, longrope: name != "no-rope-scaling", window: 100);
            using var model = GgufTinyFolders.Write(dir, c, GgufTinyFolders.Llama3Regex, seed: 7);
            string gguf = Path.Combine(dir, "model.gguf");
            var report = GgufExport.Write(model, dir, gguf, GgmlType.F32);
            Assert.Equal("phi3", report.Architecture);
            using (var file = GgufFile.Open(gguf))
            {
                Assert.Equal(12u, Convert.ToUInt32(file.Metadata["phi3.rope.dimension_count"]));
                Assert.Equal(name != "no-rope-scaling", file.Tensors.Any(t => t.Name == "rope_factors_long.weight"));
                Assert.Contains(file.Tensors, t => t.Name == "blk.0.attn_qkv.weight");
                Assert.Contains(file.Tensors, t => t.Name == "blk.1.ffn_up.weight");
            }

            var ids = GgufExportLlamaCppTests.Prompt(11);
            using var cpp = new LlamaCppRunner(gguf);
            double rel = GgufExportLlamaCppTests.RelativeError(GgufExportLlamaCppTests.OurLogits(model, ids), cpp.Logits(ids));
            _out.WriteLine($"phi3 {name}: F32 max |Δlogit| / max |logit| over 64 positions = {rel:0.###e0}");
            Assert.True(rel < 1e-4, $"{name}: relative logit error {rel}");

            if (name == "long-regime") return; // greedy from 8 tokens: we use the short factors there, llama.cpp (context 128 > 32) the long ones
            var prompt = ids.Take(8).ToList();
            Assert.Equal(OurGreedy(model, prompt, 32), cpp.Greedy(prompt, 32));
        });
    }

    [Fact]
    public void SlidingWindow_IsWrittenButLlamaCppIgnoresIt()
    {
        // llama.cpp disables Phi-3's sliding window (llama-model.cpp: "Phi SWA is currently disabled", PR 13676): with a
        // window shorter than the prompt its logits are those of our model without the window.
        InTemp("gguf-p3-swa", dir =>
        {
            var c = Config(512, 2048, tied: true, window: 16);
            using var model = GgufTinyFolders.Write(dir, c, GgufTinyFolders.Llama3Regex, seed: 7);
            string gguf = Path.Combine(dir, "model.gguf");
            GgufExport.Write(model, dir, gguf, GgmlType.F32);
            using (var file = GgufFile.Open(gguf)) Assert.Equal(16u, Convert.ToUInt32(file.Metadata["phi3.attention.sliding_window"]));
            var ids = GgufExportLlamaCppTests.Prompt(11);
            using var cpp = new LlamaCppRunner(gguf);
            var theirs = cpp.Logits(ids);
            using var unwindowed = ModelFamilies.CreateCausalLM(c with { SlidingWindow = null }, null, TorchSharp.torch.ScalarType.Float32, TorchSharp.torch.CPU);
            unwindowed.LoadWeights(n => model.BaseParameters()[n]);
            double withWindow = GgufExportLlamaCppTests.RelativeError(GgufExportLlamaCppTests.OurLogits(model, ids), theirs);
            double without = GgufExportLlamaCppTests.RelativeError(GgufExportLlamaCppTests.OurLogits(unwindowed, ids), theirs);
            _out.WriteLine($"phi3 window 16 over 64 tokens: llama.cpp vs ours {withWindow:0.###e0}, vs ours without the window {without:0.###e0}");
            Assert.True(without < 1e-4, $"llama.cpp vs unwindowed: {without}");
            Assert.True(withWindow > 1e-3, "the window must matter for this check to mean something");
        });
    }

    [Fact]
    public void FineTuned_Merged_Exported_GivesTheFineTunedTokensInLlamaCpp_AndSoDoesItsGgufLora()
    {
        InTemp("gguf-p3-ft", dir =>
        {
            string modelDir = Path.Combine(dir, "model"), adapter = Path.Combine(dir, "adapter");
            var c = Config(512, 2048, tied: true);
            GgufTinyFolders.Write(modelDir, c, GgufTinyFolders.Llama3Regex, seed: 7).Dispose();
            string data = CliHarness.Data(Path.Combine(dir, "train.jsonl"), 24, 1);
            // No --targets: the family's default (PEFT's phi3 default: qkv_proj, o_proj, gate_up_proj, down_proj).
            var tr = CliHarness.Run(new[] { "train", "--model", modelDir, "--data", data, "--method", "lora", "--steps", "6", "--batch-size", "8", "--lr", "2e-2", "--eval-fraction", "0", "--out", adapter, "--threads", "1" }.Concat(CliHarness.Templates).ToArray());
            Assert.True(tr.Rc == 0, tr.Err);
            Assert.Contains("gate_up_proj", File.ReadAllText(Path.Combine(adapter, "adapter_config.json")));

            string merged = Path.Combine(dir, "merged.gguf"), baseGguf = Path.Combine(dir, "base.gguf"), lora = Path.Combine(dir, "lora.gguf");
            GgufExport.Export(modelDir, adapter, merged, GgmlType.F32, new RuntimeOptions());
            GgufExport.Export(modelDir, null, baseGguf, GgmlType.F32, new RuntimeOptions());
            var loraReport = GgufLoraExport.Export(modelDir, adapter, lora, new RuntimeOptions(), new ExportOptions());
            Assert.Equal(8, loraReport.Modules); // 4 fused-or-not projections × 2 layers

            using var tuned = ModelSessions.LoadWithAdapter(modelDir, adapter, new RuntimeOptions());
            var ids = GgufExportLlamaCppTests.Prompt(11);
            var ours = GgufExportLlamaCppTests.OurLogits(tuned, ids);
            using var cppMerged = new LlamaCppRunner(merged);
            double rel = GgufExportLlamaCppTests.RelativeError(ours, cppMerged.Logits(ids));
            var prompt = ids.Take(8).ToList();
            var tunedTokens = OurGreedy(tuned, prompt, 32);
            Assert.Equal(tunedTokens, cppMerged.Greedy(prompt, 32));

            using var cppBase = new LlamaCppRunner(baseGguf);
            var adapterHandle = cppBase.Weights.NativeHandle.LoadLoraFromFile(lora);
            double relLora = GgufExportLlamaCppTests.RelativeError(ours, cppBase.Logits(ids, adapterHandle));
            double relBase = GgufExportLlamaCppTests.RelativeError(ours, cppBase.Logits(ids));
            _out.WriteLine($"phi3 fine-tuned: merged GGUF {rel:0.###e0}, base GGUF + GGUF LoRA {relLora:0.###e0}, base GGUF alone {relBase:0.###e0}");
            Assert.True(rel < 1e-4, $"merged: {rel}");
            Assert.True(relLora < 1e-4, $"gguf lora: {relLora}");
            Assert.True(relBase > 1e-3, "training must have moved the model");
        });
    }
}
