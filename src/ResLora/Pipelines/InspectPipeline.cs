using ResLora.IO;
using ResLora.Models;
using ResLora.Quantization;
using ResLora.Training;

namespace ResLora.Pipelines;

/// <summary>A linear module of a model (or a group of same-named ones): what adapters target.</summary>
public sealed record LinearModuleInfo(string Name, long Out, long In, int Count);

/// <summary>What <c>reslora inspect</c> shows: the config, parameter counts, the linear modules.</summary>
public sealed record ModelSummary(ModelConfig Config, long Parameters, long LinearParameters, IReadOnlyList<LinearModuleInfo> Linears);

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

    /// <summary>Kurtosis of every decoder linear's input over up to 32 texts of <paramref name="dataPath"/> (RoLoRA's outlier measure; Gaussian = 3).</summary>
    public static IReadOnlyList<(string Module, double Kurtosis)> Kurtosis(string modelDir, string dataPath, RuntimeOptions runtime)
    {
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
