namespace ResLora.Models;

/// <summary>
/// silu(gate) ⊙ up (LLaMA's MLP) as one autograd node that keeps only gate and up for backward. The composed form also
/// keeps silu(gate), a third (tokens, intermediate) tensor per layer: at Qwen2.5-0.5B's shape and batch 4 × 512, 20 MB
/// per layer in bf16, about 0.5 GB over 24 layers. Backward recomputes silu(gate) and takes autograd's steps with
/// libtorch's own kernels, so the gradients are the composed form's. Inference and frozen paths use the composed form.
/// </summary>
internal sealed class SwiGlu : torch.autograd.SingleTensorFunction<SwiGlu>
{
    public override string Name => nameof(SwiGlu);

    /// <summary>Tests switch the node off on their own thread to compare against plain autograd.</summary>
    [ThreadStatic] internal static bool Off;

    /// <summary>silu(gate) ⊙ up; the node when a gradient will be taken, the plain ops otherwise.</summary>
    public static Tensor Run(Tensor gate, Tensor up) =>
        !Off && torch.is_grad_enabled() && (gate.requires_grad || up.requires_grad) ? apply(gate, up) : nn.functional.silu(gate) * up;

    public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var gate = (Tensor)vars[0];
        var up = (Tensor)vars[1];
        ctx.save_for_backward(new List<Tensor> { gate, up });
        using var s = nn.functional.silu(gate);
        return s * up;
    }

    public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor grad_output)
    {
        using var scope = torch.NewDisposeScope(); // first: the saved tensors' wrappers are freed with it
        var saved = ctx.get_saved_variables();
        Tensor gate = saved[0], up = saved[1];
        Tensor gGate, gUp;
        using (torch.enable_grad())
        {
            // silu recomputed on a leaf, and its input gradient taken by libtorch's own silu backward (float32 inside,
            // one rounding to gate's dtype, no float32 tensor): the numbers autograd gives the composed ops.
            var x = gate.detach().requires_grad_(true);
            var s = nn.functional.silu(x);
            gUp = grad_output.mul(s.detach());
            gGate = torch.autograd.grad(new[] { s }, new[] { x }, new[] { grad_output.mul(up) })[0];
        }
        return CustomGradients.Return(grad_output, new List<Tensor> { scope.MoveToOuter(gGate), scope.MoveToOuter(gUp) });
    }
}
