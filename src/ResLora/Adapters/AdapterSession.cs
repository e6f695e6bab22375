using ResLora.IO;
using ResLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Adapters;

/// <summary>What merging measured: how far merged logits are from unmerged ones on a probe batch.</summary>
public sealed record MergeReport(string Method, int MergedModules, double MaxAbsDiff, double MeanAbsDiff, double LogitScale, string OutDir);

/// <summary>A base model with a saved adapter on top: loading it for generation/evaluation, and merging it into a new model folder.</summary>
public static class AdapterSession
{
    /// <summary>Builds the model with the adapter's plan (read from adapter_config.json) and loads the adapter tensors.</summary>
    public static LlamaForCausalLM LoadWithAdapter(string modelDir, string adapterDir, RuntimeOptions runtime, Action<string>? warn = null, Func<AdapterConfigBase, AdapterConfigBase>? adjust = null)
    {
        string cfgPath = Path.Combine(adapterDir, AdapterFolder.ConfigFileName);
        if (!Directory.Exists(adapterDir)) throw new DirectoryNotFoundException($"--adapter {adapterDir}: no such folder; pass a folder with {AdapterFolder.ConfigFileName} and {AdapterFolder.WeightsFileName}.");
        if (!File.Exists(cfgPath)) throw new FileNotFoundException($"{cfgPath}: not found; an adapter folder needs {AdapterFolder.ConfigFileName} and {AdapterFolder.WeightsFileName}.", cfgPath);
        var (config, warnings) = AdapterConfigJson.Parse(File.ReadAllText(cfgPath), cfgPath);
        foreach (var w in warnings) warn?.Invoke(w);
        if (adjust is not null) config = adjust(config);
        var plan = new AdapterPlan(config);
        var model = ModelLoader.Load(modelDir, runtime, plan);
        try
        {
            if (config is RoLoraConfig ro) ro.CheckModel(model.Config, adapterDir);
            plan.EnsureAllPatternsMatched();
            AdapterFolder.LoadInto(adapterDir, model);
            AdapterModel.FreezeAllButAdapters(model);
            model.eval();
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Loads model + adapter, measures logits on <paramref name="probeIds"/> (batch, seq) unmerged, merges every adapter
    /// into the base weights, measures again, and writes a complete Hugging Face folder: config, safetensors (sharded as
    /// the input was), tokenizer and generation files copied. The folder appears whole or not at all.
    /// </summary>
    public static MergeReport MergeToFolder(string modelDir, string adapterDir, string outDir, RuntimeOptions runtime, Tensor probeIds, Action<string>? warn = null, string? mergeKind = null)
    {
        if (Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any())
            throw new IOException($"--out {outDir} exists and is not empty; choose a new folder (merging never overwrites).");
        string? chosen = ChooseResLoraMerge(modelDir, adapterDir, runtime, probeIds, mergeKind, warn);
        Func<AdapterConfigBase, AdapterConfigBase>? adjust = chosen is null ? null : c => c is ResLoraConfig rc ? rc with { Merge = chosen } : c;
        using var model = LoadWithAdapter(modelDir, adapterDir, runtime, warn, adjust);
        string method = AdapterModel.FindAdapters(model).FirstOrDefault().Adapter?.Method ?? "none";
        if (chosen is not null) method += $" (merge {chosen})";
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
        string full = Path.GetFullPath(outDir);
        string parent = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(parent);
        string tmp = Path.Combine(parent, $".{Path.GetFileName(full)}.tmp-{Guid.NewGuid():N}");
        try
        {
            var weights = model.BaseParameters().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value));
            HfCheckpoint.Save(tmp, model.Config, weights, ShardSizeOf(modelDir));
            foreach (var name in new[] { "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "added_tokens.json", "vocab.json", "merges.txt" })
            {
                string src = Path.Combine(modelDir, name);
                if (File.Exists(src)) File.Copy(src, Path.Combine(tmp, name));
            }
            if (Directory.Exists(full)) Directory.Delete(full);
            Directory.Move(tmp, full);
        }
        finally
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        }
        return new MergeReport(method, merged, maxDiff, meanDiff, scale, full);
    }

    /// <summary>
    /// For ResLoRA adapters: the merge to use. An explicit <paramref name="requested"/> kind wins; "auto" (requested or
    /// saved in the adapter) measures every candidate on the probe and keeps the one with the smallest max |Δlogit|.
    /// Null for other methods.
    /// </summary>
    public static string? ChooseResLoraMerge(string modelDir, string adapterDir, RuntimeOptions runtime, Tensor probeIds, string? requested, Action<string>? warn = null)
    {
        string cfgPath = Path.Combine(adapterDir, AdapterFolder.ConfigFileName);
        if (!File.Exists(cfgPath)) return null;
        var (config, _) = AdapterConfigJson.Parse(File.ReadAllText(cfgPath), cfgPath);
        if (config is not ResLoraConfig rc)
        {
            if (requested is not null) throw new ArgumentException($"--merge applies to ResLoRA adapters only; {adapterDir} holds a {config.Method} adapter.");
            return null;
        }
        string kind = (requested ?? rc.Merge).ToLowerInvariant();
        if (kind != "auto")
        {
            _ = (rc with { Merge = kind }).MergeKind; // validates the name for this structure
            return kind;
        }
        string best = rc.MergeCandidates[0];
        double bestDiff = double.MaxValue;
        foreach (var candidate in rc.MergeCandidates)
        {
            using var model = LoadWithAdapter(modelDir, adapterDir, runtime, null, c => ((ResLoraConfig)c) with { Merge = candidate });
            using var noGrad = torch.no_grad();
            using var before = model.forward(probeIds);
            AdapterModel.MergeAll(model);
            using var after = model.forward(probeIds);
            double d = (after - before).abs().max().item<float>();
            warn?.Invoke($"merge {candidate}: max |Δlogit| {d:0.###e0}");
            if (d < bestDiff) (best, bestDiff) = (candidate, d);
        }
        return best;
    }

    /// <summary>Keeps the input's sharding: a single file stays single; sharded inputs keep their largest shard's size as the limit.</summary>
    private static long ShardSizeOf(string modelDir)
    {
        var shards = Directory.GetFiles(modelDir, "*.safetensors");
        if (shards.Length <= 1) return long.MaxValue;
        return shards.Max(f => new FileInfo(f).Length);
    }
}
