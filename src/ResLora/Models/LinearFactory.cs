using TorchSharp.Utils;

namespace ResLora.Models;

/// <summary>
/// One projection of the decoder, as the model asks for it.
/// <paramref name="Name"/> is the Hugging Face module path (<c>model.layers.3.self_attn.q_proj</c>),
/// <paramref name="ModuleType"/> its last segment (<c>q_proj</c>), <paramref name="LayerIndex"/> the decoder layer
/// (-1 outside the layers, e.g. <c>lm_head</c>). Weight shape is (OutFeatures, InFeatures), as in nn.Linear.
/// </summary>
public sealed record LinearSpec(string Name, string ModuleType, int LayerIndex, int InFeatures, int OutFeatures, bool HasBias)
{
    /// <summary>
    /// How the frozen base weight is stored: null = a full-precision <c>weight</c> parameter; else packed in this format
    /// (<c>--base-bits</c>). Set by the factory (<see cref="PlainLinearFactory"/>, the adapter plan), never by the model.
    /// </summary>
    public IPackedWeightFormat? PackedBase { get; init; }

    /// <summary>
    /// The module types of the separate projections this fused one stands for (Phi-3's qkv_proj: q_proj, k_proj, v_proj),
    /// or null: a target naming one of them is refused with a pointer to the fused name.
    /// </summary>
    public IReadOnlyList<string>? Fuses { get; init; }

    /// <summary>
    /// This projection with its base packed in <paramref name="format"/> when it is inside a decoder layer. <c>lm_head</c>
    /// stays full precision, as transformers' bitsandbytes integration keeps the output layer unquantized.
    /// </summary>
    public LinearSpec PackedIn(IPackedWeightFormat? format) =>
        format is null || LayerIndex < 0 || PackedBase is not null ? this : this with { PackedBase = format };
}

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

/// <summary>
/// Optional capability of a factory whose modules cannot be recomputed one decoder layer at a time (activation
/// checkpointing), e.g. because they pass tensors between layers within a forward (ResLoRA's is/ms).
/// </summary>
public interface ICheckpointSupport
{
    /// <summary>Why per-layer recomputation would be wrong with these modules, or null when it is safe.</summary>
    string? CheckpointRefusal { get; }
}

/// <summary>Builds plain projections: the model without adapters (with a packed base when a format is given).</summary>
public sealed class PlainLinearFactory(IPackedWeightFormat? packedBase = null) : ILinearFactory
{
    public static readonly PlainLinearFactory Instance = new();

    /// <summary>The format every base weight is packed in, or null for full precision.</summary>
    public IPackedWeightFormat? PackedBase { get; } = packedBase;

    public nn.Module<Tensor, Tensor> Create(LinearSpec spec, ScalarType dtype, Device device) =>
        new PlainLinear(spec.PackedIn(PackedBase), dtype, device);
}

/// <summary>
/// y = x Wᵀ + b through <c>functional.linear</c>, with the keys <c>weight</c> and <c>bias</c> of nn.Linear. Measured in
/// <c>reslora bench</c>: TorchSharp's nn.Linear module call costs more per token in generation than the functional
/// call the adapter layers use, which made an unadapted model slower than a merged adapted one. With
/// <see cref="LinearSpec.PackedBase"/> set, W is a packed submodule <c>weight</c> (zero until the loader packs the checkpoint).
/// </summary>
public sealed class PlainLinear : nn.Module<Tensor, Tensor>, IFrozenBaseOwner
{
#pragma warning disable IDE1006 // state-dict keys
    private readonly Parameter? weight;
    [ComponentName(Name = "weight")] private readonly PackedWeight? packed_weight;
    private readonly Parameter? bias;
#pragma warning restore IDE1006

    public PlainLinear(LinearSpec spec, ScalarType dtype, Device device) : base(spec.Name)
    {
        // nn.Linear's init: U(±1/√in) for weight and bias; checkpoints overwrite it.
        double bound = 1.0 / Math.Sqrt(spec.InFeatures);
        using (torch.no_grad())
        {
            if (spec.PackedBase is { } f) packed_weight = f.Create(spec.OutFeatures, spec.InFeatures, device);
            else weight = new Parameter(Uniform(new long[] { spec.OutFeatures, spec.InFeatures }, bound, dtype, device));
            if (spec.HasBias) bias = new Parameter(Uniform(new long[] { spec.OutFeatures }, bound, dtype, device));
        }
        Base = new FrozenBase(spec, dtype, weight, packed_weight, bias);
        RegisterComponents();
    }

    /// <summary>
    /// U(±bound) drawn in float32 and converted, in place, disposing what it no longer needs: the operator form
    /// (<c>rand * 2 * bound - bound</c>) left three float32 temporaries per weight to the garbage collector, which held
    /// 6.7 GB while a 1 GB bf16 model was being built (issue 15, measured on a Qwen2.5-0.5B shape).
    /// </summary>
    private static Tensor Uniform(long[] shape, double bound, ScalarType dtype, Device device)
    {
        var u = torch.rand(shape, dtype: ScalarType.Float32);
        u.mul_(2).mul_(bound).sub_(bound); // the same float32 operations as the operator form, so the same values
        if (dtype == ScalarType.Float32 && device.type == DeviceType.CPU) return u;
        using (u) return u.to(dtype, device);
    }

    /// <summary>The full-precision weight; an error when the base is packed (see <see cref="Base"/>).</summary>
    public Parameter Weight => Base.RequireWeight("reading the weight tensor");

    /// <inheritdoc/>
    public FrozenBase Base { get; }

    public override Tensor forward(Tensor x) => weight is not null ? nn.functional.linear(x, weight, bias) : Base.Linear(x);
}
