namespace ResLora.Adapters;

/// <summary>Capability: an extra loss term the trainer adds to the task loss every step (AdaLoRA's orthogonality penalty).</summary>
public interface IExtraLossTerm
{
    /// <summary>A scalar tensor connected to the trainable parameters; the trainer adds it to the loss.</summary>
    Tensor ExtraLoss();
}

/// <summary>Capability: hooks around the optimizer step (RefLoRA's preconditioning and rebalancing, AdaLoRA's allocator).</summary>
public interface IOptimizerStepHook
{
    /// <summary>After backward (gradients are final, clipping done), before <c>optimizer.step()</c>.</summary>
    void BeforeOptimizerStep(OptimizerStepContext context);

    /// <summary>After <c>optimizer.step()</c>.</summary>
    void AfterOptimizerStep(OptimizerStepContext context);
}

/// <summary>
/// Capability: told the step before its forwards run (ResLoRA's shortcut annealing, whose weight is a function of the
/// step). Called at the start of every optimizer step, also the first one after a resume, so state derived from the
/// step alone continues exactly.
/// </summary>
public interface IStepStartHook
{
    /// <summary>Before the first forward of 1-based optimizer step <paramref name="step"/> of <paramref name="totalSteps"/>.</summary>
    void BeginOptimizerStep(int step, int totalSteps);
}

/// <summary>What a step hook may see: the global step (1-based, counted in optimizer steps) and the optimizer.</summary>
public sealed record OptimizerStepContext(int Step, int TotalSteps, optim.Optimizer Optimizer);

/// <summary>Capability of a layer builder whose saved config carries training state (ResLoRA's window statistics, AdaLoRA's masks).</summary>
public interface IConfigSnapshot
{
    /// <summary>The config to write into adapter_config.json now.</summary>
    AdapterConfigBase SnapshotConfig();
}

/// <summary>Capability of a builder or training extra that writes a note file beside the adapter (what training did that the config cannot say).</summary>
public interface IAdapterFolderNote
{
    (string FileName, string Json) Note();
}

/// <summary>
/// Capability of an adapter whose initial state depends on the base weight (DoRA's magnitude = row norms of W₀).
/// The model builds layers before the checkpoint is loaded, so call <see cref="AdapterModel.OnBaseWeightsLoaded"/>
/// after loading base weights and before training a freshly initialised adapter (not after loading a saved one).
/// </summary>
public interface IBaseWeightDependent
{
    void OnBaseWeightsLoaded();
}

/// <summary>
/// Capability of a layer builder whose merge is fitted on calibration text (ResLoRA's least-squares fold): the merge
/// pipeline runs the model over calibration batches through <see cref="Calibrate"/> before merging or exporting.
/// </summary>
public interface ICalibratedMerge
{
    /// <summary>True while the configured merge still needs its calibration pass.</summary>
    bool NeedsCalibration { get; }

    /// <summary>
    /// Runs <paramref name="forward"/> (token ids (b, t), attention mask (b, t) → logits) over the batches in eval mode
    /// with recording on, then fits. Only positions whose mask is 1 are used.
    /// </summary>
    void Calibrate(Func<Tensor, Tensor, Tensor> forward, IEnumerable<(Tensor Ids, Tensor Mask)> batches);
}

/// <summary>
/// Capability of a layer builder that collects statistics from training forwards (ResLoRA's norm windows) which must be
/// the same on every rank of a data-parallel job, and equal to one process's over the whole batch. During a sharded step
/// the builder keeps each forward's partial sums instead of using them; the trainer sums the partials over all ranks
/// and hands the totals back.
/// </summary>
public interface IShardedStatistics
{
    /// <summary>Starts a step of <paramref name="microBatches"/> forwards whose statistics are kept as partial sums.</summary>
    void BeginShardedStep(int microBatches);

    /// <summary>The forwards that follow belong to micro-batch <paramref name="index"/> (a rank with no rows makes none).</summary>
    void BeginMicroBatch(int index);

    /// <summary>This rank's partial sums of the step, of a length that depends only on the model and the micro-batch count.</summary>
    double[] PartialStatistics();

    /// <summary>Ends the sharded step with the element-wise sums of <see cref="PartialStatistics"/> over all ranks.</summary>
    void CompleteShardedStep(ReadOnlySpan<double> totals);
}

/// <summary>
/// Capability of an adapter whose layers share tensors saved once under model-level keys, outside any module path
/// (VeRA's <c>base_model.vera_A</c> / <c>base_model.vera_B</c>); <see cref="AdapterFolder"/> writes and reads them.
/// </summary>
public interface ISharedAdapterState
{
    /// <summary>Full tensor keys → the shared tensors (the same for every layer sharing them; views, do not dispose).</summary>
    IReadOnlyDictionary<string, Tensor> GetSharedState();

    /// <summary>Copies the model-level tensors a folder holds (by full key); what is missing or mis-shaped is an error naming <paramref name="file"/>.</summary>
    void LoadSharedState(IReadOnlyDictionary<string, Tensor> state, string file);
}
