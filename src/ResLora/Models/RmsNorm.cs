using TorchSharp.Utils;

namespace ResLora.Models;

/// <summary>
/// Root-mean-square layer norm as Hugging Face's LlamaRMSNorm: the statistic is computed in float32 and the
/// result is cast back to the input dtype before the weight is applied (modeling_llama.py, LlamaRMSNorm.forward).
/// TorchSharp ships no RMSNorm module. Over a bf16/fp16 input with a frozen weight, training runs it as
/// <see cref="HalfRmsNorm"/>, which keeps x for backward instead of x's float32 copy.
/// </summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;
    private readonly double _eps;

    public RmsNorm(long size, double eps, ScalarType dtype, Device device) : base("RmsNorm")
    {
        _weight = new Parameter(torch.ones(size, dtype: dtype, device: device));
        _eps = eps;
        RegisterComponents();
    }

    public Parameter Weight => _weight;

    public override Tensor forward(Tensor x)
    {
        if (!HalfRmsNorm.Off && x.dtype is ScalarType.BFloat16 or ScalarType.Float16 && !_weight.requires_grad
            && x.requires_grad && torch.is_grad_enabled())
            return HalfRmsNorm.Run(x, _weight, _eps);
        using var scope = torch.NewDisposeScope();
        return scope.MoveToOuter(Compute(x, _weight, _eps));
    }

    /// <summary>w ⊙ cast(x_f32 · r) with r = rsqrt(mean(x_f32²) + eps) (..., 1) in float32.</summary>
    internal static Tensor Compute(Tensor x, Tensor weight, double eps)
    {
        // (..., d): mean of squares over the last dimension, in float32 whatever the model dtype.
        var xf = x.to_type(ScalarType.Float32);
        var variance = xf.pow(2).mean(new long[] { -1 }, keepdim: true);
        var r = torch.rsqrt(variance + eps);
        var normed = (xf * r).to_type(x.dtype);
        return weight * normed;
    }
}

/// <summary>
/// <see cref="RmsNorm"/> over a bf16/fp16 input with a frozen weight, as one autograd node. Autograd through the float32
/// computation keeps x's float32 copy (twice x's bytes) for backward; this node keeps x only and, in backward, recomputes
/// the norm from it and lets autograd differentiate that: the same computation both ways, so the same gradients.
/// </summary>
internal sealed class HalfRmsNorm : torch.autograd.SingleTensorFunction<HalfRmsNorm>
{
    public override string Name => nameof(HalfRmsNorm);

    /// <summary>Tests switch the node off on their own thread to compare against plain autograd.</summary>
    [ThreadStatic] internal static bool Off;

    public static Tensor Run(Tensor x, Tensor weight, double eps) => apply(x, weight, eps);

    public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var x = (Tensor)vars[0];
        var w = (Tensor)vars[1];
        using var scope = torch.NewDisposeScope();
        ctx.save_data("eps", vars[2]);
        ctx.save_for_backward(new List<Tensor> { x, w });
        return scope.MoveToOuter(RmsNorm.Compute(x, w, (double)vars[2]));
    }

    public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor grad_output)
    {
        using var scope = torch.NewDisposeScope(); // first: the saved tensors' wrappers are freed with it
        var saved = ctx.get_saved_variables();
        Tensor gx;
        using (torch.enable_grad())
        {
            // The norm recomputed from a leaf copy of x and differentiated by autograd: its float32 copy of x lives only now.
            var x = saved[0].detach().requires_grad_(true);
            var y = RmsNorm.Compute(x, saved[1], (double)ctx.get_data("eps"));
            gx = torch.autograd.grad(new[] { y }, new[] { x }, new[] { grad_output })[0];
        }
        // One gradient per forward argument: x's; the frozen weight and eps get none.
        return CustomGradients.Return(grad_output, new List<Tensor> { scope.MoveToOuter(gx), null!, null! });
    }
}
