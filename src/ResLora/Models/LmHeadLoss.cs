namespace ResLora.Models;

/// <summary>
/// The LM head and the masked next-token cross-entropy, computed a chunk of rows at a time so that the logits of a whole
/// batch never exist. For a Qwen2.5-sized vocabulary (151,936) one batch of 4 × 512 tokens has 1.25 GB of float32 logits,
/// and the unchunked loss keeps several such tensors alive until backward (logits, their float32 copy, log-softmax and
/// its gradient): at 0.5 B parameters that, not the weights or the layers, set the training peak.
/// </summary>
/// <remarks>
/// Only rows whose label is not −100 go through the head (prompt and padding rows cost nothing). With a frozen head the
/// gradient of each chunk's loss with respect to its hidden rows is computed during forward, as the fused
/// linear-cross-entropy kernels of Liger and unsloth do, and kept ((n, hidden), small); backward scales it by the incoming
/// gradient, so no matmul runs twice. A head with trainable parameters (an adapter on <c>lm_head</c>) is recomputed chunk
/// by chunk in backward instead, with the forward's random state, so its parameter gradients carry the incoming scale.
/// The result equals the unchunked loss up to float summation order.
/// </remarks>
public static class LmHeadLoss
{
    /// <summary>Logit elements per chunk (float32: 128 MB); a chunk has at least one row.</summary>
    public const long DefaultChunkElements = 1L << 25;

    /// <summary>
    /// Mean masked next-token loss: <paramref name="hidden"/> (batch, seq, hidden) after the final norm predicts
    /// <paramref name="labels"/> (batch, seq) shifted by one; −100 is ignored. <paramref name="head"/> maps (rows, hidden) to
    /// (rows, <paramref name="vocab"/>) logits; <paramref name="headTrainable"/> says whether it has trainable parameters. Returns the mean (float32 scalar) and the
    /// number of loss tokens; with none, a zero that still reaches the graph.
    /// </summary>
    public static (Tensor Loss, long Tokens) Mean(Tensor hidden, Tensor labels, Func<Tensor, Tensor> head, long vocab, bool headTrainable, long chunkElements = DefaultChunkElements)
    {
        using var scope = torch.NewDisposeScope();
        long d = hidden.shape[^1];
        var h = hidden[.., ..^1, ..].reshape(-1, d);
        var y = labels[.., 1..].reshape(-1);
        var rows = y.ne(-100).nonzero().squeeze(1);
        long n = rows.shape[0];
        if (n == 0) return (scope.MoveToOuter(h.sum().to_type(ScalarType.Float32) * 0), 0);
        var hv = h.index_select(0, rows);
        var yv = y.index_select(0, rows);
        long chunk = Math.Max(1, chunkElements / vocab);
        bool needsGrad = torch.is_grad_enabled() && (hv.requires_grad || headTrainable);
        // Only a function input that requires grad gives the result a graph; with every layer frozen and an adapter on the
        // head alone, the rows are made such a leaf (their gradient is computed and dropped).
        if (needsGrad && !hv.requires_grad) hv = hv.detach().requires_grad_(true);
        var mean = needsGrad
            ? LmHeadLossFunction.apply(hv, yv, new Head(head, chunk, headTrainable, n))
            : SumNoGrad(hv, yv, head, chunk) / n;
        return (scope.MoveToOuter(mean), n);
    }

    internal static Tensor SumNoGrad(Tensor hv, Tensor yv, Func<Tensor, Tensor> head, long chunk)
    {
        using var noGrad = torch.no_grad();
        var total = torch.zeros(Array.Empty<long>(), dtype: ScalarType.Float32, device: hv.device);
        long n = hv.shape[0];
        for (long s = 0; s < n; s += chunk)
        {
            using var inner = torch.NewDisposeScope();
            long len = Math.Min(chunk, n - s);
            total.add_(ChunkSum(head, hv.narrow(0, s, len), yv.narrow(0, s, len)));
        }
        return total;
    }

    /// <summary>Summed float32 cross-entropy of one chunk of rows through the head (the logits cast as the whole-batch loss casts them).</summary>
    internal static Tensor ChunkSum(Func<Tensor, Tensor> head, Tensor rows, Tensor labels) =>
        nn.functional.cross_entropy(head(rows).to_type(ScalarType.Float32), labels, reduction: nn.Reduction.Sum);

    /// <summary>
    /// One chunk's float32 cross-entropy per row (returned, (rows), without a graph), and the gradient of
    /// Σᵢ <paramref name="scale"/>ᵢ·CEᵢ (scale a float32 scalar or one factor per row, (rows, 1)) sent back through the head's graph: to the rows and to
    /// any trainable head parameters.
    /// The softmax-minus-one-hot gradient is formed in place in one float32 copy of the logits (the logits themselves when
    /// the head computes in float32) and rounded back into the logits' own storage: 6 bytes a logit at peak with a bf16
    /// head, 4 with a float32 one, where autograd's cross-entropy holds the logits, their float32 copy, the log-softmax and
    /// two gradients of that size (20 and 16 bytes).
    /// The same max-shifted log-sum-exp as libtorch's log-softmax; the rows sum to <see cref="ChunkSum"/> up to rounding.
    /// </summary>
    internal static Tensor ChunkRowsBackward(Func<Tensor, Tensor> head, Tensor rows, Tensor labels, Tensor scale)
    {
        var logits = head(rows);
        Tensor sum, grad;
        using (torch.no_grad())
        {
            // A detached alias: the head's graph keeps its inputs, not its output, so rewriting the logits in place is
            // safe; were the output saved, autograd's version check would fail loudly in backward.
            var z = logits.detach().to_type(ScalarType.Float32);
            var at = labels.unsqueeze(1);
            z.sub_(z.amax(new long[] { 1 }, keepdim: true));
            var picked = z.gather(1, at);
            z.exp_();
            var norm = z.sum(1, keepdim: true);
            sum = (norm.log() - picked).squeeze(1);
            z.div_(norm).scatter_add_(1, at, torch.full_like(picked, -1.0)).mul_(scale);
            if (logits.dtype == ScalarType.Float32)
            {
                grad = z;
            }
            else
            {
                // The logits' values are no longer needed: their own storage takes the rounded gradient.
                grad = logits.detach().copy_(z);
                z.Dispose();
            }
        }
        logits.backward(new[] { grad });
        return sum;
    }

    /// <summary>
    /// Backward through a trainable head: each chunk of rows recomputed with the forward's random state
    /// (<paramref name="rng"/>), sending back Σᵢ scaleᵢ·CEᵢ with <paramref name="scale"/>(start, length) a float32 scalar or
    /// one factor per row (length, 1); returns the rows' gradient (n, hidden).
    /// </summary>
    internal static Tensor RecomputeBackward(Head head, Tensor hv, Tensor yv, byte[] rng, Func<long, long, Tensor> scale)
    {
        var gx = torch.zeros_like(hv);
        var current = torch.get_rng_state();
        try
        {
            using (var replay = torch.tensor(rng)) torch.set_rng_state(replay);
            using (torch.enable_grad())
            using (ActivationCheckpoint.Recomputing())
                for (long s = 0, n = hv.shape[0]; s < n; s += head.Chunk)
                {
                    using var inner = torch.NewDisposeScope();
                    long len = Math.Min(head.Chunk, n - s);
                    var rows = hv.narrow(0, s, len).detach().requires_grad_(true);
                    ChunkRowsBackward(head.Apply, rows, yv.narrow(0, s, len), scale(s, len));
                    gx.narrow(0, s, len).copy_(rows.grad!);
                }
        }
        finally
        {
            torch.set_rng_state(current);
        }
        return gx;
    }

    /// <summary>
    /// A frozen head in forward: each row's float32 cross-entropy (n, no graph) and the gradient of Σᵢ scale·CEᵢ with
    /// respect to the rows (n, hidden), a chunk of rows at a time, so backward is one multiplication.
    /// </summary>
    internal static (Tensor Rows, Tensor Grad) FrozenRows(Head head, Tensor hv, Tensor yv, Tensor scale)
    {
        var ce = torch.empty(hv.shape[0], dtype: ScalarType.Float32, device: hv.device);
        var grad = torch.zeros_like(hv);
        long n = hv.shape[0];
        using (torch.enable_grad())
            for (long s = 0; s < n; s += head.Chunk)
            {
                using var inner = torch.NewDisposeScope();
                long len = Math.Min(head.Chunk, n - s);
                var rows = hv.narrow(0, s, len).detach().requires_grad_(true);
                ce.narrow(0, s, len).copy_(ChunkRowsBackward(head.Apply, rows, yv.narrow(0, s, len), scale));
                grad.narrow(0, s, len).copy_(rows.grad!);
            }
        return (ce, grad);
    }

    /// <summary>What the autograd function needs besides tensors: the head, the chunk rows, the mode and the loss tokens (the mean's divisor).</summary>
    internal sealed record Head(Func<Tensor, Tensor> Apply, long Chunk, bool Trainable, long Tokens);
}

/// <summary>
/// The autograd function behind <see cref="LmHeadLoss.Mean"/>: forward returns the mean loss; backward returns the
/// hidden rows' gradient (kept from forward for a frozen head, recomputed for a trainable one).
/// </summary>
internal sealed class LmHeadLossFunction : torch.autograd.SingleTensorFunction<LmHeadLossFunction>
{
    public override string Name => nameof(LmHeadLossFunction);

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
            return LmHeadLoss.SumNoGrad(hv, yv, head.Apply, head.Chunk) / head.Tokens;
        }
        // Frozen head: each chunk's loss and the mean's gradient with respect to the chunk's rows, now. Scaling by 1/n in
        // float32 before the rows' gradient is rounded to a bf16 model's dtype rounds it once, as the whole-batch loss does.
        using var mean = torch.tensor(1.0 / head.Tokens, dtype: ScalarType.Float32, device: hv.device);
        var (ce, grad) = LmHeadLoss.FrozenRows(head, hv, yv, mean);
        using var _ = ce;
        var total = ce.sum();
        ctx.save_for_backward(new List<Tensor> { grad });
        return total.div_(head.Tokens);
    }

    public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor grad_output)
    {
        var head = (LmHeadLoss.Head)ctx.get_data("head");
        using var scope = torch.NewDisposeScope(); // first: the saved tensors' wrappers are freed with it
        var saved = ctx.get_saved_variables();
        Tensor gx;
        if (!head.Trainable)
        {
            // Exact when grad_output is 1 (the mean is the loss); otherwise scaled in float32 and rounded once more.
            var g = saved[0];
            gx = g.dtype == ScalarType.Float32 ? g.mul(grad_output) : g.to_type(ScalarType.Float32).mul_(grad_output).to_type(g.dtype);
        }
        else
        {
            using var scale = grad_output / head.Tokens;
            gx = LmHeadLoss.RecomputeBackward(head, saved[0], saved[1], (byte[])ctx.get_data("rng"), (_, _) => scale);
        }
        // One gradient per forward argument: the hidden rows'; none for the labels and the head.
        return CustomGradients.Return(grad_output, new List<Tensor> { scope.MoveToOuter(gx), null!, null! });
    }
}
