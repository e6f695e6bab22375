using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>What a base-mutating init gives: A (r, in), B (out, r) and what the base must hold, W' (out, in); float32.</summary>
internal readonly record struct MutatingInit(Tensor A, Tensor B, Tensor BaseWeight);

/// <summary>
/// PEFT's data-driven LoRA inits (peft/tuners/lora/layer.py <c>pissa_init</c>, <c>olora_init</c>;
/// peft/utils/loftq_utils.py <c>loftq_init</c>), computed in float32 from the base weight W (out, in) with scaling s:
/// <list type="bullet">
/// <item>PiSSA (Meng et al. 2024): W = V S Uᵀ; A = diag(√(S_r/s)) U_rᵀ, B = V_r diag(√(S_r/s)), W' = W − s·B·A, so
/// W' + s·B·A = W and s·B·A is the top-r SVD part. <c>pissa_niter_K</c> takes V_r, S_r, U_r from a randomized SVD
/// (Halko et al. 2011, as torch.svd_lowrank: q = r, K subspace iterations), seeded.</item>
/// <item>OLoRA (Büyükakyüz 2024): W = Q R (reduced); A = R[:r], B = Q[:, :r], W' = W − s·B·A (no 1/s: PEFT's choice).</item>
/// <item>LoftQ (Li et al. 2023, Alg. 1): Q_t = q(W − s·B_{t−1}A_{t−1}) (B₀A₀ = 0), then (B_t, A_t) = the rank-r split of
/// W − Q_t as in PiSSA; W' = Q_T. q is the base's own 4-bit packing (--base-bits 4). PEFT splits √S without 1/s, which
/// equals this when s = 1; dividing by s keeps Q + s·B·A ≈ W for any α, the quantity LoftQ minimises.</item>
/// </list>
/// </summary>
internal static class LoraInitializers
{
    /// <summary>Refuses a rank the init cannot give and LoftQ without a 4-bit base, naming the flag and the fix.</summary>
    internal static void Check(LinearSpec spec, LoraLayerOptions o)
    {
        long k = Math.Min(spec.OutFeatures, spec.InFeatures);
        if (o.R > k)
            throw new UserInputException($"--init {o.Init}: {spec.Name} is ({spec.OutFeatures}, {spec.InFeatures}), which has at most {k} singular directions, but the rank is {o.R}; use --rank {k} or less (or rank_pattern for this module).");
        if (o.Init.Kind == LoraInitKind.Loftq && spec.PackedBase?.Name is not ("nf4" or "int4"))
            throw new UserInputException($"--init loftq corrects the 4-bit quantization of the base, but {spec.Name} is {(spec.PackedBase is { } f ? f.Name : "not quantized")}; add --base-bits 4 (or use --init pissa for a full-precision base).");
        if (o.LoftqIter < 1) throw new UserInputException($"--loftq-iter {o.LoftqIter}: give 1 or more alternating steps.");
    }

    /// <summary>The init of <paramref name="o"/> from W (out, in) float32 CPU; the tensors are new.</summary>
    internal static MutatingInit Compute(Tensor w, LoraLayerOptions o, LinearSpec spec, long seed)
    {
        double s = o.Scaling;
        switch (o.Init.Kind)
        {
            case LoraInitKind.Pissa: return Pissa(w, o.R, s, o.Init.Niter, seed);
            case LoraInitKind.Olora: return Olora(w, o.R, s);
            case LoraInitKind.Loftq:
                var format = spec.PackedBase ?? throw new InvalidOperationException($"{spec.Name}: LoftQ needs the packed base format.");
                using (var scratch = format.Create(spec.OutFeatures, spec.InFeatures, CPU))
                    return Loftq(w, o.R, s, o.LoftqIter, x => { scratch.Pack(x); return scratch.Dequantize(ScalarType.Float32); });
            default: throw new InvalidOperationException($"init {o.Init} does not read the base weight.");
        }
    }

    /// <summary>PiSSA: exact SVD (<paramref name="niter"/> = 0) or randomized with niter subspace iterations.</summary>
    internal static MutatingInit Pissa(Tensor w, int r, double s, int niter, long seed)
    {
        using var scope = torch.NewDisposeScope();
        var (vr, sr, uhr) = TopSvd(w, r, niter, seed); // (out, r), (r), (r, in)
        var (a, b) = Split(vr, sr, uhr, s);
        Tensor residual = w.sub(b.matmul(a).mul(s));
        return new MutatingInit(scope.MoveToOuter(a), scope.MoveToOuter(b), scope.MoveToOuter(residual));
    }

    /// <summary>OLoRA: W = QR (reduced), A = R[:r] (r, in), B = Q[:, :r] (out, r), W' = W − s·B·A.</summary>
    internal static MutatingInit Olora(Tensor w, int r, double s)
    {
        using var scope = torch.NewDisposeScope();
        var (q, rr) = torch.linalg.qr(w); // (out, k), (k, in), k = min(out, in)
        Tensor a = rr.narrow(0, 0, r).contiguous();
        Tensor b = q.narrow(1, 0, r).contiguous();
        Tensor residual = w.sub(b.matmul(a).mul(s));
        return new MutatingInit(scope.MoveToOuter(a), scope.MoveToOuter(b), scope.MoveToOuter(residual));
    }

    /// <summary>LoftQ with quantizer q (W → dequantized 4-bit W); W' = the last Q_t.</summary>
    internal static MutatingInit Loftq(Tensor w, int r, double s, int iterations, Func<Tensor, Tensor> quantize)
    {
        using var scope = torch.NewDisposeScope();
        Tensor toQuantize = w, a = null!, b = null!, q = null!;
        for (int t = 0; t < iterations; t++)
        {
            q = quantize(toQuantize);                        // Q_t (out, in)
            var (vr, sr, uhr) = TopSvd(w.sub(q), r, 0, 0);    // the rank-r part of W − Q_t
            (a, b) = Split(vr, sr, uhr, s);
            toQuantize = w.sub(b.matmul(a).mul(s));
        }
        return new MutatingInit(scope.MoveToOuter(a), scope.MoveToOuter(b), scope.MoveToOuter(q));
    }

    /// <summary>A = diag(√(S/s)) Uhᵀ-rows (r, in), B = V diag(√(S/s)) (out, r): PEFT's split of the singular values.</summary>
    private static (Tensor A, Tensor B) Split(Tensor vr, Tensor sr, Tensor uhr, double s)
    {
        Tensor root = sr.div(s).sqrt(); // (r)
        return (uhr.mul(root.unsqueeze(1)).contiguous(), vr.mul(root.unsqueeze(0)).contiguous());
    }

    /// <summary>The top-r singular triplets of W (out, in): V_r (out, r), S_r (r), Uh_r (r, in); exact when niter = 0.</summary>
    private static (Tensor Vr, Tensor Sr, Tensor Uhr) TopSvd(Tensor w, int r, int niter, long seed)
    {
        if (niter == 0)
        {
            var (v, sv, uh) = torch.linalg.svd(w, fullMatrices: false);
            return (v.narrow(1, 0, r), sv.narrow(0, 0, r), uh.narrow(0, 0, r));
        }
        var (u2, s2, vt2) = RandomizedSvd(w, r, niter, seed);
        return (u2, s2, vt2);
    }

    /// <summary>
    /// Halko et al. 2011 (Alg. 4.4 + 5.1), as torch.svd_lowrank with q = r: Y = W·Ω with Ω ~ N(0, 1) (in, r) from a
    /// generator seeded with <paramref name="seed"/>; niter subspace iterations Q ← qr(W·qr(Wᵀ·Q)); then the SVD of QᵀW.
    /// Returns U (out, r), S (r), Vᵀ (r, in).
    /// </summary>
    internal static (Tensor U, Tensor S, Tensor Vh) RandomizedSvd(Tensor w, int r, int niter, long seed)
    {
        using var g = new torch.Generator((ulong)seed);
        Tensor omega = torch.randn(new long[] { w.shape[1], r }, dtype: ScalarType.Float32, generator: g);
        Tensor q = torch.linalg.qr(w.matmul(omega)).Q; // (out, r)
        for (int i = 0; i < niter; i++)
        {
            Tensor z = torch.linalg.qr(w.t().matmul(q)).Q; // (in, r)
            q = torch.linalg.qr(w.matmul(z)).Q;
        }
        var (ub, sv, vh) = torch.linalg.svd(q.t().matmul(w), fullMatrices: false); // (r, in) = Ub S Vh
        return (q.matmul(ub), sv, vh);
    }
}
