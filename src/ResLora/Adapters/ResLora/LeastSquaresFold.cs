namespace ResLora.Adapters;

/// <summary>
/// The calibrated least-squares fold of an is/ms block (docs/specs/reslora.md §4; issue "merges that keep the model"):
/// a plain rank-r pair (B_n, A*_n) whose A*_n best reproduces, from the block's own input X_n alone, the r-dim vector
/// M_n the block feeds to B_n during training — is: M = A_n(X_n + X_{n−1}) (at a chain start 2·A_n X_n), ms:
/// M = A_n X_n + Σ_k A_{n−k} X_{n−k}. With token rows as columns, A*_n = argmin ‖A X − M‖² + λ‖A‖² =
/// M Xᵀ (X Xᵀ + λI)⁻¹, λ = ridge · tr(X Xᵀ)/d. X Xᵀ (d×d) and M Xᵀ (r×d) are accumulated in float64 over batches
/// (real tokens only), so no token is kept. It is the best per-module linear fold; what remains is the part of the
/// shortcut no linear function of the module's own input predicts.
/// </summary>
public sealed class LeastSquaresFold : IDisposable
{
    /// <summary>The default ridge factor: λ = 1e-4 · tr(X Xᵀ) / d.</summary>
    public const double DefaultRidge = 1e-4;

    private readonly Dictionary<ResLoraLinear, (Tensor XX, Tensor MX, long Rows)> _acc = new();

    /// <summary>(batch, seq) with 1 at real tokens for the forward being recorded; null = every position is real.</summary>
    public Tensor? TokenMask { get; set; }

    /// <summary>Tokens recorded per block.</summary>
    public IReadOnlyDictionary<ResLoraLinear, long> Rows => _acc.ToDictionary(kv => kv.Key, kv => kv.Value.Rows);

    /// <summary>Adds one forward's rows: <paramref name="x"/> (…, d) the block's input, <paramref name="m"/> (…, r) what it fed to B.</summary>
    internal void Record(ResLoraLinear block, Tensor x, Tensor m)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var xf = x.detach().reshape(-1, x.shape[^1]).to_type(ScalarType.Float64);
        var mf = m.detach().reshape(-1, m.shape[^1]).to_type(ScalarType.Float64);
        if (TokenMask is { } mask)
        {
            var keep = mask.reshape(-1).to(xf.device).nonzero().squeeze(1);
            xf = xf.index_select(0, keep);
            mf = mf.index_select(0, keep);
        }
        Add(block, xf.t().matmul(xf), mf.t().matmul(xf), xf.shape[0]);
    }

    /// <summary>Accumulates precomputed sums (X Xᵀ (d, d), M Xᵀ (r, d), rows), float64.</summary>
    public void Add(ResLoraLinear block, Tensor xx, Tensor mx, long rows)
    {
        if (_acc.TryGetValue(block, out var a))
        {
            a.XX.add_(xx);
            a.MX.add_(mx);
            _acc[block] = (a.XX, a.MX, a.Rows + rows);
        }
        else _acc[block] = (xx.to_type(ScalarType.Float64).clone().DetachFromDisposeScope(), mx.to_type(ScalarType.Float64).clone().DetachFromDisposeScope(), rows);
    }

    /// <summary>A* (r, in) per recorded block, float32; a block that saw no token is an error naming it.</summary>
    public Dictionary<ResLoraLinear, Tensor> Fit(IEnumerable<ResLoraLinear> blocks, double ridge = DefaultRidge)
    {
        var result = new Dictionary<ResLoraLinear, Tensor>();
        foreach (var b in blocks)
        {
            if (!_acc.TryGetValue(b, out var a) || a.Rows == 0)
                throw new UserInputException($"{b.Spec.Name}: the calibration text reached this ResLoRA block with no real token; give more calibration text (--calib).");
            result[b] = Solve(a.XX, a.MX, ridge).to_type(b.LoraA.dtype).to(b.LoraA.device).DetachFromDisposeScope();
        }
        return result;
    }

    /// <summary>M Xᵀ (X Xᵀ + λI)⁻¹ with λ = ridge · tr(X Xᵀ)/d, in float64: (r, d).</summary>
    public static Tensor Solve(Tensor xx, Tensor mx, double ridge = DefaultRidge)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var g = xx.to_type(ScalarType.Float64);
        long d = g.shape[0];
        double lambda = ridge * g.trace().item<double>() / d;
        // A tiny floor keeps an all-zero X solvable (A* = 0 then); it is far below λ for any real input.
        var reg = g + torch.eye(d, dtype: ScalarType.Float64, device: g.device) * Math.Max(lambda, 1e-300);
        // (X Xᵀ + λI) is symmetric: A*ᵀ = (X Xᵀ + λI)⁻¹ (M Xᵀ)ᵀ.
        var at = torch.linalg.solve(reg, mx.to_type(ScalarType.Float64).t());
        return scope.MoveToOuter(at.t().contiguous());
    }

    public void Dispose()
    {
        foreach (var (xx, mx, _) in _acc.Values) { xx.Dispose(); mx.Dispose(); }
        _acc.Clear();
    }
}
