using ResLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>The MLP's silu(gate) ⊙ up node (<see cref="SwiGlu"/>) against autograd through the composed ops.</summary>
public sealed class SwiGluTests
{
    private static (Tensor H, Tensor GGate, Tensor GUp) Run(Tensor gate0, Tensor up0, Tensor probe, bool node)
    {
        SwiGlu.Off = !node;
        try
        {
            var gate = gate0.detach().clone().requires_grad_(true);
            var up = up0.detach().clone().requires_grad_(true);
            var h = SwiGlu.Run(gate, up);
            h.to_type(ScalarType.Float32).mul(probe).sum().backward();
            return (h.detach(), gate.grad!.detach(), up.grad!.detach());
        }
        finally { SwiGlu.Off = false; }
    }

    private static double Rel(Tensor a, Tensor b)
    {
        using var s = torch.NewDisposeScope();
        var a64 = a.to_type(ScalarType.Float64);
        var b64 = b.to_type(ScalarType.Float64);
        return a64.sub(b64).abs().max().item<double>() / b64.abs().max().item<double>();
    }

    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.BFloat16)]
    public void Node_MatchesComposedSiluTimesUp_ValuesAndGradients(ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        var g = new Generator(31);
        var gate = torch.randn(new long[] { 2, 6, 40 }, generator: g).mul(3).to_type(dtype);
        var up = torch.randn(new long[] { 2, 6, 40 }, generator: g).to_type(dtype);
        var probe = torch.randn(new long[] { 2, 6, 40 }, generator: g);
        var (h, gg, gu) = Run(gate, up, probe, node: true);
        var (hr, ggr, gur) = Run(gate, up, probe, node: false);
        Assert.Equal(0.0, Rel(h, hr));
        Assert.Equal(0.0, Rel(gu, gur)); // g ⊙ silu(gate), the same ops
        Assert.Equal(0.0, Rel(gg, ggr)); // libtorch's silu backward on the recomputed silu
        Assert.Equal(dtype, gg.dtype);
        // Not the sigmoid alone: silu' = s(1 + x(1 − s)) differs from s where |x| is large.
        var x = gate.to_type(ScalarType.Float32);
        var wrong = probe.mul(up.to_type(ScalarType.Float32)).mul(torch.sigmoid(x));
        Assert.True(Rel(gg, wrong) > 0.1);
    }
}
