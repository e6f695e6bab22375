using System.Text.Json.Serialization;
using ResLora.Models;

namespace ResLora.Adapters;

public sealed record LoKrConfig : LycorisConfigBase
{
    [JsonPropertyName("peft_type")] public override string PeftType => "LOKR";
    [JsonPropertyName("decompose_both")] public bool DecomposeBoth { get; init; }
    [JsonPropertyName("decompose_factor")] public int DecomposeFactor { get; init; } = -1;
    [JsonPropertyName("rank_dropout_scale")] public bool RankDropoutScale { get; init; }
    [JsonIgnore] public override string Method => "lokr";
}

/// <summary>
/// LoKr (peft-format.md §3.5): ΔW = (α/r)·W1 ⊗ W2 with d_out = a·b, d_in = c·d from LyCORIS' factorization; W2 = W2a W2b
/// unless r ≥ max(b, d)/2, W1 full unless decompose_both and r &lt; max(a, c)/2; default init W1 (or W1a) = 0.
/// </summary>
public sealed class LoKrLinear : MaterializedDeltaLinear
{
    private readonly Dictionary<string, Parameter> _p = new(StringComparer.Ordinal);
    private readonly double _scaling;

    public LoKrLinear(LinearSpec spec, int r, double alpha, LoKrConfig c, ScalarType dtype, Device device, Generator? g)
        : base(spec, c.RankDropout, c.ModuleDropout, c.RankDropoutScale, dtype, device, g)
    {
        var ad = LowRank.AdapterDtype(dtype);
        var (a, b) = Factorization(spec.OutFeatures, c.DecomposeFactor);
        var (cc, d) = Factorization(spec.InFeatures, c.DecomposeFactor);
        bool random = c.InitLoraWeights == LoraInit.Random;
        if (c.DecomposeBoth && r < Math.Max(a, cc) / 2.0)
        {
            _p["lokr_w1_a"] = random ? Kaiming(a, r, ad, device, g) : Zeros(a, r, ad, device);
            _p["lokr_w1_b"] = Kaiming(r, cc, ad, device, g);
        }
        else _p["lokr_w1"] = random ? Kaiming(a, cc, ad, device, g) : Zeros(a, cc, ad, device);
        if (r < Math.Max(b, d) / 2.0)
        {
            _p["lokr_w2_a"] = Kaiming(b, r, ad, device, g);
            _p["lokr_w2_b"] = Kaiming(r, d, ad, device, g);
        }
        else _p["lokr_w2"] = Kaiming(b, d, ad, device, g);
        foreach (var (k, v) in _p) register_parameter(k, v);
        _scaling = alpha / r;
        RegisterComponents();
    }

    /// <summary>LyCORIS factorization(dim, factor): (m, n) with m ≤ n, m·n = dim, m as large as possible (closest to √dim), or (f, dim/f) when f divides dim.</summary>
    public static (int Small, int Large) Factorization(int dim, int factor = -1)
    {
        if (factor > 0 && dim % factor == 0)
        {
            int m2 = factor, n2 = dim / factor;
            return m2 > n2 ? (n2, m2) : (m2, n2);
        }
        if (factor == -1) factor = dim;
        int m = 1, n = dim;
        int length = m + n;
        while (m < n)
        {
            int newM = m + 1;
            while (dim % newM != 0) newM++;
            int newN = dim / newM;
            if (newM + newN > length || newM > factor) break;
            m = newM;
            n = newN;
            length = m + n;
        }
        return m > n ? (n, m) : (m, n);
    }

    protected override string MethodName => "LoKr";
    public override double Scaling => _scaling;
    public override IReadOnlyList<Parameter> TrainableParameters => _p.Values.ToList();

    protected override Tensor Delta()
    {
        var w1 = _p.TryGetValue("lokr_w1", out var x1) ? (Tensor)x1 : _p["lokr_w1_a"].matmul(_p["lokr_w1_b"]);
        var w2 = _p.TryGetValue("lokr_w2", out var x2) ? (Tensor)x2 : _p["lokr_w2_a"].matmul(_p["lokr_w2_b"]);
        return torch.kron(w1, w2);
    }

    public override IReadOnlyDictionary<string, Tensor> GetAdapterState() => _p.ToDictionary(kv => kv.Key, kv => (Tensor)kv.Value);
}

internal sealed class LoKrLayerBuilder(LoKrConfig c, Generator? g) : IAdapterLayerBuilder
{
    public nn.Module<Tensor, Tensor> Build(AdapterTarget t, ScalarType dtype, Device device) => new LoKrLinear(t.Spec, t.R, t.Alpha, c, dtype, device, g);
}
