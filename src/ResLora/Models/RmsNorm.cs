using TorchSharp.Utils;

namespace ResLora.Models;

/// <summary>
/// Root-mean-square layer norm as Hugging Face's LlamaRMSNorm: the statistic is computed in float32 and the
/// result is cast back to the input dtype before the weight is applied (modeling_llama.py, LlamaRMSNorm.forward).
/// TorchSharp ships no RMSNorm module.
/// </summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")] private readonly Parameter _weight;
    private readonly double _eps;

    public RmsNorm(long size, double eps, ScalarType dtype, Device device) : base("RmsNorm")
    {
        _weight = new Parameter(torch.ones(size, dtype: dtype, device: device));
        _eps = eps;
        RegisterComponents();
    }

    public Parameter Weight => _weight;

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        // (..., d): mean of squares over the last dimension, in float32 whatever the model dtype.
        var xf = x.to_type(ScalarType.Float32);
        var variance = xf.pow(2).mean(new long[] { -1 }, keepdim: true);
        var normed = (xf * torch.rsqrt(variance + _eps)).to_type(x.dtype);
        return scope.MoveToOuter(_weight * normed);
    }
}
