using ResLora.IO.Gguf;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using Xunit.Abstractions;

namespace ResLora.Tests.Models;

/// <summary>
/// <c>convert gguf</c>'s model half: Hugging Face → GGUF (<see cref="GgufFixture"/>, as convert_hf_to_gguf writes it) →
/// Hugging Face. F32 and BF16 weights come back bit-exact and F32 logits exactly; Q8_0/Q4_0 within their quantization
/// step; hand-built Q4_K/Q6_K blocks as ggml decodes them; inconsistent files are one error naming the file.
/// </summary>
public sealed class GgufConversionTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = TestDirs.InMemory("reslora-ggufc-");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    internal static ModelConfig Config(string arch, bool tied, int intermediate = 48) => arch switch
    {
        "qwen2" => TinyModels.Config(tied: tied, qkvBias: true),
        "qwen3" => ModelFamilyTests.Qwen3(tied),
        _ => TinyModels.Config(tied: tied),
    } with { IntermediateSize = intermediate, MaxPositionEmbeddings = 64 };

    private static Dictionary<string, torch.Tensor> Weights(CausalLM m) =>
        m.BaseParameters().ToDictionary(kv => kv.Key, kv => (torch.Tensor)kv.Value.detach(), StringComparer.Ordinal);

    private string Gguf(ModelConfig c, CausalLM m, GgmlType type, string name = "m.gguf")
    {
        string path = Path.Combine(_dir, name);
        GgufFixture.Write(path, c, Weights(m), type, GgufFixture.PlainVocab(c.VocabSize));
        return path;
    }

    private static float MaxLogitDiff(CausalLM a, CausalLM b, int vocab)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var ids = TinyModels.RandomIds(2, 12, vocab, seed: 5);
        return (a.forward(ids) - b.forward(ids)).abs().max().item<float>();
    }

    private static float MaxLogit(CausalLM a, int vocab)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        return a.forward(TinyModels.RandomIds(2, 12, vocab, seed: 5)).abs().max().item<float>();
    }

    [Theory]
    [InlineData("llama", false)]
    [InlineData("llama", true)]
    [InlineData("qwen2", false)]
    [InlineData("qwen2", true)]
    [InlineData("qwen3", true)]
    [InlineData("qwen3", false)]
    public void F32_RoundTrip_WeightsBitExact_LogitsEqual(string arch, bool tied)
    {
        var c = Config(arch, tied);
        using var m = TinyModels.Build(c, seed: 11);
        string outDir = Path.Combine(_dir, "hf");
        var result = GgufConversion.Convert(Gguf(c, m, GgmlType.F32), outDir, torch.ScalarType.Float32);
        var back = ModelFolder.LoadConfig(outDir);
        Assert.Equal(arch, back.ModelType);
        Assert.Equal(tied, back.TieWordEmbeddings);
        Assert.Equal(c.HeadDim, back.HeadDim);
        Assert.Equal(c.NumKeyValueHeads, back.NumKeyValueHeads);
        Assert.Equal(c.RmsNormEps, back.RmsNormEps);
        Assert.Equal(c.HasQkvBias, back.HasQkvBias);
        Assert.Equal(64, back.MaxPositionEmbeddings);
        var (_, w) = ModelFolder.LoadBaseWeights(outDir, torch.ScalarType.Float32);
        foreach (var (name, t) in Weights(m))
            Assert.True(t.equal(w[name]).all().item<bool>(), $"{name} differs after the round trip");
        using var reloaded = ModelSessions.LoadBase(outDir, new RuntimeOptions());
        float diff = MaxLogitDiff(m, reloaded, c.VocabSize);
        output.WriteLine($"{arch} tied={tied}: {result.Tensors} tensors, max |Δlogit| = {diff}");
        Assert.Equal(0f, diff);
        Assert.True(File.Exists(Path.Combine(outDir, "tokenizer.json")));
        Assert.Contains("chat_template", File.ReadAllText(Path.Combine(outDir, "tokenizer_config.json")));
        foreach (var t in w.Values) t.Dispose();
    }

    [Fact]
    public void BF16_RoundTrip_IsBitExact()
    {
        var c = Config("llama", tied: false);
        using var m = TinyModels.Build(c, seed: 12, dtype: torch.ScalarType.BFloat16);
        string outDir = Path.Combine(_dir, "hf");
        GgufConversion.Convert(Gguf(c, m, GgmlType.BF16), outDir); // default dtype bf16
        Assert.Contains("\"torch_dtype\": \"bfloat16\"", File.ReadAllText(Path.Combine(outDir, "config.json")));
        var (_, w) = ModelFolder.LoadBaseWeights(outDir, torch.ScalarType.BFloat16);
        foreach (var (name, t) in Weights(m))
            if (t.dim() == 2) Assert.True(t.equal(w[name]).all().item<bool>(), $"{name} differs after the BF16 round trip");
            else Assert.True(t.equal(w[name]).all().item<bool>(), $"{name} (F32 in the GGUF) differs"); // bf16 → f32 → bf16 is exact too
    }

    [Theory]
    [InlineData(GgmlType.Q8_0, 0.5 / 127, 0.05)] // measured: 2.5 % of the largest logit (tiny random model, std-0.2 weights)
    [InlineData(GgmlType.Q4_0, 1.0 / 8, 0.75)] // measured: 48 %: 4 bits on random weights; the per-weight bound is the real check
    public void Quantized_RoundTrip_WithinTheQuantizationStep(GgmlType type, double stepPerMax, double logitBound)
    {
        var c = Config("llama", tied: false, intermediate: 64); // rows a whole number of 32-value blocks
        using var m = TinyModels.Build(c, seed: 13);
        string outDir = Path.Combine(_dir, "hf");
        GgufConversion.Convert(Gguf(c, m, type), outDir, torch.ScalarType.Float32);
        var (_, w) = ModelFolder.LoadBaseWeights(outDir, torch.ScalarType.Float32);
        double worst = 0;
        foreach (var (name, t) in Weights(m))
        {
            double err = (t - w[name]).abs().max().item<float>();
            double bound = t.dim() == 1 ? 0 : t.abs().max().item<float>() * stepPerMax * 1.15; // per-block max ≤ tensor max; + the fp16 scale's rounding (≤ 127 · 2⁻¹¹ of a step)
            Assert.True(err <= bound, $"{name}: |Δ| {err} > {bound}");
            worst = Math.Max(worst, err);
        }
        using var reloaded = ModelSessions.LoadBase(outDir, new RuntimeOptions());
        float diff = MaxLogitDiff(m, reloaded, c.VocabSize);
        float scale = MaxLogit(m, c.VocabSize);
        output.WriteLine($"{type}: max |Δw| = {worst:G4}, max |Δlogit| = {diff:G4} of max |logit| {scale:G4} ({diff / scale:P2})");
        Assert.True(diff / scale < logitBound, $"max |Δlogit| {diff} of {scale}");
    }

    [Fact]
    public void HandBuilt_Q4K_And_Q6K_Tensors_DequantizeIntoTheFolder()
    {
        var c = TinyModels.Config() with { HiddenSize = 256, IntermediateSize = 256, NumHiddenLayers = 1, MaxPositionEmbeddings = 64 };
        using var m = TinyModels.Build(c, seed: 14);
        string path = Path.Combine(_dir, "k.gguf");
        // Q4_K: 144 bytes per 256 values = an F32 row of 36; Q6_K: 210 bytes per 256 = an F32 row of 52.5, so two rows share a stand-in row of 105.
        var r = new Random(3);
        byte[] Q4K(int rows)
        {
            var b = new byte[rows * 144];
            r.NextBytes(b);
            for (int i = 0; i < rows; i++)
            {
                BitConverter.TryWriteBytes(b.AsSpan(i * 144), BitConverter.HalfToUInt16Bits((Half)(0.01f * (1 + i % 7))));
                BitConverter.TryWriteBytes(b.AsSpan(i * 144 + 2), BitConverter.HalfToUInt16Bits((Half)(0.005f * (1 + i % 3))));
            }
            return b;
        }
        // attn_q is 256 × 256 F32 (262144 bytes); as Q4_K it needs 256 × 144 bytes: write a GGUF whose attn_q stand-in has that size.
        string q = Path.Combine(_dir, "q.gguf");
        var weights = Weights(m);
        GgufFixture.Write(q, c, weights, GgmlType.F32, GgufFixture.PlainVocab(c.VocabSize), skip: n => n == "blk.0.attn_q.weight" || n == "output.weight");
        // Re-write with stand-ins of the right sizes, then patch them to K-quant blocks.
        var w = new GgufWriter();
        using (var g = GgufFile.Open(q))
        {
            foreach (var (k, v) in g.Metadata)
                switch (v)
                {
                    case string s: w.Set(k, s); break;
                    case uint u: w.Set(k, u); break;
                    case float f: w.Set(k, f); break;
                    case bool bo: w.Set(k, bo); break;
                    case GgufArray { ElementType: GgufValueType.String } a: w.SetStrings(k, a.Items.Cast<string>().ToList()); break;
                    case GgufArray a: w.SetInts(k, a.Items.Cast<int>().ToList()); break;
                }
            foreach (var t in g.Tensors)
            {
                var vals = g.ReadFloats(t);
                w.AddTensor(t.Name, t.Shape, GgmlType.F32, () => vals);
            }
        }
        w.AddTensor("blk.0.attn_q.weight", new long[] { 256, 36 }, GgmlType.F32, () => new float[256 * 36]);
        w.AddTensor("output.weight", new long[] { c.VocabSize / 2, 105 }, GgmlType.F32, () => new float[c.VocabSize / 2 * 105]);
        w.Write(path);
        byte[] q4 = Q4K(256);
        var q6 = new byte[c.VocabSize * 210];
        r.NextBytes(q6);
        for (int i = 0; i < c.VocabSize; i++) BitConverter.TryWriteBytes(q6.AsSpan(i * 210 + 208), BitConverter.HalfToUInt16Bits((Half)(0.002f * (1 + i % 5))));
        GgufFixture.Patch(path, "blk.0.attn_q.weight", 256, GgmlType.Q4_K, q4);
        PatchRows(path, "output.weight", c.VocabSize, GgmlType.Q6_K, q6);
        string outDir = Path.Combine(_dir, "hf");
        var result = GgufConversion.Convert(path, outDir, torch.ScalarType.Float32);
        Assert.Equal(1, result.StoredTypes[GgmlType.Q4_K]);
        Assert.Equal(1, result.StoredTypes[GgmlType.Q6_K]);
        var (_, back) = ModelFolder.LoadBaseWeights(outDir, torch.ScalarType.Float32);
        var expectQ = new float[256 * 256];
        GgmlQuant.Decode(GgmlType.Q4_K, q4, expectQ);
        expectQ = GgufNames.Permute(expectQ, new long[] { 256, 256 }, c.NumAttentionHeads, inverse: true);
        Assert.Equal(expectQ, back["model.layers.0.self_attn.q_proj.weight"].data<float>().ToArray());
        var expectOut = new float[c.VocabSize * 256];
        GgmlQuant.Decode(GgmlType.Q6_K, q6, expectOut);
        Assert.Equal(expectOut, back["lm_head.weight"].data<float>().ToArray());
        Assert.Equal(weights["model.layers.0.mlp.up_proj.weight"].data<float>().ToArray(), back["model.layers.0.mlp.up_proj.weight"].data<float>().ToArray());
    }

    /// <summary>As <see cref="GgufFixture.Patch"/>, also setting the row count (dimension 1), for a stand-in of another shape.</summary>
    private static void PatchRows(string path, string name, long rows, GgmlType type, byte[] data)
    {
        GgufFixture.Patch(path, name, 256, type, data);
        var bytes = File.ReadAllBytes(path);
        var key = System.Text.Encoding.UTF8.GetBytes(name);
        for (int i = 0; i + key.Length + 8 <= bytes.Length; i++)
            if (BitConverter.ToUInt64(bytes, i) == (ulong)key.Length && bytes.AsSpan(i + 8, key.Length).SequenceEqual(key))
            {
                BitConverter.TryWriteBytes(bytes.AsSpan(i + 8 + key.Length + 4 + 8), (ulong)rows);
                break;
            }
        File.WriteAllBytes(path, bytes);
    }
}
