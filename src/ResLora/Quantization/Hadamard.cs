namespace ResLora.Quantization;

/// <summary>
/// Normalized Hadamard transforms of any size n = K·2^m used in LLaMA-family models (docs/specs/rolora.md §6):
/// M = (H_K ⊗ H_{2^m}) / √n with Sylvester H_{2^m} and H_K from the Paley I/II constructions (plus doubling); the
/// transform of a row v is T(v) = v Mᵀ = reshape(H_K · V · H_{2^m}) / √n with V = v as a K × 2^m matrix (§6.2).
/// For an n whose K has no construction here, a seeded random orthogonal K×K matrix replaces Ĥ_K (§6.3 option b):
/// invariance stays exact, checkpoints are not interchangeable with QuaRot's tables.
/// </summary>
public static class Hadamard
{
    private static readonly object Gate = new();
    private static readonly Dictionary<int, double[,]?> KCache = new();

    /// <summary>Splits n into K·2^m with K the largest factor we can build (K = 1 for powers of two); null K when none works.</summary>
    public static (int K, int Pow2, bool Constructed) Factor(int n)
    {
        if (n < 1) throw new UserInputException($"Hadamard size must be positive, got {n}.");
        int p = 1;
        while (n % (p * 2) == 0) p *= 2;
        int k = n / p;
        if (k == 1) return (1, p, true);
        // Try K, then K·2, K·4, ... so that odd K (never a Hadamard order) borrow powers of two: 12 = 3·4, 20 = 5·4 ...
        for (int kk = k, pp = p; pp >= 1; kk *= 2, pp /= 2)
            if (HadamardK(kk) is not null) return (kk, pp, true);
        return (k, p, false);
    }

    /// <summary>The ±1 Hadamard matrix of order K (H Hᵀ = K I) from Sylvester doubling and the Paley constructions, or null.</summary>
    public static double[,]? HadamardK(int k)
    {
        lock (Gate)
        {
            if (KCache.TryGetValue(k, out var hit)) return hit;
            var h = Build(k);
            KCache[k] = h;
            return h;
        }
    }

    private static double[,]? Build(int k)
    {
        if (k == 1) return new double[,] { { 1 } };
        if (k == 2) return new double[,] { { 1, 1 }, { 1, -1 } };
        if (k % 4 != 0) return null;
        if (IsPrime(k - 1) && (k - 1) % 4 == 3) return PaleyI(k - 1);
        if (k % 2 == 0 && IsPrime(k / 2 - 1) && (k / 2 - 1) % 4 == 1) return PaleyII(k / 2 - 1);
        if (Build(k / 2) is { } half) return Double(half);
        return null;
    }

    private static bool IsPrime(int q)
    {
        if (q < 2) return false;
        for (int d = 2; d * d <= q; d++) if (q % d == 0) return false;
        return true;
    }

    /// <summary>Legendre symbol χ(a) mod prime q: 0, 1 or −1.</summary>
    private static int Chi(int a, int q)
    {
        a = ((a % q) + q) % q;
        if (a == 0) return 0;
        long r = 1, b = a;
        for (int e = (q - 1) / 2; e > 0; e >>= 1, b = b * b % q) if ((e & 1) == 1) r = r * b % q;
        return r == 1 ? 1 : -1;
    }

    /// <summary>Paley I (q ≡ 3 mod 4): S = [[0, 1ᵀ], [−1, Q]], H = S + I, order q + 1 (§6.3).</summary>
    private static double[,] PaleyI(int q)
    {
        int n = q + 1;
        var h = new double[n, n];
        for (int j = 1; j < n; j++) { h[0, j] = 1; h[j, 0] = -1; }
        for (int i = 0; i < q; i++) for (int j = 0; j < q; j++) h[i + 1, j + 1] = Chi(j - i, q);
        for (int i = 0; i < n; i++) h[i, i] += 1;
        return h;
    }

    /// <summary>Paley II (q ≡ 1 mod 4): C = [[0, 1ᵀ], [1, Q]]; 0 → [[1,−1],[−1,−1]], ±1 → ±[[1,1],[1,−1]]; order 2(q + 1).</summary>
    private static double[,] PaleyII(int q)
    {
        int m = q + 1;
        var c = new int[m, m];
        for (int j = 1; j < m; j++) { c[0, j] = 1; c[j, 0] = 1; }
        for (int i = 0; i < q; i++) for (int j = 0; j < q; j++) c[i + 1, j + 1] = Chi(j - i, q);
        var h = new double[2 * m, 2 * m];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < m; j++)
            {
                double[,] blk = c[i, j] == 0 ? new double[,] { { 1, -1 }, { -1, -1 } } : new double[,] { { c[i, j], c[i, j] }, { c[i, j], -c[i, j] } };
                for (int a = 0; a < 2; a++) for (int b = 0; b < 2; b++) h[2 * i + a, 2 * j + b] = blk[a, b];
            }
        return h;
    }

    private static double[,] Double(double[,] x)
    {
        int n = x.GetLength(0);
        var h = new double[2 * n, 2 * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                h[i, j] = x[i, j]; h[i, j + n] = x[i, j]; h[i + n, j] = x[i, j]; h[i + n, j + n] = -x[i, j];
            }
        return h;
    }

    /// <summary>The orthogonal K×K factor (Ĥ_K, or a seeded random orthogonal matrix when no construction exists), float64.</summary>
    public static Tensor KFactor(int k, long seed = 0)
    {
        if (HadamardK(k) is { } hk) return torch.tensor(hk, ScalarType.Float64) / Math.Sqrt(k);
        using var gen = new torch.Generator((ulong)(seed + k));
        return RandomOrthogonal(k, gen);
    }

    /// <summary>Haar-random orthogonal matrix: QR of a Gaussian, columns' signs fixed by diag(R) (§3.2 "random").</summary>
    public static Tensor RandomOrthogonal(int n, torch.Generator gen)
    {
        using var scope = torch.NewDisposeScope();
        var g = torch.randn(new long[] { n, n }, ScalarType.Float64, generator: gen);
        var (q, r) = torch.linalg.qr(g);
        var signs = r.diagonal().sign();
        signs = torch.where(signs == 0, torch.ones_like(signs), signs);
        return scope.MoveToOuter(q * signs.unsqueeze(0));
    }

    /// <summary>Normalized fast Walsh–Hadamard transform along the last axis (length a power of two), Sylvester order (§6.1).</summary>
    public static Tensor Fwht(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        long n = x.shape[^1];
        if ((n & (n - 1)) != 0) throw new UserInputException($"FWHT needs a power-of-two length, got {n}.");
        var shape = x.shape;
        var v = x.reshape(-1, n);
        for (long h = 1; h < n; h *= 2)
        {
            var blocks = v.view(-1, n / (2 * h), 2, h);
            var a = blocks.select(2, 0);
            var b = blocks.select(2, 1);
            v = torch.stack(new[] { a + b, a - b }, 2).reshape(-1, n);
        }
        return scope.MoveToOuter((v / Math.Sqrt(n)).reshape(shape));
    }

    /// <summary>T(x) = x Mᵀ along the last axis for any supported size (the online R4 transform, §3.3), in x's dtype.</summary>
    public static Tensor Apply(Tensor x, long seed = 0)
    {
        using var scope = torch.NewDisposeScope();
        int n = (int)x.shape[^1];
        var (k, p, _) = Factor(n);
        var shape = x.shape;
        var v = x.reshape(-1, k, p);                           // V: K × 2^m per row
        if (p > 1) v = Fwht(v) * Math.Sqrt(p);                  // V H_{2^m} (unnormalized)
        if (k > 1)
        {
            var hk = KFactor(k, seed).to(x.dtype, x.device) * Math.Sqrt(k); // H_K (or √K·orthogonal)
            v = hk.matmul(v);                                   // H_K V
        }
        return scope.MoveToOuter((v / Math.Sqrt(n)).reshape(shape));
    }

    /// <summary>The dense normalized M (n × n, float64) with T(v) = v Mᵀ; for tests and small offline rotations.</summary>
    public static Tensor Matrix(int n, long seed = 0)
    {
        using var eye = torch.eye(n, dtype: ScalarType.Float64);
        using var t = Apply(eye, seed); // rows are T(e_i) = e_i Mᵀ = (row i of Mᵀ)
        return t.t().contiguous();
    }
}
