using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Text;
using ResLora.Training;

namespace ResLora.Pipelines;

/// <summary>How <c>reslora merge</c> merges: the ResLoRA merge kind, the calibration and held-out texts, distillation.</summary>
public sealed record MergeOptions
{
    /// <summary>ResLoRA only: bi, bw, a, ls or auto; null = the adapter's saved choice.</summary>
    public string? MergeKind { get; init; }
    public FoldingTextOptions Texts { get; init; } = new();
    /// <summary>With the ls merge: train the least-squares LoRA this many steps towards the unmerged model (0 = off).</summary>
    public int DistillSteps { get; init; }
    public double DistillLearningRate { get; init; } = Distillation.DefaultLearningRate;
    /// <summary>
    /// The dtype of the weights written: null or "auto" = the base's stored dtype (a bf16 base stays bf16), else float32,
    /// bfloat16 or float16. The merge itself is computed in the runtime dtype (float32 by default) and rounded once, when written.
    /// </summary>
    public string? OutputDtype { get; init; }
}

/// <summary>One merge that was tried: its label, how close it stays to the unmerged model, what folding it took.</summary>
public sealed record MergeCandidateReport(
    [property: JsonPropertyName("merge")] string Label,
    [property: JsonPropertyName("held_out")] ComparisonReport? HeldOut,
    [property: JsonPropertyName("probe_max_abs_logit_diff")] double ProbeMaxAbsDiff,
    [property: JsonPropertyName("fold")] FoldReport? Fold);

/// <summary>What merging measured: how far merged logits are from unmerged ones on a probe batch and on held-out text.</summary>
public sealed record MergeReport(string Method, int MergedModules, double MaxAbsDiff, double MeanAbsDiff, double LogitScale, string OutDir)
{
    /// <summary>The chosen merge on held-out text (null when no held-out text was available).</summary>
    public ComparisonReport? HeldOut { get; init; }
    public string HeldOutSource { get; init; } = "none";
    /// <summary>
    /// Set when the base was loaded packed (--base-bits): the adapter was merged into the dequantized weights, and the
    /// folder holds those in full precision (they differ from the original base by the quantization error).
    /// </summary>
    public string? QuantizedBase { get; init; }
    public string CalibrationSource { get; init; } = "none";
    /// <summary>Every merge tried (one unless --merge auto); the chosen one has the smallest held-out KL (probe difference without held-out text).</summary>
    public IReadOnlyList<MergeCandidateReport> Candidates { get; init; } = Array.Empty<MergeCandidateReport>();
    /// <summary>The dtype of the weights written (config.json's torch_dtype): float32, bfloat16 or float16.</summary>
    public string Dtype { get; init; } = "float32";
    /// <summary>Where <see cref="Dtype"/> came from: "the base's stored dtype" or "--out-dtype".</summary>
    public string DtypeSource { get; init; } = "";

    public const string FileName = "merge_report.json";
}

/// <summary>The library function behind <c>reslora merge</c>: a base model plus an adapter folder → a new model folder.</summary>
public static class MergePipeline
{
    /// <summary>
    /// Loads model + adapter, merges it into the base weights (each candidate merge when the method offers several, e.g.
    /// ResLoRA's --merge auto, keeping the one closest to the unmerged model on held-out text), and writes a complete
    /// Hugging Face folder: config, safetensors (sharded as the input was), tokenizer files, and <see cref="MergeReport.FileName"/>
    /// with the measurements. The folder appears whole or not at all.
    /// </summary>
    public static MergeReport MergeToFolder(string modelDir, string adapterDir, string outDir, RuntimeOptions runtime, Tensor probeIds, Action<string>? warn = null, string? mergeKind = null) =>
        MergeToFolder(modelDir, adapterDir, outDir, runtime, probeIds, new MergeOptions { MergeKind = mergeKind }, warn);

    public static MergeReport MergeToFolder(string modelDir, string adapterDir, string outDir, RuntimeOptions runtime, Tensor probeIds, MergeOptions options, Action<string>? warn = null)
    {
        AtomicFolder.CheckWritable(outDir, modelDir: modelDir); // before the merge's work, not after it
        return Run(modelDir, adapterDir, runtime, probeIds, options, warn, (chosen, report) =>
        {
            var result = report with { OutDir = Path.GetFullPath(outDir) };
            AtomicFolder.Write(outDir, tmp =>
            {
                // A packed base is written dequantized (with the merged ΔW), one full-precision copy while saving.
                // Each weight is rounded to the output dtype once, while it is written (one converted tensor at a time).
                using var scope = torch.NewDisposeScope();
                var dtype = result.Dtype switch { "bfloat16" => ScalarType.BFloat16, "float16" => ScalarType.Float16, _ => ScalarType.Float32 };
                var weights = chosen.FullPrecisionWeights()
                    .Select(kv => new LazyTensor(kv.Key, dtype, kv.Value.shape, () => kv.Value.to_type(dtype)))
                    .ToList();
                ModelFolder.Save(tmp, chosen.Config, weights, ModelFolder.ShardSizeOf(modelDir));
                AtomicFile.WriteAllText(Path.Combine(tmp, MergeReport.FileName), JsonSerializer.Serialize(result, IO.Json.ReportJson.IndentedSkipNulls));
            }, companionsFrom: modelDir);
            return result;
        });
    }

    /// <summary>Everything <see cref="MergeToFolder(string, string, string, RuntimeOptions, Tensor, MergeOptions, Action{string}?)"/> measures, without writing a folder (OutDir is empty).</summary>
    public static MergeReport Measure(string modelDir, string adapterDir, RuntimeOptions runtime, Tensor probeIds, MergeOptions options, Action<string>? warn = null) =>
        Run(modelDir, adapterDir, runtime, probeIds, options, warn, (_, report) => report);

    /// <summary>Merges as <see cref="MergeToFolder(string, string, string, RuntimeOptions, Tensor, MergeOptions, Action{string}?)"/> does and hands the merged model (in memory) to <paramref name="use"/> instead of writing a folder.</summary>
    public static MergeReport MergeInMemory(string modelDir, string adapterDir, RuntimeOptions runtime, Tensor probeIds, MergeOptions options, Action<CausalLM, MergeReport> use, Action<string>? warn = null) =>
        Run(modelDir, adapterDir, runtime, probeIds, options, warn, (merged, report) => { use(merged, report); return report; });

    private static MergeReport Run(string modelDir, string adapterDir, RuntimeOptions runtime, Tensor probeIds, MergeOptions options, Action<string>? warn,
        Func<CausalLM, MergeReport, MergeReport> finish)
    {
        var (outDtype, dtypeSource) = OutputDtype(modelDir, options.OutputDtype);
        var config = ModelSessions.ReadAdapterConfig(adapterDir, warn);
        var adapterMethod = AdapterMethods.For(config);
        var candidates = adapterMethod.MergeCandidates(config, options.MergeKind);
        bool fits = candidates.Any(c => adapterMethod.MergesByCalibratedFold(c.Config));
        if (options.DistillSteps > 0 && !fits)
            throw new UserInputException("--distill trains the least-squares LoRA of a ResLoRA is/ms adapter; use it with --merge ls (or auto).");
        var texts = FoldingTexts.Resolve(adapterDir, options.Texts, needCalibration: fits);
        // The tokenizer is needed only for text (calibration, held-out); the probe is given as ids.
        var tokenizer = fits || texts.HeldOut.Count > 0 ? TokenizerLoader.Load(modelDir) : null;
        int pad = tokenizer is null ? 0 : FoldingTexts.PadId(tokenizer);

        using var reference = ModelSessions.LoadWithAdapter(modelDir, adapterDir, runtime, out var referencePlan, null, config);
        Tensor referenceProbe;
        using (torch.no_grad()) referenceProbe = reference.forward(probeIds).to_type(ScalarType.Float32).DetachFromDisposeScope();
        using var _ = referenceProbe;
        var tried = new List<MergeCandidateReport>();
        CausalLM? best = null;
        (string? Label, double Score, MergeCandidateReport Report) bestInfo = (null, double.MaxValue, null!);
        try
        {
            foreach (var (label, candidate) in candidates)
            {
                var (merged, fold) = MergedCandidate(adapterMethod, modelDir, adapterDir, runtime, candidate, reference, referencePlan, texts, tokenizer, pad, options);
                double probeDiff;
                using (torch.no_grad())
                using (var after = merged.forward(probeIds).to_type(ScalarType.Float32))
                    probeDiff = (after - referenceProbe).abs().max().item<float>();
                var held = tokenizer is not null && texts.HeldOut.Count > 0 ? ModelComparison.Compare(reference, merged, tokenizer, texts.HeldOut, options.Texts.SeqLen) : null;
                var report = new MergeCandidateReport(label ?? config.Method, held, probeDiff, fold);
                tried.Add(report);
                if (candidates.Count > 1)
                    warn?.Invoke($"merge {report.Label}: " + (held is null ? $"max |Δlogit| on the probe {probeDiff:0.###e0}" : ModelComparison.Describe(held)));
                double score = held?.MeanKl ?? probeDiff;
                if (score < bestInfo.Score || best is null)
                {
                    best?.Dispose();
                    best = merged;
                    bestInfo = (label, score, report);
                }
                else merged.Dispose();
            }
            var chosen = best!;
            double maxDiff, meanDiff, scale;
            using (torch.no_grad())
            using (var after = chosen.forward(probeIds).to_type(ScalarType.Float32))
            using (var diff = (after - referenceProbe).abs())
            {
                maxDiff = diff.max().item<float>();
                meanDiff = diff.mean().item<float>();
                scale = referenceProbe.abs().max().item<float>();
            }
            string method = config.Method + (bestInfo.Label is null ? "" : $" (merge {bestInfo.Label})");
            var result = new MergeReport(method, AdapterModel.FindAdapters(chosen).Count, maxDiff, meanDiff, scale, "")
            {
                HeldOut = bestInfo.Report.HeldOut,
                HeldOutSource = texts.HeldOutSource,
                CalibrationSource = fits ? texts.CalibrationSource : "none",
                QuantizedBase = chosen.PackedBases().Values.FirstOrDefault()?.Packed is { } pw
                    ? $"{pw.Format} (--base-bits {runtime.BaseBits}): merged into the dequantized base weights; the folder holds them in {outDtype}, which differ from the original base by the quantization error. To merge into the original weights, run merge without --base-bits."
                    : null,
                Candidates = tried,
                Dtype = outDtype,
                DtypeSource = dtypeSource,
            };
            return finish(chosen, result);
        }
        finally
        {
            best?.Dispose();
        }
    }

    /// <summary>
    /// The dtype to write (a torch_dtype name) and where it came from: <paramref name="asked"/> (--out-dtype), or for
    /// null/"auto" the base's stored dtype, that of most of its floating-point tensors (what config.json's torch_dtype
    /// should say; the tensors decide when the two disagree).
    /// </summary>
    public static (string Dtype, string Source) OutputDtype(string modelDir, string? asked)
    {
        switch (asked?.Trim().ToLowerInvariant())
        {
            case null or "" or "auto":
                using (var ckpt = HfCheckpoint.Open(modelDir))
                {
                    var stored = ckpt.Names.Select(n => ckpt.EntryOf(n).Dtype).Where(d => d is "F32" or "BF16" or "F16")
                        .GroupBy(d => d).OrderByDescending(g => g.Count()).Select(g => g.Key).FirstOrDefault() ?? "F32";
                    return (stored switch { "BF16" => "bfloat16", "F16" => "float16", _ => "float32" }, "the base's stored dtype");
                }
            case "float32" or "fp32": return ("float32", "--out-dtype");
            case "bfloat16" or "bf16": return ("bfloat16", "--out-dtype");
            case "float16" or "fp16": return ("float16", "--out-dtype");
            default: throw new UserInputException($"--out-dtype {asked}: give auto (the base's stored dtype), float32, bfloat16 or float16.");
        }
    }

    /// <summary>The merged model of one candidate: the calibrated fold's (distilled) LoRA merged (ResLoRA's ls), or the adapter merged its own way.</summary>
    private static (CausalLM Model, FoldReport? Fold) MergedCandidate(AdapterMethod method, string modelDir, string adapterDir, RuntimeOptions runtime, AdapterConfigBase candidate,
        CausalLM reference, AdapterPlan referencePlan, FoldingTexts texts, ITextTokenizer? tokenizer, int pad, MergeOptions options)
    {
        if (method.MergesByCalibratedFold(candidate))
        {
            var calib = FoldingTexts.Tokenize(texts.Calibration, tokenizer!, options.Texts.SeqLen, "calibration");
            var (student, fold) = CalibratedFolding.ToLora(reference, referencePlan, modelDir, runtime, calib, pad, options.DistillSteps, distillLearningRate: options.DistillLearningRate,
                distillation: options.DistillSteps > 0 ? FoldingTexts.Tokenize(texts.Distillation, tokenizer!, options.Texts.SeqLen, "distillation") : null);
            AdapterModel.MergeAll(student);
            return (student, fold);
        }
        var model = ModelSessions.LoadWithAdapter(modelDir, adapterDir, runtime, null, candidate);
        AdapterModel.MergeAll(model);
        return (model, null);
    }
}
