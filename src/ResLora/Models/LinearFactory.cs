using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ResLora.Models;

/// <summary>
/// One projection of the decoder, as the model asks for it.
/// <paramref name="Name"/> is the Hugging Face module path (<c>model.layers.3.self_attn.q_proj</c>),
/// <paramref name="ModuleType"/> its last segment (<c>q_proj</c>), <paramref name="LayerIndex"/> the decoder layer
/// (-1 outside the layers, e.g. <c>lm_head</c>). Weight shape is (OutFeatures, InFeatures), as in nn.Linear.
/// </summary>
public sealed record LinearSpec(string Name, string ModuleType, int LayerIndex, int InFeatures, int OutFeatures, bool HasBias);

/// <summary>
/// Every projection of the model is built through one factory; adapters are decided here, when the model is built
/// (litgpt's construction-time plan), never by swapping modules afterwards.
/// Contract: the returned module owns the frozen base weight as a parameter named <c>weight</c> (out, in) and the
/// optional <c>bias</c>, so the model's base state-dict keys stay Hugging Face's whatever adapter wraps them.
/// </summary>
public interface ILinearFactory
{
    nn.Module<Tensor, Tensor> Create(LinearSpec spec, ScalarType dtype, Device device);
}

/// <summary>
/// Optional capability of a factory whose modules pass tensors between layers within one forward (ResLoRA's
/// chains). The model calls <see cref="BeginForward"/> at the start of every forward pass and disposes the result
/// at its end; the factory uses it to start a fresh per-forward context and to refuse stale tensors.
/// </summary>
public interface IForwardLifecycle
{
    IDisposable BeginForward();
}

/// <summary>Builds plain, frozen-or-not <c>nn.Linear</c> projections: the model without adapters.</summary>
public sealed class PlainLinearFactory : ILinearFactory
{
    public static readonly PlainLinearFactory Instance = new();

    public nn.Module<Tensor, Tensor> Create(LinearSpec spec, ScalarType dtype, Device device)
    {
        Linear lin = nn.Linear(spec.InFeatures, spec.OutFeatures, hasBias: spec.HasBias, device: device, dtype: dtype);
        return lin;
    }
}
