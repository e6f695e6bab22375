using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>
/// An adapter wraps one frozen base linear layer (it is itself the <c>nn.Module</c> the linear factory returned).
/// Every weight mutation is an explicit call: nothing merges as a side effect of <c>eval()</c>.
/// </summary>
public interface IAdapter
{
    /// <summary>The projection this adapter sits on.</summary>
    LinearSpec Spec { get; }

    /// <summary>Frozen base weight, (out, in); registered as <c>weight</c> so base keys stay Hugging Face's.</summary>
    Parameter Weight { get; }

    /// <summary>Frozen base bias (out), or null.</summary>
    Parameter? Bias { get; }

    /// <summary>ΔW (out, in) in float32 such that the merged weight is W₀ + ΔW (for DoRA: the merged weight minus W₀).</summary>
    Tensor DeltaWeight();

    bool IsMerged { get; }

    /// <summary>Folds ΔW into the base weight. Throws <see cref="InvalidOperationException"/> when already merged.</summary>
    void Merge();

    /// <summary>Restores the base weight bit for bit. Throws <see cref="InvalidOperationException"/> when not merged.</summary>
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
