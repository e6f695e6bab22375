namespace ResLora.Quantization;

/// <summary>
/// Fake quantization (quantize → dequantize in float) as RoLoRA evaluates (docs/specs/rolora.md §5): symmetric
/// per-output-channel weights with an MSE clip search, RTN or GPTQ; symmetric per-token activations.
/// </summary>
public static class Quantizers
{
    /// <summary>maxq = 2^{b−1} − 1; integers in [−(maxq+1), maxq] (§5.1).</summary>
    public static int MaxQ(int bits) => bits is >= 2 and <= 16 ? (1 << (bits - 1)) - 1 : throw new UserInputException($"bits must be in 2..16, got {bits}.");

    /// <summary>q = clamp(round(w/scale), −(maxq+1), maxq)·scale with round-half-to-even; scale broadcast per row.</summary>
    public static Tensor QuantDequant(Tensor w, Tensor scale, int maxq)
    {
        using var scope = torch.NewDisposeScope();
        return scope.MoveToOuter(Codes(w, scale, maxq) * scale);
    }

    /// <summary>The integers of <see cref="QuantDequant"/>: clamp(round(w/scale), −(maxq+1), maxq), in w's float dtype.</summary>
    public static Tensor Codes(Tensor w, Tensor scale, int maxq)
    {
        using var scope = torch.NewDisposeScope();
        return scope.MoveToOuter((w / scale).round().clamp(-(maxq + 1), maxq));
    }

    /// <summary>
    /// Per-row symmetric scales (out, 1), float32: max(|min(w,0)|, max(w,0))/maxq floored at 1e-5/maxq, shrunk by the
    /// MSE clip search when <paramref name="clipSearch"/> (§5.1: p = 1 − i/100 for i &lt; 80, error Σ|Q_p(w) − w|^2.4,
    /// ties keep the larger p).
    /// </summary>
    public static Tensor WeightScales(Tensor w, int bits, bool clipSearch = true)
    {
        using var scope = torch.NewDisposeScope();
        int maxq = MaxQ(bits);
        var wf = w.detach().to_type(ScalarType.Float32);
        var xmax = torch.maximum(wf.amin(new long[] { 1 }, keepdim: true).neg().clamp_min(0), wf.amax(new long[] { 1 }, keepdim: true).clamp_min(0));
        var best = (xmax / maxq).clamp_min(1e-5 / maxq);
        if (clipSearch)
        {
            var bestErr = torch.full(new long[] { wf.shape[0], 1 }, float.PositiveInfinity);
            for (int i = 0; i < 80; i++)
            {
                double p = 1 - i / 100.0;
                var scale = (xmax * p / maxq).clamp_min(1e-5 / maxq);
                var err = (QuantDequant(wf, scale, maxq) - wf).abs().pow(2.4).sum(new long[] { 1 }, keepdim: true);
                var better = err < bestErr;
                best = torch.where(better, scale, best);
                bestErr = torch.where(better, err, bestErr);
            }
        }
        return scope.MoveToOuter(best);
    }

    /// <summary>RTN: every weight rounded once with its row's (clip-searched) scale.</summary>
    public static Tensor Rtn(Tensor w, int bits, bool clipSearch = true)
    {
        using var scope = torch.NewDisposeScope();
        var scale = WeightScales(w, bits, clipSearch);
        return scope.MoveToOuter(QuantDequant(w.detach().to_type(ScalarType.Float32), scale, MaxQ(bits)).to_type(w.dtype));
    }

    /// <summary>
    /// GPTQ (§5.1): columns quantized in order with the error of each fed back into the remaining ones through the upper
    /// Cholesky factor of H⁻¹, H = 2 XᵀX / N from calibration inputs; dead columns zeroed, damping 1% of mean(diag H),
    /// blocks of 128, row scales fixed up front by the clip-searched quantizer.
    /// </summary>
    public static Tensor Gptq(Tensor w, Tensor hessian, int bits, bool clipSearch = true, int blockSize = 128, double damp = 0.01)
    {
        using var scope = torch.NewDisposeScope();
        int maxq = MaxQ(bits);
        var W = w.detach().to_type(ScalarType.Float32).clone(); // (out, in)
        var H = hessian.detach().to_type(ScalarType.Float64).clone();
        long n = W.shape[1];
        var dead = H.diagonal().eq(0);
        if (dead.any().item<bool>())
        {
            var idx = dead.nonzero().squeeze(1);
            H.index_put_(torch.ones(idx.shape[0], dtype: ScalarType.Float64), idx, idx);
            W.index_fill_(1, idx, 0);
        }
        var scale = WeightScales(W, bits, clipSearch);
        double meanDiag = H.diagonal().mean().item<double>();
        H = H + torch.eye(n, dtype: ScalarType.Float64) * (damp * meanDiag);
        // U = upper Cholesky factor of H⁻¹ (chol(H) → inverse → chol upper).
        var L = torch.linalg.cholesky(H);
        var hInv = torch.cholesky_inverse(L);
        var U = torch.linalg.cholesky(hInv).t().contiguous().to_type(ScalarType.Float32); // upper
        var Q = torch.zeros_like(W);
        for (long b0 = 0; b0 < n; b0 += blockSize)
        {
            long b1 = Math.Min(n, b0 + blockSize), count = b1 - b0;
            var W1 = W.narrow(1, b0, count).clone();
            var Err = torch.zeros_like(W1);
            var U1 = U.narrow(0, b0, count).narrow(1, b0, count);
            for (long i = 0; i < count; i++)
            {
                var wcol = W1.narrow(1, i, 1);                         // (out, 1)
                var qcol = QuantDequant(wcol, scale, maxq);
                Q.narrow(1, b0 + i, 1).copy_(qcol);
                var err = (wcol - qcol) / U1[i, i];
                if (i + 1 < count)
                    W1.narrow(1, i + 1, count - i - 1).sub_(err.matmul(U1.narrow(0, i, 1).narrow(1, i + 1, count - i - 1)));
                Err.narrow(1, i, 1).copy_(err);
            }
            if (b1 < n) W.narrow(1, b1, n - b1).sub_(Err.matmul(U.narrow(0, b0, count).narrow(1, b1, n - b1)));
        }
        return scope.MoveToOuter(Q.to_type(w.dtype));
    }

    /// <summary>Per-token symmetric activation fake-quant (§5.2): one scale per row of the last axis, scale 1 where the row is all zero.</summary>
    public static Tensor Activation(Tensor x, int bits, double clip = 1.0)
    {
        using var scope = torch.NewDisposeScope();
        int maxq = MaxQ(bits);
        var xf = x.to_type(ScalarType.Float32);
        var xmax = torch.maximum(xf.amin(new long[] { -1 }, keepdim: true).neg().clamp_min(0), xf.amax(new long[] { -1 }, keepdim: true).clamp_min(0)) * clip;
        var scale = torch.where(xmax == 0, torch.ones_like(xmax), xmax / maxq);
        return scope.MoveToOuter(QuantDequant(xf, scale, maxq).to_type(x.dtype));
    }

    /// <summary>Pearson (non-excess) kurtosis over all elements (§7.1): E[(x−μ)⁴] / E[(x−μ)²]²; a Gaussian gives 3.</summary>
    public static double Kurtosis(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var v = x.detach().to_type(ScalarType.Float64).flatten();
        var c = v - v.mean();
        double m2 = c.pow(2).mean().item<double>();
        return m2 > 0 ? c.pow(4).mean().item<double>() / (m2 * m2) : double.NaN;
    }
}
