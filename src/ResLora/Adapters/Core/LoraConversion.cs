namespace ResLora.Adapters;

/// <summary>
/// A method's calibrated fold into plain LoRA pairs (ResLoRA is/ms: the least-squares fit of each block's residual
/// paths on calibration text), which <c>reslora export --as lora</c> and the ls merge run through
/// <see cref="AdapterMethod.CalibratedFold"/> without knowing the method.
/// </summary>
public interface ICalibratedFold
{
    /// <summary>Refuses calibration text of <paramref name="tokens"/> tokens that cannot determine the fit.</summary>
    void CheckCalibration(long tokens);

    /// <summary>
    /// Runs <paramref name="forward"/> (the unmerged model in eval mode: ids, mask → logits) over the batches and fits;
    /// returns each adapted module's pair (A, B) by module path, valid while the adapter is alive.
    /// </summary>
    IReadOnlyDictionary<string, (Tensor A, Tensor B)> Fit(Func<Tensor, Tensor, Tensor> forward, IEnumerable<(Tensor Ids, Tensor Mask)> batches);

    /// <summary>How the fold is made, for an export's notes ("ResLoRA is: the residual paths are folded by ...").</summary>
    string Description { get; }
}
