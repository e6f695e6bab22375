using ResLora.IO.Gguf;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Tests.Models;
using TorchSharp;
using Xunit.Abstractions;

namespace ResLora.Tests.IO.Gguf;

/// <summary>
/// Gemma 3's GGUF export read by llama.cpp (LLamaSharp's gemma3 architecture): logits at every position of a 64-token
/// prompt (longer than the windows) equal ours (to float32 noise without the MLPs, to ggml's float16 GELU table with
/// them), and 32 greedy tokens agree; configs llama.cpp would read differently are
/// refused before anything is written.
/// </summary>
public sealed class Gemma3LlamaCppTests
{
    private readonly ITestOutputHelper _out;
    public Gemma3LlamaCppTests(ITestOutputHelper output) => _out = output;

    /// <summary>The tiny Gemma 3 at the byte-level test vocabulary, with the attention scale llama.cpp derives (1/sqrt(head_dim)).</summary>
    private static ModelConfig Config(int pattern = 3, double localBase = 100) =>
        Gemma3Tests.Tiny(vocab: GgufTinyFolders.ByteLevelVocab, pattern: pattern, scalar: 16, localBase: localBase) with
        {
            IntermediateSize = 64,
            BosTokenId = null,
            EosTokenIds = null,
        };

    public static TheoryData<string> Cases => new() { "period-3", "period-6-linear-rope", "untied-base-1e4", "attention-only" };

    private static ModelConfig Case(string name) => name switch
    {
        "period-3" or "attention-only" => Config(),
        "period-6-linear-rope" => Config(pattern: 6) with { RopeScaling = new RopeScaling { RopeType = "linear", Factor = 8 } },
        "untied-base-1e4" => Config(localBase: 10000) with { TieWordEmbeddings = false, SlidingWindow = 9 },
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void F32Export_GivesOurLogitsInLlamaCpp(string name)
    {
        string dir = TestDirs.InMemory("gguf-gemma3");
        try
        {
            // The export reads the in-memory model: its norms are redrawn around 0 as Gemma stores them.
            using var model = Gemma3Tests.CenterNorms(GgufTinyFolders.Write(dir, Case(name), GgufTinyFolders.Llama3Regex, seed: 7), 7);
            if (name == "attention-only") // down_proj = 0: every block's MLP adds nothing; the rest of the graph is compared exactly
                using (torch.no_grad())
                    foreach (var (k, p) in model.BaseParameters()) if (k.EndsWith("down_proj.weight", StringComparison.Ordinal)) p.zero_();
            string gguf = Path.Combine(dir, "model.gguf");
            var report = GgufExport.Write(model, dir, gguf, GgmlType.F32);
            Assert.Equal("gemma3", report.Architecture);

            var ids = GgufExportLlamaCppTests.Prompt(11);
            using var cpp = new LlamaCppRunner(gguf);
            double rel = GgufExportLlamaCppTests.RelativeError(GgufExportLlamaCppTests.OurLogits(model, ids), cpp.Logits(ids));
            _out.WriteLine($"gemma3 {name}: F32 max |Δlogit| / max |logit| over 64 positions = {rel:0.###e0}");
            // ggml's CPU GELU reads a table indexed by the float16 input (GGML_GELU_FP16), a ~1e-3 relative rounding of every
            // MLP activation: with the MLPs silenced the export must agree to float32 noise; with them, to that rounding.
            double bound = name == "attention-only" ? 1e-5 : 2e-3;
            Assert.True(rel < bound, $"{name}: relative logit error {rel} (bound {bound})");

            // Greedy: 32 tokens from an 8-token prompt, ours by full forwards.
            var prompt = ids.Take(8).ToList();
            var ours = new List<int>();
            var seq = prompt.ToList();
            for (int k = 0; k < 32; k++)
            {
                var last = GgufExportLlamaCppTests.OurLogits(model, seq.ToArray())[^1];
                int best = Array.IndexOf(last, last.Max());
                ours.Add(best);
                seq.Add(best);
            }
            Assert.Equal(ours, cpp.Greedy(prompt, 32));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void ConfigsLlamaCppReadsDifferently_AreRefused_NamingTheField()
    {
        string dir = TestDirs.InMemory("gguf-gemma3-refused");
        try
        {
            var scaled = Config(scalar: 24);
            using (var model = GgufTinyFolders.Write(dir, scaled, GgufTinyFolders.Llama3Regex, seed: 3))
            {
                var e = Assert.Throws<UserInputException>(() => GgufExport.Write(model, dir, Path.Combine(dir, "a.gguf"), GgmlType.F32));
                Assert.Contains("'query_pre_attn_scalar' is 24", e.Message);
                Assert.Contains("1/sqrt(16)", e.Message);
            }
            var irregular = Config().WithExtra("layer_types", new[] { "full_attention", "sliding_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention" });
            using (var model = TinyModels.Build(irregular, seed: 3))
            {
                var e = Assert.Throws<UserInputException>(() => GgufExport.Write(model, dir, Path.Combine(dir, "b.gguf"), GgmlType.F32));
                Assert.Contains("'layer_types' (FSSFSF", e.Message);
            }
            Assert.False(File.Exists(Path.Combine(dir, "a.gguf")));
            Assert.False(File.Exists(Path.Combine(dir, "b.gguf")));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    private static ModelConfig Config(double scalar) => Config().WithExtra("query_pre_attn_scalar", scalar);
}
