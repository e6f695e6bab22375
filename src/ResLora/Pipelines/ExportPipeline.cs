using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Text;

namespace ResLora.Pipelines;

/// <summary>How <c>reslora export --as lora</c> exports.</summary>
public sealed record ExportOptions
{
    /// <summary>The rank of the truncated SVD for adapters that are not low-rank pairs (DoRA, LoHa, LoKr, AdaLoRA, IA3).</summary>
    public int Rank { get; init; } = 16;
    public FoldingTextOptions Texts { get; init; } = new();
    /// <summary>ResLoRA is/ms: distillation steps after the least-squares fold (0 = off).</summary>
    public int DistillSteps { get; init; }
    public double DistillLearningRate { get; init; } = Distillation.DefaultLearningRate;
}

/// <summary>What an export did and how close the exported LoRA stays to the original adapter on held-out text.</summary>
public sealed record ExportReport
{
    public const string FileName = "heldout_report.json";

    [JsonPropertyName("method")] public string Method { get; init; } = "";
    /// <summary>
    /// "exact" only when the exported LoRA's ΔW equals the adapter's by construction (LoRA/RefLoRA copied, ResLoRA bs
    /// concatenated); "approximate" otherwise (ResLoRA is/ms fitted, SVD), with the measured closeness in <see cref="HeldOut"/>.
    /// </summary>
    [JsonPropertyName("mode")] public string Mode { get; init; } = "";
    /// <summary>How: copy (already LoRA), concat (ResLoRA bs), ls / ls+distill (ResLoRA is/ms least-squares fold), svd (others).</summary>
    [JsonPropertyName("route")] public string Route { get; init; } = "";
    [JsonPropertyName("rank")] public int? Rank { get; init; }
    [JsonPropertyName("out_dir")] public string OutDir { get; init; } = "";
    [JsonPropertyName("min_energy_kept")] public double MinEnergyKept { get; init; }
    [JsonPropertyName("mean_energy_kept")] public double MeanEnergyKept { get; init; }
    [JsonPropertyName("held_out")] public ComparisonReport? HeldOut { get; init; }
    [JsonPropertyName("held_out_source")] public string HeldOutSource { get; init; } = "none";
    [JsonPropertyName("calibration_source")] public string CalibrationSource { get; init; } = "none";
    [JsonPropertyName("fold")] public FoldReport? Fold { get; init; }
    [JsonPropertyName("notes")] public IReadOnlyList<string> Notes { get; init; } = Array.Empty<string>();

    public bool IsExact => Mode == "exact";

    /// <summary>One line naming what was done: exact or approximate, and the route actually taken.</summary>
    public string Describe()
    {
        var ci = System.Globalization.CultureInfo.InvariantCulture;
        string how = Route switch
        {
            "copy" => "the LoRA pairs copied",
            "concat" => "ResLoRA bs: each block's factors concatenated (ΔW = s·Σ B·A, one pair)",
            "annealed" => "shortcuts annealed to 0: each block's own LoRA pair",
            "ls" => $"ResLoRA: residual paths folded by the least-squares fit on {Fold?.CalibrationTokens.ToString(ci) ?? "?"} calibration tokens",
            "ls+distill" => $"ResLoRA: residual paths folded by the least-squares fit on {Fold?.CalibrationTokens.ToString(ci) ?? "?"} calibration tokens, then {Fold?.DistillSteps.ToString(ci) ?? "?"} distillation steps",
            "svd" => string.Create(ci, $"truncated SVD of ΔW at rank {Rank}, energy kept: min {MinEnergyKept:P2}, mean {MeanEnergyKept:P2}"),
            _ => Route,
        };
        return $"exported {Method} as LoRA into {OutDir}: {Mode} ({how})";
    }
}

/// <summary>
/// The library function behind <c>reslora export --as lora</c>: any adapter leaves as a PEFT LORA folder that every
/// LoRA server loads. LoRA and RefLoRA are copied; ResLoRA bs exactly as concatenated factors of rank r·(m+1); ResLoRA
/// is/ms through the least-squares fold (and distillation); DoRA, LoHa, LoKr, AdaLoRA and IA3 through a truncated SVD
/// of ΔW, reporting the energy kept. RoLoRA is refused: its adapter is valid only on its rotated base.
/// </summary>
public static class ExportPipeline
{
    public static ExportReport AsLora(string modelDir, string adapterDir, string outDir, RuntimeOptions runtime, ExportOptions options, Action<string>? warn = null)
    {
        if (options.Rank < 1) throw new UserInputException($"--rank must be at least 1, got {options.Rank}.");
        if (Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any())
            throw new IOException($"--out {outDir} exists and is not empty; choose a new folder (exporting never overwrites).");
        var config = ModelSessions.ReadAdapterConfig(adapterDir, warn);
        var method = AdapterMethods.For(config);
        method.CheckLoraExport(config, adapterDir);
        bool fold = method.ExportsByCalibratedFold(config);
        if (options.DistillSteps > 0 && !fold)
            throw new UserInputException("--distill trains the least-squares LoRA of a ResLoRA is/ms adapter; this adapter exports without fitting.");
        var texts = FoldingTexts.Resolve(adapterDir, options.Texts, needCalibration: fold);
        var tokenizer = TokenizerLoader.Load(modelDir);
        int pad = FoldingTexts.PadId(tokenizer);

        using var reference = ModelSessions.LoadWithAdapter(modelDir, adapterDir, runtime, out var plan, null, config);
        var adapters = AdapterModel.ByModulePath(reference);
        CausalLM? student = null;
        FoldReport? foldReport = null;
        string route;
        LoraExportResult result;
        try
        {
            if (fold)
            {
                var calib = FoldingTexts.Tokenize(texts.Calibration, tokenizer, options.Texts.SeqLen, "calibration");
                (student, foldReport) = CalibratedFolding.ToLora(reference, plan, modelDir, runtime, calib, pad, options.DistillSteps, distillLearningRate: options.DistillLearningRate,
                distillation: options.DistillSteps > 0 ? FoldingTexts.Tokenize(texts.Distillation, tokenizer, options.Texts.SeqLen, "distillation") : null);
                route = foldReport.Kind;
                // The pairs are re-saved exactly, but they are a fit of the adapter's model, not equal to it: approximate.
                string how = $"{method.CalibratedFold(plan).Description} ({route}, {foldReport.CalibrationTokens} calibration tokens"
                    + (foldReport.DistillSteps > 0 ? $", then {foldReport.DistillSteps} distillation steps" : "")
                    + $"); an approximation of the unmerged adapter, measured on held-out text in {ExportReport.FileName}.";
                var fitted = LoraExport.FromLowRankPairs(AdapterModel.ByModulePath(student).ToDictionary(kv => kv.Key, kv => (ILowRankPair)kv.Value, StringComparer.Ordinal), config);
                result = fitted with { Mode = "approximate", Notes = fitted.Notes.Prepend(how).ToList() }; // the same tensors, one owner
            }
            else if (method.ExactLoraPairs(plan) is { } exact)
            {
                result = LoraExport.FromLowRankPairs(exact, config);
                route = method.ExactLoraPairsRoute(config);
            }
            else if (adapters.Values.All(a => a.GetType() == typeof(LoraLinear)))
            {
                result = LoraExport.FromLowRankPairs(adapters.ToDictionary(kv => kv.Key, kv => (ILowRankPair)kv.Value, StringComparer.Ordinal), config);
                route = "copy";
            }
            else
            {
                result = LoraExport.FromDeltaWeights(adapters, options.Rank, config);
                route = "svd";
            }
        }
        finally
        {
            student?.Dispose();
        }
        // Fully trained modules (modules_to_save) travel as they are: the reference model holds the adapter's copies.
        var saved = config.ModulesToSave is { Count: > 0 }
            ? AdapterFolder.SavedModuleWeights(config, reference).ToDictionary(kv => kv.Key, kv => kv.Value.detach().to_type(ScalarType.Float32).cpu().contiguous().clone(), StringComparer.Ordinal)
            : new Dictionary<string, Tensor>();
        var notes = saved.Count == 0 ? result.Notes : result.Notes.Append($"modules_to_save ({string.Join(", ", config.ModulesToSave!)}): the fully trained weights are copied as they are ({string.Join(", ", saved.Keys)}).").ToList();
        result = result with { Route = route, SavedModules = saved, Notes = notes }; // the same tensors, one owner
        using (result)
        {
            LoraExport.Save(result, outDir);
            ComparisonReport? held = null;
            if (texts.HeldOut.Count > 0)
            {
                using var exported = ModelSessions.LoadWithAdapter(modelDir, outDir, runtime);
                held = ModelComparison.Compare(reference, exported, tokenizer, texts.HeldOut, options.Texts.SeqLen);
                LoraExport.WriteReport(result with { HeldOut = held }, outDir);
            }
            var report = new ExportReport
            {
                Method = config.Method,
                Mode = result.Mode,
                Route = route,
                Rank = result.RequestedRank,
                OutDir = Path.GetFullPath(outDir),
                MinEnergyKept = result.MinEnergyKept,
                MeanEnergyKept = result.MeanEnergyKept,
                HeldOut = held,
                HeldOutSource = texts.HeldOutSource,
                CalibrationSource = fold ? texts.CalibrationSource : "none",
                Fold = foldReport,
                Notes = result.Notes,
            };
            AtomicFile.WriteAllText(Path.Combine(outDir, ExportReport.FileName), JsonSerializer.Serialize(report, IO.Json.ReportJson.IndentedSkipNulls));
            return report;
        }
    }
}
