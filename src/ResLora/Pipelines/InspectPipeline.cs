using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Models.Encoders;
using ResLora.Quantization;
using ResLora.Text;
using ResLora.Training;

namespace ResLora.Pipelines;

/// <summary>A linear module of a model (or a group of same-named ones): what adapters target.</summary>
public sealed record LinearModuleInfo(string Name, long Out, long In, int Count);

/// <summary>What <c>reslora inspect</c> shows: the config, parameter counts, the linear modules.</summary>
public sealed record ModelSummary(ModelConfig Config, long Parameters, long LinearParameters, IReadOnlyList<LinearModuleInfo> Linears);

/// <summary>
/// What <c>reslora inspect</c> shows for a BERT-family encoder folder: the config, the stored dtype, parameter counts (what
/// <c>train --task classify</c> loads), and the encoder's linear modules by the name <c>--targets</c> takes.
/// </summary>
public sealed record EncoderSummary(EncoderConfig Config, string StoredDtype, bool HasPooler, bool HasHead, long Parameters, long LinearParameters, IReadOnlyList<LinearModuleInfo> Linears);

/// <summary>What <c>reslora inspect --check</c> found: how much was read, and every problem by file and tensor.</summary>
public sealed record WeightCheckReport(int Tensors, long Bytes, IReadOnlyList<TensorProblem> Problems)
{
    public bool Clean => Problems.Count == 0;
}

/// <summary>The library functions behind <c>reslora inspect</c>.</summary>
public static class InspectPipeline
{
    /// <summary>Reads config.json and checks the stored weights against it, without building the model.</summary>
    public static ModelSummary Describe(string modelDir, bool groupByType = true)
    {
        var (c, ckpt, weights) = ModelFolder.OpenChecked(modelDir);
        ckpt.Dispose();
        long total = weights.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b));
        var linears = weights
            .Where(kv => kv.Key.EndsWith(".weight", StringComparison.Ordinal) && kv.Value.Length == 2 && !kv.Key.Contains("embed_tokens", StringComparison.Ordinal))
            .Select(kv => new LinearModuleInfo(kv.Key[..^".weight".Length], kv.Value[0], kv.Value[1], 1))
            .ToList();
        long linear = linears.Sum(l => l.Out * l.In);
        IReadOnlyList<LinearModuleInfo> shown = groupByType
            ? linears.GroupBy(x => (Type: x.Name.Split('.')[^1], x.Out, x.In)).Select(g => new LinearModuleInfo(g.Key.Type, g.Key.Out, g.Key.In, g.Count())).ToList()
            : linears;
        return new ModelSummary(c, total, linear, shown);
    }

    /// <summary>
    /// An encoder folder's summary, from config.json and the safetensors headers (checked against each other as for
    /// training; nothing model-sized is read). Grouped, each linear kind of the encoder layers is named by the shortest
    /// <c>--targets</c> entry that selects exactly that kind (query, key, value, attention.output.dense,
    /// intermediate.dense; the feed-forward output, whose dotted suffix "output.dense" would also select
    /// attention.output.dense, by a regex); ungrouped, every linear by its module path. Only encoder-layer linears are
    /// adapter targets (the pooler and classifier stay plain and are trained whole).
    /// </summary>
    public static EncoderSummary DescribeEncoder(string modelDir, bool groupByType = true)
    {
        var (config, ckpt, layout, expected) = EncoderLoader.OpenChecked(modelDir, null, refuseNonFloat: true);
        using var _ = ckpt;
        long total = expected.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b));
        string dtype = SafetensorsDtypes.ToScalarType(ckpt.EntryOf(layout.Prefix + "embeddings.word_embeddings.weight").Dtype) switch
        {
            ScalarType.BFloat16 => "bfloat16",
            ScalarType.Float16 => "float16",
            ScalarType.Float32 => "float32",
            var other => other.ToString().ToLowerInvariant(),
        };
        // Module paths as the classification model names them (what --targets is matched against).
        var linears = EncoderFamilies.Of(config).EncoderWeights(config)
            .Where(kv => kv.Key.StartsWith("encoder.layer.", StringComparison.Ordinal) && kv.Key.EndsWith(".weight", StringComparison.Ordinal) && kv.Value.Length == 2)
            .Select(kv => new LinearModuleInfo(config.BaseModelPrefix + "." + kv.Key[..^".weight".Length], kv.Value[0], kv.Value[1], 1))
            .ToList();
        long linear = linears.Sum(l => l.Out * l.In);
        IReadOnlyList<LinearModuleInfo> shown = groupByType ? GroupAsTargets(linears) : linears;
        return new EncoderSummary(config, dtype, layout.HasPooler, layout.HasHead, total, linear, shown);
    }

    /// <summary>Groups module paths by kind (the path after "layer.N."), each named by the shortest target entry selecting exactly that kind.</summary>
    private static List<LinearModuleInfo> GroupAsTargets(IReadOnlyList<LinearModuleInfo> linears)
    {
        static string Kind(string path) => System.Text.RegularExpressions.Regex.Replace(path, @"^.*\.layer\.\d+\.", "");
        var all = linears.Select(l => l.Name).ToList();
        var result = new List<LinearModuleInfo>();
        foreach (var g in linears.GroupBy(l => (Kind: Kind(l.Name), l.Out, l.In)))
        {
            var members = g.Select(l => l.Name).ToHashSet(StringComparer.Ordinal);
            string[] parts = g.Key.Kind.Split('.');
            string? name = null;
            for (int n = 1; n <= parts.Length && name is null; n++)
            {
                string suffix = string.Join('.', parts[^n..]);
                var target = ModuleTargets.List(suffix);
                if (all.All(p => target.Matches(new LinearSpec(p, "", 0, 0, 0, false)) == members.Contains(p))) name = suffix;
            }
            name ??= @".*\.layer\.\d+\." + System.Text.RegularExpressions.Regex.Escape(g.Key.Kind);
            result.Add(new LinearModuleInfo(name, g.Key.Out, g.Key.In, g.Count()));
        }
        return result;
    }

    /// <summary>
    /// Reads every stored tensor once (one at a time) and reports what the headers cannot show: weights the model needs as
    /// floats stored as integers, and NaN/±∞ values, counted per tensor; with <paramref name="adapterDir"/>, the adapter's
    /// tensors too. Structural problems (config.json against the shapes, a malformed file) are errors, as for every load.
    /// </summary>
    public static WeightCheckReport CheckWeights(string modelDir, string? adapterDir = null)
    {
        var (ckpt, expected) = Classification.IsEncoderFolder(modelDir)
            ? Encoder(EncoderLoader.OpenChecked(modelDir, null, refuseNonFloat: false))
            : Decoder(ModelFolder.OpenChecked(modelDir, null, refuseNonFloat: false));
        static (HfCheckpoint, IReadOnlyDictionary<string, long[]>) Encoder((EncoderConfig, HfCheckpoint C, EncoderCheckpointLayout, IReadOnlyDictionary<string, long[]> E) o) => (o.C, o.E);
        static (HfCheckpoint, IReadOnlyDictionary<string, long[]>) Decoder((ModelConfig, HfCheckpoint C, IReadOnlyDictionary<string, long[]> E) o) => (o.C, o.E);
        using var _ = ckpt;
        var problems = LoadChecks.NonFloatWeights(ckpt, expected).ToList();
        problems.AddRange(TensorScan.NonFinite(ckpt));
        int tensors = ckpt.Count;
        long bytes = ckpt.Names.Sum(n => ckpt.EntryOf(n).ByteLength);
        if (adapterDir is not null)
        {
            string path = Path.Combine(adapterDir, AdapterFolder.WeightsFileName);
            using var file = SafetensorsFile.Open(path);
            problems.AddRange(file.Entries.Where(e => !TensorScan.IsFloat(e.Dtype)).OrderBy(e => e.Name, StringComparer.Ordinal)
                .Select(e => new TensorProblem(path, e.Name, $"stored as {e.Dtype}; adapter tensors must be F32, F16 or BF16")));
            problems.AddRange(TensorScan.NonFinite(file));
            tensors += file.Entries.Count;
            bytes += file.Entries.Sum(e => e.ByteLength);
        }
        return new WeightCheckReport(tensors, bytes, problems);
    }

    /// <summary>
    /// <c>--check-weights</c> of train and merge: refuses a base model whose tensors hold NaN/±∞ or integer-typed weights
    /// (<see cref="CheckWeights"/>), in one line naming the first problems and the command that lists them all.
    /// </summary>
    public static void RequireCleanWeights(string modelDir)
    {
        var r = CheckWeights(modelDir);
        if (r.Clean) return;
        throw new UserInputException($"--check-weights: {r.Problems.Count} tensor problem(s) in {modelDir}: {string.Join("; ", r.Problems.Take(3))}{(r.Problems.Count > 3 ? "; ..." : "")}. `reslora inspect --model {modelDir} --check` lists them all.");
    }

    /// <summary>Kurtosis of every decoder linear's input over up to 32 texts of <paramref name="dataPath"/> (RoLoRA's outlier measure; Gaussian = 3).</summary>
    public static IReadOnlyList<(string Module, double Kurtosis)> Kurtosis(string modelDir, string dataPath, RuntimeOptions runtime)
    {
        if (Classification.IsEncoderFolder(modelDir))
            throw new UserInputException($"--kurtosis measures the inputs of LLaMA-family decoder linears (RoLoRA's outlier measure); {modelDir} is an encoder. Drop --kurtosis.");
        var tok = TokenizerLoader.Load(modelDir);
        var batches = QuantizeFolder.CalibrationBatches(tok, DataSet.Load(dataPath).Select(e => e.Prompt + e.Completion), 256, 32);
        try
        {
            using var m = ModelSessions.LoadBase(modelDir, runtime);
            return ModelQuantizer.InputKurtosis(m, batches);
        }
        finally
        {
            foreach (var b in batches) b.Dispose();
        }
    }
}
