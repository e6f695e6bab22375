using System.Text.Json.Serialization;
using ResLora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ResLora.Adapters;

/// <summary>PEFT's LycorisConfig fields shared by LoHa and LoKr (peft-format.md §2.7): <c>alpha</c> (not lora_alpha), rank/module dropout, init_weights.</summary>
public abstract record LycorisConfigBase : AdapterConfigBase
{
    /// <summary>PEFT's name for α in LyCORIS configs; kept equal to <see cref="AdapterConfigBase.LoraAlpha"/>.</summary>
    [JsonPropertyName("alpha")] public double Alpha { get => LoraAlpha; init => LoraAlpha = value; }
    [JsonPropertyName("rank_dropout")] public double RankDropout { get; init; }
    [JsonPropertyName("module_dropout")] public double ModuleDropout { get; init; }
    [JsonPropertyName("use_effective_conv2d")] public bool UseEffectiveConv2d { get; init; }

    public override void Validate()
    {
        base.Validate();
        if (!(RankDropout >= 0 && RankDropout < 1)) throw new ArgumentException($"adapter_config.json: 'rank_dropout' must be in [0, 1), got {RankDropout}.");
        if (!(ModuleDropout >= 0 && ModuleDropout < 1)) throw new ArgumentException($"adapter_config.json: 'module_dropout' must be in [0, 1), got {ModuleDropout}.");
    }
}

public sealed record LoHaConfig : LycorisConfigBase
{
    [JsonPropertyName("peft_type")] public override string PeftType => "LOHA";
    [JsonIgnore] public override string Method => "loha";
}

public sealed record LoKrConfig : LycorisConfigBase
{
    [JsonPropertyName("peft_type")] public override string PeftType => "LOKR";
    [JsonPropertyName("decompose_both")] public bool DecomposeBoth { get; init; }
    [JsonPropertyName("decompose_factor")] public int DecomposeFactor { get; init; } = -1;
    [JsonPropertyName("rank_dropout_scale")] public bool RankDropoutScale { get; init; }
    [JsonIgnore] public override string Method => "lokr";
}

/// <summary>
/// The common body of LoHa and LoKr layers: ΔW is materialised each forward (no B(Ax) shortcut exists for a Hadamard or
/// Kronecker product) and applied as y = W₀x + b + ΔW x, with PEFT's rank dropout (rows of ΔW, rescaled) and module
/// dropout (skip the adapter) in training only.
/// </summary>
public abstract class MaterializedDeltaLinear : nn.Module<Tensor, Tensor>, IAdapter
{
#pragma warning disable IDE1006 // state-dict keys
    protected readonly Parameter weight;
    protected readonly Parameter? bias;
#pragma warning restore IDE1006
    private readonly double _rankDropout, _moduleDropout;
    private readonly bool _rescaleRankDropout;
    private Tensor? _merged;

    protected MaterializedDeltaLinear(LinearSpec spec, double rankDropout, double moduleDropout, bool rescale, ScalarType dtype, Device device, Generator? g) : base(spec.Name)
    {
        Spec = spec;
        (weight, bias) = LowRank.CreateBase(spec, dtype, device, g);
        _rankDropout = rankDropout;
        _moduleDropout = moduleDropout;
        _rescaleRankDropout = rescale;
    }

    public LinearSpec Spec { get; }
    public abstract string Method { get; }
    public Parameter Weight => weight;
    public Parameter? Bias => bias;
    public bool IsMerged => _merged is not null;
    public abstract IReadOnlyList<Parameter> TrainableParameters { get; }
    public abstract double Scaling { get; }

    /// <summary>ΔW (out, in) in the adapter dtype, with gradients (no scaling by dropout).</summary>
    protected abstract Tensor Delta();

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var y = nn.functional.linear(x, weight, bias);
        if (IsMerged) return scope.MoveToOuter(y);
        if (training && _moduleDropout > 0 && Random.Shared.NextDouble() < _moduleDropout) return scope.MoveToOuter(y);
        var d = Delta() * Scaling;
        if (training && _rankDropout > 0)
        {
            var keep = (torch.rand(d.shape[0], 1, device: d.device) > _rankDropout).to_type(d.dtype);
            d = d * keep;
            if (_rescaleRankDropout || Method == "loha") d = d / (1 - _rankDropout);
        }
        return scope.MoveToOuter(y + nn.functional.linear(x.to_type(d.dtype), d).to_type(y.dtype));
    }

    public Tensor DeltaWeight()
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        return scope.MoveToOuter((Delta() * Scaling).to_type(ScalarType.Float32));
    }

    public void Merge()
    {
        if (IsMerged) throw new InvalidOperationException($"{Spec.Name}: the {Method} adapter is already merged; call Unmerge() first.");
        var d = DeltaWeight().DetachFromDisposeScope();
        LowRank.AddToWeight(weight, () => d, +1);
        _merged = d;
    }

    public void Unmerge()
    {
        if (_merged is not { } d) throw new InvalidOperationException($"{Spec.Name}: the {Method} adapter is not merged; nothing to unmerge.");
        LowRank.AddToWeight(weight, () => d, -1);
        d.Dispose();
        _merged = null;
    }

    public abstract IReadOnlyDictionary<string, Tensor> GetAdapterState();

    public virtual void LoadAdapterState(IReadOnlyDictionary<string, Tensor> state)
    {
        if (IsMerged) throw new InvalidOperationException($"{Spec.Name}: cannot load adapter weights while merged; call Unmerge() first.");
        LowRank.CopyState(Spec.Name, GetAdapterState(), state);
    }

    /// <summary>Kaiming-uniform with a = √5 on a (rows, cols) matrix: U(±1/√cols), as nn.Linear / PEFT's reset.</summary>
    protected static Parameter Kaiming(long rows, long cols, ScalarType dtype, Device device, Generator? g) =>
        new(LowRank.Uniform(new[] { rows, cols }, 1.0 / Math.Sqrt(cols), dtype, device, g));

    protected static Parameter Zeros(long rows, long cols, ScalarType dtype, Device device) => new(torch.zeros(rows, cols, dtype: dtype, device: device));

    protected override void Dispose(bool disposing)
    {
        if (disposing) _merged?.Dispose();
        base.Dispose(disposing);
    }
}

/// <summary>LoHa (peft-format.md §3.4): ΔW = (α/r)·(W1a W1b) ⊙ (W2a W2b); init W1a, W1b, W2a Kaiming, W2b = 0.</summary>
public sealed class LoHaLinear : MaterializedDeltaLinear
{
#pragma warning disable IDE1006
    private readonly Parameter hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b;
#pragma warning restore IDE1006
    private readonly double _scaling;

    public LoHaLinear(LinearSpec spec, int r, double alpha, LoHaConfig c, ScalarType dtype, Device device, Generator? g)
        : base(spec, c.RankDropout, c.ModuleDropout, true, dtype, device, g)
    {
        var ad = LowRank.AdapterDtype(dtype);
        hada_w1_a = Kaiming(spec.OutFeatures, r, ad, device, g);
        hada_w1_b = Kaiming(r, spec.InFeatures, ad, device, g);
        hada_w2_a = Kaiming(spec.OutFeatures, r, ad, device, g);
        hada_w2_b = c.InitLoraWeights == LoraInit.Random ? Kaiming(r, spec.InFeatures, ad, device, g) : Zeros(r, spec.InFeatures, ad, device);
        _scaling = alpha / r;
        RegisterComponents();
    }

    public override string Method => "loha";
    public override double Scaling => _scaling;
    public override IReadOnlyList<Parameter> TrainableParameters => new[] { hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b };
    protected override Tensor Delta() => hada_w1_a.matmul(hada_w1_b) * hada_w2_a.matmul(hada_w2_b);

    public override IReadOnlyDictionary<string, Tensor> GetAdapterState() => new Dictionary<string, Tensor>
    {
        ["hada_w1_a"] = hada_w1_a,
        ["hada_w1_b"] = hada_w1_b,
        ["hada_w2_a"] = hada_w2_a,
        ["hada_w2_b"] = hada_w2_b,
    };
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
        bool lycoris = false; // PEFT's "lycoris" init string is not modelled by LoraInit; default and random are.
        bool random = c.InitLoraWeights == LoraInit.Random;
        if (c.DecomposeBoth && r < Math.Max(a, cc) / 2.0)
        {
            _p["lokr_w1_a"] = random || lycoris ? Kaiming(a, r, ad, device, g) : Zeros(a, r, ad, device);
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

    public override string Method => "lokr";
    public override double Scaling => _scaling;
    public override IReadOnlyList<Parameter> TrainableParameters => _p.Values.ToList();
    public IReadOnlyCollection<string> FactorNames => _p.Keys;

    protected override Tensor Delta()
    {
        var w1 = _p.TryGetValue("lokr_w1", out var x1) ? (Tensor)x1 : _p["lokr_w1_a"].matmul(_p["lokr_w1_b"]);
        var w2 = _p.TryGetValue("lokr_w2", out var x2) ? (Tensor)x2 : _p["lokr_w2_a"].matmul(_p["lokr_w2_b"]);
        return torch.kron(w1, w2);
    }

    public override IReadOnlyDictionary<string, Tensor> GetAdapterState() => _p.ToDictionary(kv => kv.Key, kv => (Tensor)kv.Value);
}

internal sealed class LoHaLayerBuilder(LoHaConfig c, Generator? g) : IAdapterLayerBuilder
{
    public string Method => "loha";
    public nn.Module<Tensor, Tensor> Build(AdapterTarget t, ScalarType dtype, Device device) => new LoHaLinear(t.Spec, t.R, t.Alpha, c, dtype, device, g);
}

internal sealed class LoKrLayerBuilder(LoKrConfig c, Generator? g) : IAdapterLayerBuilder
{
    public string Method => "lokr";
    public nn.Module<Tensor, Tensor> Build(AdapterTarget t, ScalarType dtype, Device device) => new LoKrLinear(t.Spec, t.R, t.Alpha, c, dtype, device, g);
}
