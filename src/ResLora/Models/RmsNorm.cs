using TorchSharp.Utils;

namespace ResLora.Models;

/// <summary>
/// Root-mean-square layer norm as Hugging Face's LlamaRMSNorm: the statistic is computed in float32 and the
/// result is cast back to the input dtype before the weight is applied (modeling_llama.py, LlamaRMSNorm.forward).
/// TorchSharp ships no RMSNorm module. Over a bf16/fp16 input with a frozen weight, training runs it as
/// <see cref="HalfRmsNorm"/>, which keeps x and the per-row statistic for backward instead of x's float32 copy.
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
        return scope.MoveToOuter(Compute(x, _weight, _eps, out _));
    }

    /// <summary>w ⊙ cast(x_f32 · r) with r = rsqrt(mean(x_f32²) + eps) (..., 1) in float32, returned in <paramref name="r"/>.</summary>
    internal static Tensor Compute(Tensor x, Tensor weight, double eps, out Tensor r)
    {
        // (..., d): mean of squares over the last dimension, in float32 whatever the model dtype.
        var xf = x.to_type(ScalarType.Float32);
        var variance = xf.pow(2).mean(new long[] { -1 }, keepdim: true);
        r = torch.rsqrt(variance + eps);
        var normed = (xf * r).to_type(x.dtype);
        return weight * normed;
    }
}

/// <summary>
/// <see cref="RmsNorm"/> over a bf16/fp16 input with a frozen weight, as one autograd node. Autograd through the float32
/// computation keeps x's float32 copy (twice x's bytes) for backward; this node keeps x and r (one float per row) and
/// redoes the float32 cast in backward. Forward is the same computation; backward takes autograd's steps in autograd's
/// order (mul, rsqrt, mean, pow, then one cast of the summed float32 gradient to x's dtype).
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
        var y = RmsNorm.Compute(x, w, (double)vars[2], out var r);
        // TorchSharp takes the saved tensors after forward returns: r must outlive this scope (the caller's frees it).
        ctx.save_for_backward(new List<Tensor> { x, w, scope.MoveToOuter(r) });
        return scope.MoveToOuter(y);
    }

    public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor grad_output)
    {
        using var scope = torch.NewDisposeScope(); // first: the saved tensors' wrappers are freed with it
        var saved = ctx.get_saved_variables();
        Tensor x = saved[0], w = saved[1], r = saved[2];
        long d = x.shape[^1];
        var xf = x.to_type(ScalarType.Float32);
        var gn = grad_output.mul(w).to_type(ScalarType.Float32);           // through w ⊙ n and the cast of n
        var direct = gn.mul(r);                                              // ∂(xf·r)/∂xf
        var gr = gn.mul(xf).sum(new long[] { -1 }, keepdim: true);           // ∂(xf·r)/∂r, (..., 1)
        var gv = gr.mul(-0.5).mul(r.pow(3));                                 // rsqrt'
        var viaStat = gv.div(d).mul(xf.mul(2));                              // mean', then pow'
        var gx = direct.add(viaStat).to_type(x.dtype);
        // One gradient per forward argument: x's; the frozen weight and eps get none.
        return CustomGradients.Return(grad_output, new List<Tensor> { scope.MoveToOuter(gx), null!, null! });
    }
}
