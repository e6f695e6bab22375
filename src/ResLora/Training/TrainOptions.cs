namespace ResLora.Training;

/// <summary>Hyperparameters of one training run; method-independent. Defaults follow common LoRA practice.</summary>
public sealed record TrainOptions
{
    /// <summary>Optimizer steps (each of <see cref="GradAccum"/> micro-batches). 0 = derived from <see cref="Epochs"/>.</summary>
    public int Steps { get; init; } = 200;
    /// <summary>Used when <see cref="Steps"/> is 0: steps = ceil(epochs · examples / (batch · accum)).</summary>
    public double Epochs { get; init; }
    public int BatchSize { get; init; } = 8;
    public int GradAccum { get; init; } = 1;
    public double LearningRate { get; init; } = 2e-4;
    /// <summary>AdamW decoupled weight decay. Always passed explicitly: TorchSharp's default (0) differs from PyTorch's (0.01).</summary>
    public double WeightDecay { get; init; }
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double AdamEps { get; init; } = 1e-8;
    public int WarmupSteps { get; init; }
    /// <summary>cosine (default), linear or constant decay after warm-up.</summary>
    public string Schedule { get; init; } = "cosine";
    /// <summary>Global gradient-norm clip; 0 = off.</summary>
    public double MaxGradNorm { get; init; } = 1.0;
    public long Seed { get; init; } = 42;
    public int LogEvery { get; init; } = 10;
    /// <summary>Evaluate every N steps (0 = only at the end).</summary>
    public int EvalEvery { get; init; }
    /// <summary>Write a checkpoint every N steps (0 = only at the end).</summary>
    public int SaveEvery { get; init; }
    /// <summary>Write an adapter snapshot <c>checkpoint-N/</c> every N steps (0 = none; the resume checkpoint is <see cref="SaveEvery"/>'s).</summary>
    public int SnapshotEvery { get; init; }
    /// <summary>Adapter snapshots <c>checkpoint-N/</c> kept (the newest; 0 = all). Written every <see cref="SnapshotEvery"/> steps.</summary>
    public int SaveTotalLimit { get; init; }
    /// <summary>
    /// Stop when the eval loss has not improved by more than <see cref="EarlyStoppingThreshold"/> for this many consecutive
    /// evaluations (Hugging Face's EarlyStoppingCallback); 0 = off. Needs evaluation data and <see cref="EvalEvery"/>.
    /// </summary>
    public int EarlyStoppingPatience { get; init; }
    /// <summary>The least decrease of the eval loss below the best so far that counts as an improvement.</summary>
    public double EarlyStoppingThreshold { get; init; }
    /// <summary>At most this many eval batches per evaluation (0 = all).</summary>
    public int EvalMaxBatches { get; init; }
    /// <summary>At most this many examples for exact-match accuracy per evaluation (greedy generation; 0 = off).</summary>
    public int EvalGenerateExamples { get; init; } = 64;
    public int MaxNewTokens { get; init; } = 16;
    /// <summary>Also write TensorBoard event files beside metrics.jsonl (<see cref="TrainLoop"/>).</summary>
    public bool TensorBoard { get; init; } = true;
    /// <summary>
    /// LoRA+ (Hayou et al. 2024; PEFT's <c>create_loraplus_optimizer</c>): B's learning rate is this many times A's,
    /// in PEFT's four parameter groups (<see cref="Optimization.LoraPlusGroups"/>); null = one group at <see cref="LearningRate"/>.
    /// </summary>
    public double? LoraPlusLrRatio { get; init; }
    /// <summary>LoRA+: the peak learning rate of trainable embedding parameters (PEFT's <c>loraplus_lr_embedding</c>, 1e-6).</summary>
    public double LoraPlusLrEmbedding { get; init; } = 1e-6;
    /// <summary>
    /// Gradient preconditioner before each optimizer step: "none" or "riemannian" (PrecLoRA, Zhang &amp; Pilanci 2024;
    /// PEFT's <c>create_riemannian_optimizer</c>; <see cref="Optimization.RiemannianPreconditioner"/>).
    /// </summary>
    public string Precondition { get; init; } = "none";
    /// <summary>δ added to the r×r matrices' diagonal before inversion (PEFT's <c>reg</c>, default 1e-2).</summary>
    public double PreconditionDelta { get; init; } = Optimization.RiemannianPreconditioner.DefaultDelta;

    /// <summary>Optimizer steps of a run over <paramref name="examples"/> training sequences (at least 1).</summary>
    public int TotalSteps(int examples) =>
        Math.Max(1, Steps > 0 ? Steps : (int)Math.Ceiling(Epochs * examples / (double)(BatchSize * GradAccum)));

    /// <summary>
    /// The settings a resumed run must share with the run it continues, by flag name (library-only settings by their
    /// field name): each shapes every optimizer step. Logging, evaluation and checkpoint cadence may change.
    /// </summary>
    public IReadOnlyDictionary<string, string> ResumeSettings()
    {
        static string D(double v) => v.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
        return new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["--batch-size"] = BatchSize.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["--grad-accum"] = GradAccum.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["--lr"] = D(LearningRate),
            ["--weight-decay"] = D(WeightDecay),
            ["--warmup-steps"] = WarmupSteps.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["--schedule"] = Schedule,
            ["--max-grad-norm"] = D(MaxGradNorm),
            ["--seed"] = Seed.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["beta1"] = D(Beta1),
            ["beta2"] = D(Beta2),
            ["adam_eps"] = D(AdamEps),
            ["--loraplus-lr-ratio"] = LoraPlusLrRatio is { } ratio ? D(ratio) : "off",
            ["loraplus_lr_embedding"] = D(LoraPlusLrEmbedding),
            ["--precondition"] = Precondition,
            ["--precondition-delta"] = D(PreconditionDelta),
        };
    }

    public void Validate()
    {
        if (Steps < 0) throw new UserInputException($"--steps must be 0 or more, got {Steps}.");
        if (Steps == 0 && !(Epochs > 0)) throw new UserInputException("give --steps N or --epochs E (one of them must be positive).");
        if (BatchSize < 1) throw new UserInputException($"--batch-size must be at least 1, got {BatchSize}.");
        if (GradAccum < 1) throw new UserInputException($"--grad-accum must be at least 1, got {GradAccum}.");
        if (!(LearningRate > 0) || double.IsInfinity(LearningRate)) throw new UserInputException($"--lr must be a positive number, got {LearningRate}.");
        if (WeightDecay < 0) throw new UserInputException($"--weight-decay must be 0 or more, got {WeightDecay}.");
        if (WarmupSteps < 0) throw new UserInputException($"--warmup-steps must be 0 or more, got {WarmupSteps}.");
        if (Schedule is not ("cosine" or "linear" or "constant")) throw new UserInputException($"--schedule '{Schedule}' is not known; use cosine, linear or constant.");
        if (MaxGradNorm < 0) throw new UserInputException($"--max-grad-norm must be 0 (off) or positive, got {MaxGradNorm}.");
        if (LogEvery < 1) throw new UserInputException($"--log-every must be at least 1, got {LogEvery}.");
        if (EvalEvery < 0 || SaveEvery < 0 || SnapshotEvery < 0) throw new UserInputException("--eval-every, --save-every and --snapshot-every must be 0 or more.");
        if (SaveTotalLimit < 0) throw new UserInputException($"--save-total-limit must be 0 (keep every snapshot) or more, got {SaveTotalLimit}.");
        if (SaveTotalLimit > 0 && SnapshotEvery == 0) throw new UserInputException("--save-total-limit keeps the newest checkpoint-N snapshots, which --snapshot-every N writes; add --snapshot-every N or drop --save-total-limit.");
        if (EarlyStoppingPatience < 0) throw new UserInputException($"--early-stopping-patience must be 0 (off) or more evaluations, got {EarlyStoppingPatience}.");
        if (!(EarlyStoppingThreshold >= 0) || double.IsInfinity(EarlyStoppingThreshold)) throw new UserInputException($"--early-stopping-threshold must be 0 or a positive loss difference, got {EarlyStoppingThreshold}.");
        if (LoraPlusLrRatio is { } r && (!(r > 0) || double.IsInfinity(r)))
            throw new UserInputException($"--loraplus-lr-ratio must be a positive number (B's learning rate over A's; the LoRA+ paper suggests 16), got {r}.");
        if (!(LoraPlusLrEmbedding > 0) || double.IsInfinity(LoraPlusLrEmbedding))
            throw new UserInputException($"loraplus_lr_embedding must be a positive learning rate, got {LoraPlusLrEmbedding}.");
        if (Precondition is not ("none" or "riemannian"))
            throw new UserInputException($"--precondition '{Precondition}' is not known; use riemannian (PrecLoRA) or none.");
        if (!(PreconditionDelta > 0) || double.IsInfinity(PreconditionDelta))
            throw new UserInputException($"--precondition-delta must be positive (BᵀB is singular at LoRA's start, where B = 0), got {PreconditionDelta}.");
        if (EarlyStoppingPatience > 0 && EvalEvery == 0)
            throw new UserInputException($"--early-stopping-patience {EarlyStoppingPatience} counts evaluations during the run; add --eval-every N (evaluate every N steps).");
    }
}
