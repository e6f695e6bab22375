using ResLora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ResLora.Adapters;

/// <summary>
/// An adapter wraps one frozen base linear layer (it is itself the <c>nn.Module</c> the linear factory returned).
/// Every weight mutation is an explicit call: nothing merges as a side effect of <c>eval()</c>.
/// </summary>
public interface IAdapter
{
    /// <summary>The projection this adapter sits on.</summary>
    LinearSpec Spec { get; }

    /// <summary>Method name as used on the command line: lora, dora, reslora, adalora, loha, lokr.</summary>
    string Method { get; }

    /// <summary>Frozen base weight, (out, in); registered as <c>weight</c> so base keys stay Hugging Face's.</summary>
    Parameter Weight { get; }

    /// <summary>Frozen base bias (out), or null.</summary>
    Parameter? Bias { get; }

    /// <summary>ΔW (out, in) in float32 such that the merged weight is W + ΔW (for DoRA: the merged weight minus W).</summary>
    Tensor DeltaWeight();

    bool IsMerged { get; }

    /// <summary>Folds ΔW into the base weight. Throws <see cref="InvalidOperationException"/> when already merged.</summary>
    void Merge();

    /// <summary>Restores the base weight. Throws <see cref="InvalidOperationException"/> when not merged.</summary>
    void Unmerge();

    /// <summary>The parameters the optimizer updates; everything else is frozen (requires_grad = false).</summary>
    IReadOnlyList<Parameter> TrainableParameters { get; }

    /// <summary>
    /// PEFT state-dict entries of this module, keyed by the suffix after the module path
    /// (<c>lora_A.weight</c>, <c>lora_B.weight</c>, <c>lora_magnitude_vector</c>, ...). The folder writer prefixes
    /// <c>base_model.model.{Spec.Name}.</c>. Tensors are views of the live parameters (do not dispose).
    /// </summary>
    IReadOnlyDictionary<string, Tensor> GetAdapterState();

    /// <summary>Copies saved entries into the parameters; a missing key or a shape mismatch is an error naming both.</summary>
    void LoadAdapterState(IReadOnlyDictionary<string, Tensor> state);
}

/// <summary>
/// A LoRA-family adapter made of a low-rank pair in PEFT's orientation: ΔW = Scaling · B · A.
/// RefLoRA refactors any such pair; ResLoRA's blocks are such pairs.
/// </summary>
public interface ILowRankPair
{
    /// <summary>PEFT's <c>lora_A.weight</c>: (r, in).</summary>
    Parameter LoraA { get; }

    /// <summary>PEFT's <c>lora_B.weight</c>: (out, r).</summary>
    Parameter LoraB { get; }

    /// <summary>α/r, or α/√r with rsLoRA.</summary>
    double Scaling { get; }
}

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

/// <summary>What a step hook may see: the global step (1-based, counted in optimizer steps) and the optimizer.</summary>
public sealed record OptimizerStepContext(int Step, int TotalSteps, optim.Optimizer Optimizer);

/// <summary>
/// Capability: statistics collected during training that merging needs (ResLoRA's sliding windows of norms).
/// The trainer calls <see cref="OnTrainingForward"/> only for forwards in training mode.
/// </summary>
public interface ITrainingStatistics
{
    /// <summary>Serializable statistics to save with the adapter (adapter_config.json extras).</summary>
    IReadOnlyDictionary<string, object> ExportStatistics();
}

/// <summary>Capability of a layer builder whose saved config carries training state (ResLoRA's window statistics).</summary>
public interface IConfigSnapshot
{
    /// <summary>The config to write into adapter_config.json now.</summary>
    AdapterConfigBase SnapshotConfig();
}
