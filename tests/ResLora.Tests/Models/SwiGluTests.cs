using ResLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>The fused silu(gate) ⊙ up node: the composed ops' values and gradients, with fewer tensors kept.</summary>
public sealed class SwiGluTests
{
    private static (Tensor Y, Tensor GGate, Tensor GUp) Grads(Tensor gate0, Tensor up0, Tensor g, bool fused)
    {
        var gate = gate0.detach().requires_grad_(true);
        var up = up0.detach().requires_grad_(true);
        var y = fused ? SwiGlu.Run(gate, up) : nn.functional.silu(gate) * up;
        y.backward(new[] { g });
        return (y.detach(), gate.grad!.clone(), up.grad!.clone());
    }

    [Fact]
    public void Float32_ValuesAndGradientsEqualTheComposedOps()
    {
        using var gen = new Generator(4);
        using var gate = torch.randn(new long[] { 3, 5, 24 }, generator: gen) * 3; // wide range: both tails of the sigmoid
        using var up = torch.randn(new long[] { 3, 5, 24 }, generator: gen);
        using var g = torch.randn(new long[] { 3, 5, 24 }, generator: gen);
        var plain = Grads(gate, up, g, fused: false);
        var fused = Grads(gate, up, g, fused: true);
        Assert.True(plain.Y.allclose(fused.Y, 0, 0), "forward must be the same ops");
        Assert.True(plain.GGate.allclose(fused.GGate, 1e-5, 1e-6), $"gate: {(plain.GGate - fused.GGate).abs().max().item<float>():g}");
        Assert.True(plain.GUp.allclose(fused.GUp, 1e-6, 1e-7), $"up: {(plain.GUp - fused.GUp).abs().max().item<float>():g}");
        Assert.True(plain.GGate.abs().max().item<float>() > 0.1); // non-trivial gradients
    }

    [Fact]
    public void BFloat16_GradientsAsCloseToFloat32AsTheComposedOps()
    {
        // bf16 keeps 8 bits of mantissa; the fused backward computes in float32 and rounds once, so it is at least as close
        // to the float32 gradient as the composed bf16 ops are (which round after every op).
        using var gen = new Generator(5);
        using var gate = torch.randn(new long[] { 4, 64 }, generator: gen) * 3;
        using var up = torch.randn(new long[] { 4, 64 }, generator: gen);
        using var g = torch.randn(new long[] { 4, 64 }, generator: gen);
        var reference = Grads(gate, up, g, fused: false);
        var b = ScalarType.BFloat16;
        var plain = Grads(gate.to(b), up.to(b), g.to(b), fused: false);
        var fused = Grads(gate.to(b), up.to(b), g.to(b), fused: true);
        Assert.Equal(b, fused.GGate.dtype);
        double Err(Tensor x, Tensor r) => (x.to(ScalarType.Float32) - r).abs().max().item<float>();
        double scale = reference.GGate.abs().max().item<float>();
        Assert.True(Err(fused.GGate, reference.GGate) <= Math.Max(Err(plain.GGate, reference.GGate), 0.01 * scale),
            $"fused {Err(fused.GGate, reference.GGate):g} vs composed {Err(plain.GGate, reference.GGate):g}");
        Assert.True(Err(fused.GUp, reference.GUp) <= 0.01 * reference.GUp.abs().max().item<float>());
    }

    [Fact]
    public void WithoutGradients_RunsThePlainOps()
    {
        using var noGrad = torch.no_grad();
        using var gate = torch.randn(2, 8).requires_grad_(true);
        using var up = torch.randn(2, 8);
        using var y = SwiGlu.Run(gate, up);
        Assert.False(y.requires_grad);
        Assert.True(y.allclose(nn.functional.silu(gate) * up));
    }
}
