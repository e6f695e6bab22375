namespace ResLora.Models;

/// <summary>
/// Per-token log-probabilities of the labelled next tokens through the LM head, a chunk of rows at a time, so that the
/// batch's logits never exist: what preference losses need (one summed log-probability per sequence), with the memory
/// of <see cref="LmHeadLoss"/>. The gradient of each token's log-probability with respect to its hidden row depends on
/// that row alone, so with a frozen head it is computed during forward ((n, hidden), kept) and backward only scales
/// each row by its incoming gradient; a trainable head is recomputed chunk by chunk in backward with per-row factors.
/// </summary>
public static class LmHeadLogps
{
    /// <summary>
    /// log p(label_{p+1} | ..p) for every position p whose next label is not −100. <paramref name="hidden"/> (batch, seq,
    /// hidden) are the final hidden states, <paramref name="labels"/> (batch, seq) the ids with −100 where nothing is
    /// scored. Returns <c>Logps</c> (n) float32 carrying the graph, and <c>Row</c> (n) int64, the batch row of each.
    /// </summary>
    /// <exception cref="ArgumentException">No position is scored.</exception>
    public static (Tensor Logps, Tensor Row) PerToken(Tensor hidden, Tensor labels, Func<Tensor, Tensor> head, long vocab, bool headTrainable,
        long chunkElements = LmHeadLoss.DefaultChunkElements)
    {
        using var scope = torch.NewDisposeScope();
        long d = hidden.shape[^1], t = hidden.shape[1];
        var h = hidden[.., ..^1, ..].reshape(-1, d);      // (b·(t−1), hidden)
        var y = labels[.., 1..].reshape(-1);              // (b·(t−1))
        var index = y.ne(-100).nonzero().squeeze(1);      // (n)
        long n = index.shape[0];
        if (n == 0) throw new ArgumentException("no position is scored (every label after the first is -100).", nameof(labels));
        var hv = h.index_select(0, index);
        var yv = y.index_select(0, index);
        var row = index.div(t - 1, rounding_mode: RoundingMode.floor);
        long chunk = Math.Max(1, chunkElements / vocab);
        bool needsGrad = torch.is_grad_enabled() && (hv.requires_grad || headTrainable);
        if (needsGrad && !hv.requires_grad) hv = hv.detach().requires_grad_(true);
        var logps = needsGrad
            ? LmHeadLogpsFunction.apply(hv, yv, new LmHeadLoss.Head(head, chunk, headTrainable, n))
            : RowsNoGrad(hv, yv, head, chunk).neg_();
        return (scope.MoveToOuter(logps), scope.MoveToOuter(row));
    }

    /// <summary>Each row's float32 cross-entropy through the head, (n), without a graph.</summary>
    internal static Tensor RowsNoGrad(Tensor hv, Tensor yv, Func<Tensor, Tensor> head, long chunk)
    {
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        long n = hv.shape[0];
        var parts = new List<Tensor>();
        for (long s = 0; s < n; s += chunk)
        {
            long len = Math.Min(chunk, n - s);
            parts.Add(nn.functional.cross_entropy(head(hv.narrow(0, s, len)).to_type(ScalarType.Float32), yv.narrow(0, s, len), reduction: nn.Reduction.None));
        }
        return scope.MoveToOuter(torch.cat(parts.ToArray(), 0));
    }
}

/// <summary>The autograd function behind <see cref="LmHeadLogps.PerToken"/>: forward returns −CE per row, backward scales the rows' gradients.</summary>
internal sealed class LmHeadLogpsFunction : torch.autograd.SingleTensorFunction<LmHeadLogpsFunction>
{
    public override string Name => nameof(LmHeadLogpsFunction);

    public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var hv = (Tensor)vars[0];
        var yv = (Tensor)vars[1];
        var head = (LmHeadLoss.Head)vars[2];
        ctx.save_data("head", head);
        if (head.Trainable)
        {
            using (var state = torch.get_rng_state()) ctx.save_data("rng", state.data<byte>().ToArray());
            ctx.save_for_backward(new List<Tensor> { hv, yv });
            return LmHeadLogps.RowsNoGrad(hv, yv, head.Apply, head.Chunk).neg_();
        }
        // Frozen head: ∂CEᵢ/∂hᵢ for every row now (scale 1), so backward is one multiplication.
        using var one = torch.tensor(1.0f, device: hv.device);
        var (ce, grad) = LmHeadLoss.FrozenRows(head, hv, yv, one);
        ctx.save_for_backward(new List<Tensor> { grad });
        return ce.neg_();
    }

    public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor grad_output)
    {
        var head = (LmHeadLoss.Head)ctx.get_data("head");
        using var scope = torch.NewDisposeScope();
        var saved = ctx.get_saved_variables();
        // d(Σ gᵢ·log pᵢ)/dhᵢ = −gᵢ·∂CEᵢ/∂hᵢ.
        var factor = grad_output.to_type(ScalarType.Float32).neg().unsqueeze(1); // (n, 1)
        Tensor gx;
        if (!head.Trainable)
        {
            var g = saved[0];
            gx = g.to_type(ScalarType.Float32).mul_(factor).to_type(g.dtype);
        }
        else
        {
            gx = LmHeadLoss.RecomputeBackward(head, saved[0], saved[1], (byte[])ctx.get_data("rng"), (s, len) => factor.narrow(0, s, len));
        }
        return CustomGradients.Return(grad_output, new List<Tensor> { scope.MoveToOuter(gx), null!, null! });
    }
}
