using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>
/// z = x_f32 Aᵀ for a float32 LoRA factor A (r, in) over a bf16/fp16 input x (..., in), keeping x itself for backward
/// instead of its float32 cast. Autograd through <c>x.to(float32)</c> then <c>linear</c> keeps the cast for A's gradient:
/// twice x's bytes, and once per adapted projection even where q, k and v read the same x. This node saves x (shared
/// with every other reader) and casts it again in backward. The numbers are autograd's: a bf16 → float32 cast is exact,
/// gx = gz A is cast to x's dtype as the cast's backward does, and gA = gzᵀ x_f32.
/// </summary>
internal sealed class UpcastDown : torch.autograd.SingleTensorFunction<UpcastDown>
{
    public override string Name => nameof(UpcastDown);

    /// <summary>Tests switch the node off on their own thread to compare against plain autograd through the cast.</summary>
    [ThreadStatic] internal static bool Off;

    /// <summary>(..., in) in a half dtype, A (r, in) in float32 → (..., r) in float32, with gradients to x and A.</summary>
    public static Tensor Run(Tensor x, Tensor a) => apply(x, a);

    public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var x = (Tensor)vars[0];
        var a = (Tensor)vars[1];
        ctx.save_data("gx", x.requires_grad);
        ctx.save_data("ga", a.requires_grad);
        ctx.save_for_backward(new List<Tensor> { x, a });
        using var xf = x.to_type(a.dtype);
        return nn.functional.linear(xf, a);
    }

    public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor grad_output)
    {
        using var scope = torch.NewDisposeScope(); // first: the saved tensors' wrappers are freed with it
        var saved = ctx.get_saved_variables();
        Tensor x = saved[0], a = saved[1];
        Tensor? gx = null, ga = null;
        if ((bool)ctx.get_data("gx")) gx = scope.MoveToOuter(grad_output.matmul(a).to_type(x.dtype)); // (..., in)
        if ((bool)ctx.get_data("ga"))
        {
            long r = a.shape[0], inF = a.shape[1];
            var gz = grad_output.reshape(-1, r);                   // (tokens, r)
            var xf = x.reshape(-1, inF).to_type(a.dtype);          // (tokens, in), float32 again
            ga = scope.MoveToOuter(gz.t().matmul(xf));             // (r, in)
        }
        return CustomGradients.Return(grad_output, new List<Tensor> { gx!, ga! });
    }
}
