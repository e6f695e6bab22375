using ResLora.Adapters;
using ResLora.Models;

namespace ResLora.Pipelines;

/// <summary>What merging measured: how far merged logits are from unmerged ones on a probe batch.</summary>
public sealed record MergeReport(string Method, int MergedModules, double MaxAbsDiff, double MeanAbsDiff, double LogitScale, string OutDir);

/// <summary>The library function behind <c>reslora merge</c>: a base model plus an adapter folder → a new model folder.</summary>
public static class MergePipeline
{
    /// <summary>
    /// Loads model + adapter, measures logits on <paramref name="probeIds"/> (batch, seq) unmerged, merges every adapter
    /// into the base weights, measures again, and writes a complete Hugging Face folder: config, safetensors (sharded as
    /// the input was), tokenizer and generation files copied. The folder appears whole or not at all. When the adapter's
    /// method offers several merges (ResLoRA's --merge auto), each is measured and the closest is kept.
    /// </summary>
    public static MergeReport MergeToFolder(string modelDir, string adapterDir, string outDir, RuntimeOptions runtime, Tensor probeIds, Action<string>? warn = null, string? mergeKind = null)
    {
        if (Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any())
            throw new IOException($"--out {outDir} exists and is not empty; choose a new folder (merging never overwrites).");
        var config = ModelSessions.ReadAdapterConfig(adapterDir, warn);
        var candidates = AdapterMethods.For(config).MergeCandidates(config, mergeKind);
        var (label, chosen) = candidates.Count == 1 ? candidates[0] : Closest(modelDir, adapterDir, runtime, probeIds, candidates, warn);
        using var model = ModelSessions.LoadWithAdapter(modelDir, adapterDir, runtime, null, chosen);
        string method = chosen.Method + (label is null ? "" : $" (merge {label})");
        double maxDiff, meanDiff, scale;
        int merged;
        using (torch.no_grad())
        {
            using var before = model.forward(probeIds).to_type(ScalarType.Float32);
            merged = AdapterModel.MergeAll(model);
            using var after = model.forward(probeIds).to_type(ScalarType.Float32);
            using var diff = (after - before).abs();
            maxDiff = diff.max().item<float>();
            meanDiff = diff.mean().item<float>();
            scale = before.abs().max().item<float>();
        }
        var weights = model.BaseParameters().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value));
        ModelFolder.SaveNew(outDir, model.Config, weights, companionsFrom: modelDir, ModelFolder.ShardSizeOf(modelDir));
        return new MergeReport(method, merged, maxDiff, meanDiff, scale, Path.GetFullPath(outDir));
    }

    /// <summary>Measures each candidate merge on the probe and keeps the one with the smallest max |Δlogit|.</summary>
    private static (string? Label, AdapterConfigBase Config) Closest(string modelDir, string adapterDir, RuntimeOptions runtime, Tensor probeIds,
        IReadOnlyList<(string? Label, AdapterConfigBase Config)> candidates, Action<string>? warn)
    {
        var best = candidates[0];
        double bestDiff = double.MaxValue;
        foreach (var c in candidates)
        {
            using var model = ModelSessions.LoadWithAdapter(modelDir, adapterDir, runtime, null, c.Config);
            using var noGrad = torch.no_grad();
            using var before = model.forward(probeIds);
            AdapterModel.MergeAll(model);
            using var after = model.forward(probeIds);
            double d = (after - before).abs().max().item<float>();
            warn?.Invoke($"merge {c.Label}: max |Δlogit| {d:0.###e0}");
            if (d < bestDiff) (best, bestDiff) = (c, d);
        }
        return best;
    }
}
