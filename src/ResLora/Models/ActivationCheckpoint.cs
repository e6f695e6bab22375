namespace ResLora.Models;

/// <summary>What a module may ask about activation checkpointing (<c>--grad-checkpoint</c>).</summary>
public static class ActivationCheckpoint
{
    [ThreadStatic] private static int _recomputing;

    /// <summary>
    /// True while a checkpointed layer is being recomputed in backward (on this thread). A module whose forward has a side
    /// effect beyond its output (ResLoRA's norm windows) skips it then, so a step has the same effects as without checkpointing.
    /// </summary>
    public static bool IsRecomputing => _recomputing > 0;

    internal static IDisposable Recomputing()
    {
        _recomputing++;
        return new Leave();
    }

    private sealed class Leave : IDisposable
    {
        private bool _done;

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            _recomputing--;
        }
    }
}

/// <summary>
/// Activation checkpointing of one decoder layer (<c>--grad-checkpoint</c>). TorchSharp has no
/// <c>torch.utils.checkpoint</c>; this is PyTorch's reentrant variant on TorchSharp's custom autograd functions
/// (<c>torch.autograd.SingleTensorFunction</c>, 0.102+). Forward runs the layer without a graph (a custom function's
/// forward runs with grad off) and keeps only the layer's inputs and the CPU generator's state; backward restores that
/// state (so dropout draws the same masks), recomputes the layer with grad on from a detached copy of its input, runs
/// backward through the recomputed graph with the incoming gradient (the adapter parameters' gradients accumulate as
/// usual) and returns the input's gradient. Memory: one (batch, seq, hidden) input per layer instead of every
/// activation of every layer; cost: each layer's forward runs twice.
/// </summary>
internal sealed class DecoderLayerCheckpoint : torch.autograd.SingleTensorFunction<DecoderLayerCheckpoint>
{
    public override string Name => nameof(DecoderLayerCheckpoint);

    /// <summary>The layer's output for x (batch, seq, hidden); x must require grad for the layer's parameters to get any.</summary>
    public static Tensor Run(IDecoderBlock layer, Tensor x, Tensor cos, Tensor sin, Tensor? mask) => apply(x, cos, sin, mask!, layer);

    public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var x = (Tensor)vars[0];
        var cos = (Tensor)vars[1];
        var sin = (Tensor)vars[2];
        var mask = vars[3] as Tensor;
        var layer = (IDecoderBlock)vars[4];
        ctx.save_data("layer", layer);
        using (var state = torch.get_rng_state()) ctx.save_data("rng", state.data<byte>().ToArray());
        ctx.save_for_backward(new List<Tensor> { x, cos, sin, mask! }); // a null mask is saved as an empty slot
        return layer.Forward(x, cos, sin, mask, null);
    }

    public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor grad_output)
    {
        var layer = (IDecoderBlock)ctx.get_data("layer");
        var rng = (byte[])ctx.get_data("rng");
        using var scope = torch.NewDisposeScope(); // first: the saved tensors' wrappers are freed with it
        var saved = ctx.get_saved_variables();
        Tensor gx;
        using (torch.enable_grad())
        {
            var x = saved[0].detach().requires_grad_(true);
            var current = torch.get_rng_state();
            Tensor y;
            try
            {
                using (var replay = torch.tensor(rng)) torch.set_rng_state(replay);
                using (ActivationCheckpoint.Recomputing()) y = layer.Forward(x, saved[1], saved[2], saved[3], null);
            }
            finally
            {
                torch.set_rng_state(current); // the run's random stream continues as if nothing was recomputed
            }
            y.backward(new[] { grad_output });
            gx = x.grad ?? torch.zeros_like(x);
        }
        // One gradient per forward argument: x's; none for cos, sin, the mask and the layer.
        return CustomGradients.Return(grad_output, new List<Tensor> { scope.MoveToOuter(gx), null!, null!, null!, null! });
    }
}
