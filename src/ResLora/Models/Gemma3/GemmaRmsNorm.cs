using TorchSharp.Utils;

namespace ResLora.Models.Gemma3;

/// <summary>
/// Gemma's RMSNorm (modeling_gemma3.py Gemma3RMSNorm): y = cast(x_f32 · rsqrt(mean(x_f32²) + eps) · (1 + w_f32)). Unlike
/// LLaMA's it scales by 1 + w (so the stored weight is a zero-centred offset, 0 at initialisation) and applies the weight
/// in float32 before the single rounding back to x's dtype.
/// </summary>
public sealed class GemmaRmsNorm : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;
    private readonly double _eps;

    public GemmaRmsNorm(long size, double eps, ScalarType dtype, Device device) : base("GemmaRmsNorm")
    {
        _weight = new Parameter(torch.zeros(size, dtype: dtype, device: device));
        _eps = eps;
        RegisterComponents();
    }

    public Parameter Weight => _weight;

    /// <summary>x (..., size) → (..., size), normalized over the last dimension.</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var xf = x.to_type(ScalarType.Float32);
        var r = torch.rsqrt(xf.pow(2).mean(new long[] { -1 }, keepdim: true) + _eps); // (..., 1)
        var y = xf * r * (_weight.to_type(ScalarType.Float32) + 1.0);
        return scope.MoveToOuter(y.to_type(x.dtype));
    }
}
