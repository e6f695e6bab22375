using System.Text.Json.Serialization;
using ResLora.IO;
using ResLora.Models;

namespace ResLora.Training;

/// <summary>An observer that does nothing (every <see cref="ITrainObserver"/> member has a default).</summary>
public sealed class SilentTrainObserver : ITrainObserver
{
    public static SilentTrainObserver Instance { get; } = new();

    private SilentTrainObserver()
    {
    }
}

/// <summary>Receives progress from a run; the CLI draws a progress bar or prints lines, tests record.</summary>
public interface ITrainObserver
{
    void OnStart(int totalSteps, int startStep) { }
    void OnStep(StepReport report) { }
    void OnEval(EvalReport report) { }
    void OnMessage(string message) { }

    /// <summary>After the final adapter and summary are written (the CLI draws the loss plot here).</summary>
    void OnFinish(TrainSummary summary, string outDir) { }
}

/// <summary>The outcome of a run, written as <c>train_summary.json</c>.</summary>
public sealed record TrainSummary
{
    [JsonPropertyName("method")] public string Method { get; init; } = "";
    [JsonPropertyName("steps")] public int Steps { get; init; }
    [JsonPropertyName("final_train_loss")] public double FinalTrainLoss { get; init; }
    [JsonPropertyName("final_eval_loss")] public double? FinalEvalLoss { get; init; }
    [JsonPropertyName("final_eval_perplexity")] public double? FinalEvalPerplexity { get; init; }
    [JsonPropertyName("final_eval_accuracy")] public double? FinalEvalAccuracy { get; init; }
    /// <summary>The task's further held-out scores at the end (f1, mcc, pearson, ...), when it has any.</summary>
    [JsonPropertyName("final_eval_metrics")] public IReadOnlyDictionary<string, double>? FinalEvalMetrics { get; init; }
    [JsonPropertyName("trainable_parameters")] public long TrainableParameters { get; init; }
    [JsonPropertyName("wall_seconds")] public double WallSeconds { get; init; }
    [JsonPropertyName("mean_step_seconds")] public double MeanStepSeconds { get; init; }
    [JsonPropertyName("peak_rss_bytes")] public long PeakRssBytes { get; init; }
    [JsonPropertyName("resumed_from_step")] public int? ResumedFromStep { get; init; }
    /// <summary>True when early stopping ended the run before its planned steps (<see cref="Steps"/> is then the step it stopped at).</summary>
    [JsonPropertyName("stopped_early")] public bool? StoppedEarly { get; init; }
    /// <summary>The steps the run was planned for, when it stopped early.</summary>
    [JsonPropertyName("planned_steps")] public int? PlannedSteps { get; init; }
    /// <summary>With early stopping: the lowest periodic eval loss and its step (a <c>checkpoint-N</c> snapshot holds that adapter when --save-every wrote one there).</summary>
    [JsonPropertyName("best_eval_loss")] public double? BestEvalLoss { get; init; }
    [JsonPropertyName("best_eval_step")] public int? BestEvalStep { get; init; }
    /// <summary>The ranks of a data-parallel run (absent for one process).</summary>
    [JsonPropertyName("ranks")] public int? Ranks { get; init; }
    /// <summary>Bytes each rank all-reduced in its last step: gradients, method statistics, loss sums (data-parallel runs).</summary>
    [JsonPropertyName("allreduce_bytes_per_step")] public long? AllReduceBytesPerStep { get; init; }
    /// <summary>Rank 0's mean seconds per step inside all-reduce calls (transfer and waiting for the other ranks).</summary>
    [JsonPropertyName("allreduce_seconds_per_step")] public double? AllReduceSecondsPerStep { get; init; }
    [JsonIgnore] public IReadOnlyList<StepReport> Curve { get; init; } = Array.Empty<StepReport>();
    [JsonIgnore] public IReadOnlyList<EvalReport> Evals { get; init; } = Array.Empty<EvalReport>();
}

/// <summary>Everything one run needs; the method is hidden behind the save/load delegates and capabilities.</summary>
public sealed record TrainRunSpec
{
    /// <summary>The model, its data and its scoring (<see cref="CausalLmTask"/>, or sequence classification).</summary>
    public required ITrainTask Task { get; init; }
    public required TrainOptions Options { get; init; }
    public required string OutDir { get; init; }
    public string Method { get; init; } = "lora";
    /// <summary>Writes the trained weights (the adapter folder) into the given directory.</summary>
    public required Action<string> SaveWeights { get; init; }
    /// <summary>
    /// Writes the weights a resume reads (the checkpoint's adapter) when they differ from what a user gets: a PiSSA/OLoRA/LoftQ
    /// adapter is saved for the original base (rank 2r) but resumed as trained (rank r over the residual). Null = <see cref="SaveWeights"/>.
    /// </summary>
    public Action<string>? SaveResumeWeights { get; init; }
    /// <summary>Reads weights saved by <see cref="SaveResumeWeights"/> back into the live model (resume).</summary>
    public required Action<string> LoadWeights { get; init; }
    public IEnumerable<object> Capabilities { get; init; } = Array.Empty<object>();
    /// <summary>Continue from <c>OutDir/checkpoint</c> when it exists.</summary>
    public bool Resume { get; init; }
    /// <summary>
    /// Settings beyond <see cref="TrainOptions"/> that a resume must keep (by flag name, e.g. <c>--seq-len</c>); saved
    /// with each checkpoint with <see cref="TrainOptions.ResumeSettings"/>.
    /// </summary>
    public IReadOnlyDictionary<string, string> ResumeSettings { get; init; } = new Dictionary<string, string>();

    /// <summary>
    /// Requests a stop (Ctrl+C): the loop finishes the step in progress, writes a checkpoint that <see cref="Resume"/>
    /// continues from, and throws <see cref="TrainingInterruptedException"/>. Honoured in one process; a data-parallel run ignores it.
    /// </summary>
    public CancellationToken Cancellation { get; init; }

    /// <summary>
    /// The ranks of a data-parallel job (null: one process). Every rank runs the loop; rank 0 alone evaluates and writes
    /// metrics, checkpoints, the adapter and the summary. A resume reads the checkpoint on every rank (a shared --out).
    /// </summary>
    public Distributed.ICommunicator? Communicator { get; init; }
}
