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

/// <summary>Builds plain projections: the model without adapters.</summary>
public sealed class PlainLinearFactory : ILinearFactory
{
    public static readonly PlainLinearFactory Instance = new();

    public nn.Module<Tensor, Tensor> Create(LinearSpec spec, ScalarType dtype, Device device) => new PlainLinear(spec, dtype, device);
}

/// <summary>
/// y = x Wᵀ + b through <c>functional.linear</c>, with the keys <c>weight</c> and <c>bias</c> of nn.Linear. Measured in
/// <c>reslora bench</c>: TorchSharp's nn.Linear module call costs more per token in generation than the functional
/// call the adapter layers use, which made an unadapted model slower than a merged adapted one.
/// </summary>
public sealed class PlainLinear : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // state-dict keys
    private readonly Parameter weight;
    private readonly Parameter? bias;
#pragma warning restore IDE1006

    public PlainLinear(LinearSpec spec, ScalarType dtype, Device device) : base(spec.Name)
    {
        // nn.Linear's init: U(±1/√in) for weight and bias; checkpoints overwrite it.
        double bound = 1.0 / Math.Sqrt(spec.InFeatures);
        using (torch.no_grad())
        {
            weight = new Parameter((torch.rand(spec.OutFeatures, spec.InFeatures) * 2 * bound - bound).to(dtype, device));
            if (spec.HasBias) bias = new Parameter((torch.rand(spec.OutFeatures) * 2 * bound - bound).to(dtype, device));
        }
        RegisterComponents();
    }

    public Parameter Weight => weight;

    public override Tensor forward(Tensor x) => nn.functional.linear(x, weight, bias);
}
