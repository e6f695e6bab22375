using System.Text.Json;
using ResLora.Adapters;
using ResLora.Models;
using ResLora.Quantization;
using ResLora.Text;

namespace ResLora.Pipelines;

/// <summary>The library function behind <c>reslora quantize</c>.</summary>
public static class QuantizeFolder
{
    /// <summary>
    /// (Optionally) rotate the model, (optionally) fold an adapter in, fake-quantize the decoder weights and write a model
    /// folder whose config records the rotation and the activation bit width (applied when it is loaded). With
    /// wbits = abits = 16 and rotate, this exports the rotated full-precision model. Returns warnings.
    /// </summary>
    public static IReadOnlyList<string> Run(string modelDir, string? adapterDir, bool rotate, long seed, QuantizeOptions o, IReadOnlyList<Tensor>? calibration, string outDir, RuntimeOptions runtime)
    {
        o.Validate();
        if (Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any())
            throw new IOException($"--out {outDir} exists and is not empty; choose a new folder.");
        var warnings = new List<string>();
        string work = Path.Combine(Path.GetTempPath(), $"reslora-quantize-{Guid.NewGuid():N}");
        try
        {
            string src = modelDir;
            if (rotate)
            {
                if (adapterDir is not null) throw new UserInputException("--rotate with --adapter: an adapter belongs to the model it was trained on; train with --method rolora (which rotates first) and pass the rotated base instead.");
                src = Path.Combine(work, "rotated");
                warnings.AddRange(RoLoraRotation.RotateFolder(modelDir, src, seed));
            }
            using var model = ModelSessions.Load(src, adapterDir, runtime);
            if (adapterDir is not null) AdapterModel.MergeAll(model);
            using (ModelQuantizer.Apply(model, o with { ABits = 16 }, calibration)) { }
            var cfg = model.Config;
            if (o.WBits < 16 || o.ABits < 16)
                cfg = cfg with { ResloraQuantization = JsonSerializer.SerializeToElement(new QuantizationRecord { WBits = o.WBits, ABits = o.ABits, Method = o.Method }) };
            ModelFolder.SaveNew(outDir, cfg, model.BaseParameters().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)), companionsFrom: modelDir);
            return warnings;
        }
        finally
        {
            if (Directory.Exists(work)) Directory.Delete(work, recursive: true);
        }
    }

    /// <summary>Calibration batches from a data file: each text tokenized (BOS as configured), cut to <paramref name="seqLen"/>, one sequence per batch.</summary>
    public static List<Tensor> CalibrationBatches(ITextTokenizer tok, IEnumerable<string> texts, int seqLen, int maxSequences)
    {
        var list = new List<Tensor>();
        foreach (var t in texts)
        {
            var ids = new List<long>();
            if (tok.AddBosToken && tok.BosTokenId is { } b) ids.Add(b);
            ids.AddRange(tok.Encode(t).Select(i => (long)i));
            if (ids.Count < 2) continue;
            list.Add(torch.tensor(ids.Take(seqLen).ToArray()).unsqueeze(0).DetachFromDisposeScope());
            if (list.Count >= maxSequences) break;
        }
        if (list.Count == 0) throw new UserInputException("the calibration data has no usable text.");
        return list;
    }
}
