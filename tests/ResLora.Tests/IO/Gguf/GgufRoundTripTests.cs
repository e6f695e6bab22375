using ResLora.Adapters;
using ResLora.IO.Gguf;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Text;
using TorchSharp;

namespace ResLora.Tests.IO.Gguf;

/// <summary>
/// The production exporter and the converter together: Hugging Face folder → <c>export --as gguf</c> →
/// <c>convert gguf</c> → Hugging Face folder gives the same weights bit for bit (F32 and BF16) and a tokenizer that encodes
/// the same ids, for each architecture and pre-tokenizer.
/// </summary>
public sealed class GgufRoundTripTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-gguf-rt-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Theory]
    [InlineData("llama", "f32")]
    [InlineData("llama-tied", "bf16")]
    [InlineData("qwen2", "f32")]
    [InlineData("qwen3", "f32")]
    [InlineData("qwen3", "bf16")]
    [InlineData("smollm3", "f32")]
    public void ExportThenConvert_GivesTheSameWeightsAndTokens(string kind, string type)
    {
        var (config, regex) = kind switch
        {
            "llama" => (GgufTinyFolders.Llama(), GgufTinyFolders.Llama3Regex),
            "llama-tied" => (GgufTinyFolders.Llama(tied: true), (string?)null),
            "qwen2" => (GgufTinyFolders.Qwen2(), GgufTinyFolders.Qwen2Regex),
            // Four layers, so layer 3 runs without rotary (SmolLM3's every-4th NoPE layer, which llama.cpp hard-codes).
            "smollm3" => (GgufTinyFolders.Llama(tied: true) with { ModelType = "smollm3", NumHiddenLayers = 4 }, GgufTinyFolders.Llama3Regex),
            _ => (GgufTinyFolders.Qwen3(), GgufTinyFolders.Qwen2Regex),
        };
        var dtype = type == "bf16" ? torch.ScalarType.BFloat16 : torch.ScalarType.Float32;
        string src = Path.Combine(_dir, "src"), gguf = Path.Combine(_dir, "m.gguf"), back = Path.Combine(_dir, "back");
        GgufTinyFolders.Write(src, config, regex, seed: 4).Dispose();
        if (dtype == torch.ScalarType.BFloat16)
        {
            // Store the source in bf16, so a bf16 GGUF holds exactly its values.
            var (c, w) = ModelFolder.LoadBaseWeights(src, torch.ScalarType.BFloat16);
            ModelFolder.Save(src, c, w);
            foreach (var t in w.Values) t.Dispose();
        }
        GgufExport.Export(src, null, gguf, GgmlTypes.Parse(type)!.Value, new RuntimeOptions());
        GgufConversion.Convert(gguf, back, dtype);

        var original = ModelFolder.LoadConfig(src);
        var converted = ModelFolder.LoadConfig(back);
        Assert.Equal(original.ModelType, converted.ModelType);
        Assert.Equal(original.HeadDim, converted.HeadDim);
        Assert.Equal(original.TieWordEmbeddings, converted.TieWordEmbeddings);
        var (_, a) = ModelFolder.LoadBaseWeights(src, dtype);
        var (_, b) = ModelFolder.LoadBaseWeights(back, dtype);
        Assert.Equal(a.Keys.OrderBy(k => k, StringComparer.Ordinal), b.Keys.OrderBy(k => k, StringComparer.Ordinal));
        foreach (var (name, t) in a) Assert.True(t.equal(b[name]).all().item<bool>(), $"{kind} {type}: {name} differs after export → convert");
        foreach (var t in a.Values.Concat(b.Values)) t.Dispose();

        var tokA = TokenizerLoader.Load(src);
        var tokB = TokenizerLoader.Load(back);
        var texts = GgufExportExtrasTests.Texts();
        Assert.True(texts.Count >= 100);
        foreach (var text in texts) Assert.Equal(tokA.Encode(text).ToArray(), tokB.Encode(text).ToArray());
    }

    [Fact]
    public void RotatedModel_ExportsWithItsOnlineHadamardFoldedIn()
    {
        // RoLoRA's rotated folder needs an online Hadamard on down_proj's input, which llama.cpp does not run: the export
        // folds it into ffn_down, so the plain model read back gives the rotated model's logits.
        string src = Path.Combine(_dir, "src"), rotated = Path.Combine(_dir, "rotated"), gguf = Path.Combine(_dir, "r.gguf"), back = Path.Combine(_dir, "back");
        GgufTinyFolders.Write(src, GgufTinyFolders.Llama() with { IntermediateSize = 64 }, GgufTinyFolders.Llama3Regex, seed: 6).Dispose();
        RoLoraRotation.RotateFolder(src, rotated, seed: 3);
        GgufExport.Export(rotated, null, gguf, GgmlType.F32, new RuntimeOptions());
        GgufConversion.Convert(gguf, back, torch.ScalarType.Float32);
        using var reference = ModelSessions.LoadBase(rotated, new RuntimeOptions());
        using var plain = ModelLoader.Load(back, new RuntimeOptions());
        using var original = ModelLoader.Load(src, new RuntimeOptions());
        Assert.Contains(reference.Blocks, b => b.DownProjInputTransform is not null);
        Assert.All(plain.Blocks, b => Assert.Null(b.DownProjInputTransform));
        using var ids = Infrastructure.TinyModels.RandomIds(2, 10, reference.Config.VocabSize, 4);
        using var noGrad = torch.no_grad();
        using var r = reference.forward(ids);
        using var p = plain.forward(ids);
        using var o = original.forward(ids);
        float scale = r.abs().max().item<float>();
        Assert.True((r - p).abs().max().item<float>() < 1e-4 * Math.Max(1, scale), $"folded export differs: {(r - p).abs().max().item<float>()}");
        Assert.True((o - p).abs().max().item<float>() < 1e-3 * Math.Max(1, scale), "the rotation is an equivalence: the export equals the unrotated model too");
    }
}
