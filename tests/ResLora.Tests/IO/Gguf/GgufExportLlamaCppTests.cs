using ResLora.IO.Gguf;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using Xunit.Abstractions;

namespace ResLora.Tests.IO.Gguf;

/// <summary>
/// reslora's GGUF export checked inside llama.cpp (LLamaSharp): the logits at every position of a 64-token prompt
/// equal ours, greedy continuations agree, for each architecture and the rope/tying/bias/q-k-norm variants.
/// </summary>
public class GgufExportLlamaCppTests
{
    private readonly ITestOutputHelper _out;
    public GgufExportLlamaCppTests(ITestOutputHelper output) => _out = output;

    internal static int[] Prompt(long seed, int n = 64)
    {
        using var ids = TinyModels.RandomIds(1, n, GgufTinyFolders.ByteLevelVocab - GgufTinyFolders.Specials.Length, seed);
        return ids.data<long>().Select(x => (int)x).ToArray();
    }

    internal static float[][] OurLogits(CausalLM model, int[] ids)
    {
        using var _ = torch.no_grad();
        using var t = torch.tensor(ids.Select(i => (long)i).ToArray()).unsqueeze(0);
        using var logits = model.forward(t).to_type(torch.ScalarType.Float32).squeeze(0);
        var flat = logits.data<float>().ToArray();
        int v = (int)logits.shape[1];
        return Enumerable.Range(0, ids.Length).Select(p => flat.AsSpan(p * v, v).ToArray()).ToArray();
    }

    /// <summary>max |Δ| over all positions / max |ours|.</summary>
    internal static double RelativeError(float[][] ours, float[][] theirs)
    {
        double maxDiff = 0, scale = 0;
        for (int p = 0; p < ours.Length; p++)
            for (int j = 0; j < ours[p].Length; j++)
            {
                maxDiff = Math.Max(maxDiff, Math.Abs(ours[p][j] - theirs[p][j]));
                scale = Math.Max(scale, Math.Abs(ours[p][j]));
            }
        return maxDiff / scale;
    }

    public static TheoryData<string> Cases => new() { "llama", "llama-tied-padded", "llama-mha", "llama3-rope", "linear-rope", "qwen2", "qwen3" };

    internal static (ModelConfig Config, string? Regex) Case(string name) => name switch
    {
        "llama" => (GgufTinyFolders.Llama(), GgufTinyFolders.Llama3Regex),
        "llama-tied-padded" => (GgufTinyFolders.Llama(tied: true, extraRows: 5), null),
        "llama-mha" => (GgufTinyFolders.Llama(kvHeads: 4), GgufTinyFolders.Llama3Regex),
        "llama3-rope" => (GgufTinyFolders.Llama(rope: new RopeScaling { RopeType = "llama3", Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 16 }), GgufTinyFolders.Llama3Regex),
        "linear-rope" => (GgufTinyFolders.Llama(rope: new RopeScaling { RopeType = "linear", Factor = 2 }), GgufTinyFolders.Llama3Regex),
        "qwen2" => (GgufTinyFolders.Qwen2(), GgufTinyFolders.Qwen2Regex),
        "qwen3" => (GgufTinyFolders.Qwen3(), GgufTinyFolders.Qwen2Regex),
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void F32ExportGivesOurLogitsInLlamaCpp(string name)
    {
        string dir = TestDirs.InMemory("gguf-f32");
        try
        {
        var (config, regex) = Case(name);
        using var model = GgufTinyFolders.Write(dir, config, regex, seed: 7);
        string gguf = Path.Combine(dir, "model.gguf");
        GgufExport.Write(model, dir, gguf, GgmlType.F32);

        var ids = Prompt(11);
        using var cpp = new LlamaCppRunner(gguf);
        double rel = RelativeError(OurLogits(model, ids), cpp.Logits(ids));
        _out.WriteLine($"{name}: F32 max |Δlogit| / max |logit| over 64 positions = {rel:0.###e0}");
        Assert.True(rel < 1e-4, $"{name}: relative logit error {rel}");

        // Greedy: 16 tokens from an 8-token prompt.
        var prompt = ids.Take(8).ToList();
        var ours = new List<int>();
        var seq = prompt.ToList();
        for (int k = 0; k < 16; k++)
        {
            var last = OurLogits(model, seq.ToArray())[^1];
            int best = Array.IndexOf(last, last.Max());
            ours.Add(best);
            seq.Add(best);
        }
        Assert.Equal(ours, cpp.Greedy(prompt, 16));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
