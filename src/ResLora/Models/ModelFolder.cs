using ResLora.IO;

namespace ResLora.Models;

/// <summary>
/// A Hugging Face model folder as the model layer sees it: <c>config.json</c> (a <see cref="ModelConfig"/>) beside the
/// safetensors weights that <see cref="HfCheckpoint"/> reads and writes.
/// </summary>
public static class ModelFolder
{
    public const string ConfigFile = "config.json";

    /// <summary>Reads and validates <c>config.json</c>; a missing folder is named before a missing file.</summary>
    public static ModelConfig LoadConfig(string modelDir)
    {
        InputPaths.ExistingModelFolder(modelDir, flag: null);
        return ModelConfig.Load(Path.Combine(modelDir, ConfigFile));
    }

    /// <summary>
    /// Writes <c>config.json</c> (with <c>torch_dtype</c> set to the weights' dtype) and the weights, one file or shards of
    /// at most <paramref name="maxShardBytes"/>; each file atomically.
    /// </summary>
    public static void Save(string modelDir, ModelConfig config, IEnumerable<KeyValuePair<string, Tensor>> weights, long maxShardBytes = 2L << 30)
    {
        string dtype = HfCheckpoint.SaveWeights(modelDir, weights, maxShardBytes);
        AtomicFile.WriteAllText(Path.Combine(modelDir, ConfigFile), (config with { TorchDtype = dtype }).ToJson());
    }

    /// <summary>As above, with weights made one at a time while they are written (<see cref="LazyTensor"/>).</summary>
    public static void Save(string modelDir, ModelConfig config, IReadOnlyList<LazyTensor> weights, long maxShardBytes = 2L << 30)
    {
        string dtype = HfCheckpoint.SaveWeights(modelDir, weights, maxShardBytes);
        AtomicFile.WriteAllText(Path.Combine(modelDir, ConfigFile), (config with { TorchDtype = dtype }).ToJson());
    }

    /// <summary>Writes a whole model folder atomically (see <see cref="AtomicFolder"/>), tokenizer files copied from <paramref name="companionsFrom"/>.</summary>
    public static void SaveNew(string outDir, ModelConfig config, IEnumerable<KeyValuePair<string, Tensor>> weights, string? companionsFrom, long maxShardBytes = 2L << 30) =>
        AtomicFolder.Write(outDir, tmp => Save(tmp, config, weights, maxShardBytes), companionsFrom);

    /// <summary>
    /// The config and the open checkpoint, checked against each other before anything model-sized is allocated: a layer
    /// count beyond the stored tensors, and every missing, unexpected or mis-shaped tensor, is an error naming config.json;
    /// a weight stored as integers (<see cref="LoadChecks.RefuseNonFloat"/>) is an error naming it.
    /// Returns the expected base weights (name → shape). The caller disposes the checkpoint. With <paramref name="loadAs"/>
    /// (the dtype the weights will be loaded as, in host memory), a load whose weights alone exceed the memory left is
    /// refused too (<see cref="LoadChecks.EnsureFitsInMemory"/>).
    /// </summary>
    public static (ModelConfig Config, HfCheckpoint Checkpoint, IReadOnlyDictionary<string, long[]> Expected) OpenChecked(string modelDir, ScalarType? loadAs = null) =>
        OpenChecked(modelDir, loadAs, refuseNonFloat: true);

    /// <summary>As above; <c>inspect --check</c> reports integer-typed weights instead of refusing them.</summary>
    internal static (ModelConfig Config, HfCheckpoint Checkpoint, IReadOnlyDictionary<string, long[]> Expected) OpenChecked(string modelDir, ScalarType? loadAs, bool refuseNonFloat)
    {
        var config = LoadConfig(modelDir);
        var ckpt = HfCheckpoint.Open(modelDir);
        try
        {
            if (config.NumHiddenLayers > ckpt.Count)
                throw new UserInputException($"{Path.Combine(modelDir, ConfigFile)}: 'num_hidden_layers' is {config.NumHiddenLayers}, but the checkpoint stores only {ckpt.Count} tensors; check that config.json belongs to these weights.");
            var expected = ModelFamilies.ExpectedWeights(config);
            ckpt.ValidateAgainst(expected, name => config.TieWordEmbeddings && name == "lm_head.weight",
                $"{ModelFamilies.ForCausalLM(config.ModelType).Name}-family layout for model_type '{config.ModelType}'");
            if (refuseNonFloat) LoadChecks.RefuseNonFloat(ckpt, expected);
            if (loadAs is { } dtype) LoadChecks.EnsureFitsInMemory(modelDir, expected, dtype);
            return (config, ckpt, expected);
        }
        catch
        {
            ckpt.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The config and every base weight the config implies (checked against the stored tensors), loaded as
    /// <paramref name="dtype"/> on the CPU; for whole-model transforms (rotation, outlier planting). Caller disposes.
    /// </summary>
    public static (ModelConfig Config, Dictionary<string, Tensor> Weights) LoadBaseWeights(string modelDir, ScalarType dtype)
    {
        var (config, ckpt, expected) = OpenChecked(modelDir, dtype);
        using var _ = ckpt;
        return (config, expected.Keys.ToDictionary(k => k, k => ckpt.Load(k, dtype), StringComparer.Ordinal));
    }

    /// <summary>The largest shard's size when the folder is sharded (so a rewrite keeps its sharding), else unlimited.</summary>
    public static long ShardSizeOf(string modelDir)
    {
        var shards = Directory.GetFiles(modelDir, "*.safetensors");
        if (shards.Length <= 1) return long.MaxValue;
        return shards.Max(f => new FileInfo(f).Length);
    }
}
