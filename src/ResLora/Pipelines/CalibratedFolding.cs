using ResLora.Adapters;
using ResLora.Models;
using ResLora.Training;

namespace ResLora.Pipelines;

/// <summary>What folding an adapter into a plain LoRA by a calibrated fit (ResLoRA is/ms) did.</summary>
public sealed record FoldReport
{
    /// <summary>ls, or ls+distill.</summary>
    public string Kind { get; init; } = "ls";
    public long CalibrationTokens { get; init; }
    public double FitSeconds { get; init; }
    public int DistillSteps { get; init; }
    /// <summary>Mean KL(teacher ‖ student) on the calibration batches at the first and the last distillation step.</summary>
    public double? DistillFirstKl { get; init; }
    public double? DistillLastKl { get; init; }
    public double DistillSeconds { get; init; }
}

/// <summary>
/// An adapter → plain LoRA through its method's calibrated fold (<see cref="AdapterMethod.CalibratedFold"/>; ResLoRA
/// is/ms: the least-squares fit gives each block a pair (B_n, A*_n) that uses only its own input); <c>--distill N</c>
/// then trains that LoRA for N steps to match the unmerged model (KL on the calibration text, no labels).
/// </summary>
public static class CalibratedFolding
{
    /// <param name="teacher">The unmerged model, loaded with <paramref name="plan"/>.</param>
    /// <param name="plan">Its plan; its method's fold records the calibration pass through the plan's builder.</param>
    /// <param name="modelDir">The base model folder (the student is built on it).</param>
    /// <param name="runtime">Device, dtype, threads.</param>
    /// <param name="calibration">Calibration sequences of the fit (tokenized, every token real).</param>
    /// <param name="distillation">Sequences distillation trains on (null = the calibration ones).</param>
    /// <param name="padId">Pad id for batching.</param>
    /// <param name="distillSteps">0 = least squares only.</param>
    /// <param name="seed">Seed of the distillation's batch order.</param>
    /// <param name="distillLearningRate">Peak AdamW learning rate of the distillation.</param>
    public static (CausalLM Student, FoldReport Report) ToLora(CausalLM teacher, AdapterPlan plan, string modelDir, RuntimeOptions runtime,
        IReadOnlyList<TokenizedExample> calibration, int padId, int distillSteps = 0, long seed = 0, double distillLearningRate = Distillation.DefaultLearningRate,
        IReadOnlyList<TokenizedExample>? distillation = null)
    {
        var fold = AdapterMethods.For(plan.Config).CalibratedFold(plan);
        var config = plan.Config;
        long tokens = calibration.Sum(e => (long)e.Ids.Length);
        fold.CheckCalibration(tokens);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var batches = Tokenization.Sequential(calibration, 8, padId, teacher.Device).ToList();
        IReadOnlyDictionary<string, (Tensor A, Tensor B)> pairs;
        try
        {
            teacher.eval();
            pairs = fold.Fit((ids, mask) => teacher.forward(ids, mask), batches.Select(b => (b.InputIds, b.AttentionMask)));
        }
        finally
        {
            foreach (var b in batches) b.Dispose();
        }
        double fitSeconds = clock.Elapsed.TotalSeconds;
        var student = LoraStudent.Build(modelDir, runtime, config, pairs);
        CopySavedModules(config, teacher, student);
        var report = new FoldReport { CalibrationTokens = tokens, FitSeconds = fitSeconds };
        if (distillSteps <= 0) return (student, report);
        try
        {
            clock.Restart();
            var (first, last) = Distillation.Run(teacher, student, distillation ?? calibration, padId, distillSteps, distillLearningRate, seed: seed);
            return (student, report with { Kind = "ls+distill", DistillSteps = distillSteps, DistillFirstKl = first, DistillLastKl = last, DistillSeconds = clock.Elapsed.TotalSeconds });
        }
        catch
        {
            student.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The adapter's fully trained modules (modules_to_save, e.g. lm_head) belong to the folded model too: the student is
    /// built from the base, so it takes the teacher's copies (before any distillation, which then fits the same head).
    /// </summary>
    private static void CopySavedModules(AdapterConfigBase config, CausalLM teacher, CausalLM student)
    {
        if (config.ModulesToSave is not { Count: > 0 }) return;
        var target = student.named_parameters().ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);
        using var _ = torch.no_grad();
        foreach (var (name, t) in AdapterFolder.SavedModuleWeights(config, teacher))
        {
            if (!target.TryGetValue(name, out var p))
                throw new InvalidOperationException($"the folded model has no parameter '{name}' of modules_to_save; the student was built from another model.");
            p.copy_(t);
        }
    }
}
