using System.Text.Json.Serialization;
using ResLora.Models;

namespace ResLora.Adapters;

public sealed record LoHaConfig : LycorisConfigBase
{
    [JsonPropertyName("peft_type")] public override string PeftType => "LOHA";
    [JsonIgnore] public override string Method => "loha";
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

    protected override string MethodName => "LoHa";
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

internal sealed class LoHaLayerBuilder(LoHaConfig c, Generator? g) : IAdapterLayerBuilder
{
    public nn.Module<Tensor, Tensor> Build(AdapterTarget t, ScalarType dtype, Device device) => new LoHaLinear(t.Spec, t.R, t.Alpha, c, dtype, device, g);
}
