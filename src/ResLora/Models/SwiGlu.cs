namespace ResLora.Models;

/// <summary>
/// silu(gate) ⊙ up (LLaMA's MLP) as one autograd node that keeps only gate and up for backward. The composed form also
/// keeps silu(gate), a third (tokens, intermediate) tensor per layer: at Qwen2.5-0.5B's shape and batch 4 × 512 that is
/// 40 MB per layer in float32, about 1 GB over 24 layers. Backward recomputes the sigmoid in float32, as PyTorch's
/// silu_backward does for half-precision inputs. Used while training with gradients on; inference uses the composed form.
/// </summary>
internal sealed class SwiGlu : torch.autograd.SingleTensorFunction<SwiGlu>
{
    public override string Name => nameof(SwiGlu);

    /// <summary>silu(gate) ⊙ up; the fused node when a gradient will be taken, the plain ops otherwise.</summary>
    public static Tensor Run(Tensor gate, Tensor up) =>
        torch.is_grad_enabled() && (gate.requires_grad || up.requires_grad) ? apply(gate, up) : nn.functional.silu(gate) * up;

    public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var gate = (Tensor)vars[0];
        var up = (Tensor)vars[1];
        ctx.save_for_backward(new List<Tensor> { gate, up });
        return nn.functional.silu(gate) * up;
    }

    public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor grad_output)
    {
        var saved = ctx.get_saved_variables();
        using var scope = torch.NewDisposeScope();
        var gate = saved[0].to_type(ScalarType.Float32);
        var up = saved[1].to_type(ScalarType.Float32);
        var g = grad_output.to_type(ScalarType.Float32);
        var s = torch.sigmoid(gate);
        var silu = gate * s;
        var gUp = (g * silu).to_type(saved[1].dtype);
        // d silu(x)/dx = s(x)·(1 + x·(1 − s(x)))
        var gGate = (g * up * s * (gate * (1 - s) + 1)).to_type(saved[0].dtype);
        return new List<Tensor> { scope.MoveToOuter(gGate), scope.MoveToOuter(gUp) };
    }
}
