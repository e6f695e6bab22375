namespace ResLora.Training;

/// <summary>
/// Hugging Face's EarlyStoppingCallback (transformers/trainer_callback.py) on the eval loss: an evaluation counts as an
/// improvement when its loss is below the best so far by more than the threshold, which resets the count; any other
/// evaluation adds one, and the run stops when the count reaches the patience. The best so far follows every lower
/// loss, as the Trainer's best_metric does, even one that is too small an improvement to reset the count.
/// </summary>
public static class EarlyStopping
{
    /// <summary>
    /// (evaluations without improvement at the end of <paramref name="evals"/>, the best loss and its step) over the run's
    /// evaluations in order. Computed from the evaluations alone, so a resumed run (which reads them back from metrics.jsonl)
    /// continues the count exactly.
    /// </summary>
    public static (int Without, double Best, int BestStep) Count(IEnumerable<EvalReport> evals, double threshold)
    {
        int without = 0, bestStep = 0;
        double best = double.NaN;
        foreach (var e in evals)
        {
            if (double.IsNaN(best)) { best = e.Loss; bestStep = e.Step; without = 0; continue; }
            bool improved = e.Loss < best && Math.Abs(e.Loss - best) > threshold;
            without = improved ? 0 : without + 1;
            if (e.Loss < best) { best = e.Loss; bestStep = e.Step; }
        }
        return (without, best, bestStep);
    }

    /// <summary>Whether the run stops after the last of <paramref name="evals"/>.</summary>
    public static bool ShouldStop(IEnumerable<EvalReport> evals, int patience, double threshold) =>
        patience > 0 && Count(evals, threshold).Without >= patience;
}

/// <summary>
/// A run stopped on request (Ctrl+C; <see cref="TrainRunSpec.Cancellation"/>) at a step boundary: its checkpoint after
/// <see cref="Step"/> is written, and <c>--resume</c> continues from it exactly.
/// </summary>
public sealed class TrainingInterruptedException(int step, int totalSteps, string checkpointDir)
    : OperationCanceledException($"training stopped after step {step} of {totalSteps}; checkpoint in {checkpointDir}")
{
    public int Step { get; } = step;
    public int TotalSteps { get; } = totalSteps;
    public string CheckpointDir { get; } = checkpointDir;
}
