using ResLora.Models;
using TorchSharp;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>
/// RMSNorm over a half-precision input with a frozen weight runs as one node (<see cref="HalfRmsNorm"/>) that keeps x, not
/// its float32 copy: the same forward and the same gradients.
/// </summary>
public sealed class HalfRmsNormTests
{
    private static (Tensor Y, Tensor Gx) Run(RmsNorm norm, Tensor x0, Tensor probe, bool node)
    {
        HalfRmsNorm.Off = !node;
        try
        {
            var x = x0.detach().clone().requires_grad_(true);
            var y = norm.call(x);
            y.to_type(ScalarType.Float32).mul(probe).sum().backward();
            return (y.detach(), x.grad!.detach());
        }
        finally { HalfRmsNorm.Off = false; }
    }

    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]
    public void FrozenWeight_HalfInput_SameOutputAndInputGradientAsAutograd(ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        var g = new Generator(23);
        using var norm = new RmsNorm(48, 1e-6, dtype, CPU);
        using (torch.no_grad()) norm.Weight.copy_(torch.rand(48, generator: g).add(0.5).to_type(dtype));
        norm.Weight.requires_grad_(false);
        // Rows of very different scales, so that the statistic's gradient term matters.
        var x0 = torch.randn(new long[] { 3, 5, 48 }, generator: g).mul(torch.logspace(-2, 2, 5).reshape(1, 5, 1)).to_type(dtype);
        var probe = torch.randn(new long[] { 3, 5, 48 }, generator: g);
        var (y, gx) = Run(norm, x0, probe, node: true);
        var (yr, gxr) = Run(norm, x0, probe, node: false);
        Assert.Equal(dtype, y.dtype);
        Assert.Equal(dtype, gx.dtype);
        Assert.Equal(0.0, MaxAbsDiff(y, yr));
        Assert.Equal(0.0, MaxAbsDiff(gx, gxr)); // backward recomputes the same float32 graph and differentiates it
        // The statistic's term is there: without it the gradient would be w ⊙ probe · r alone.
        var xf = x0.to_type(ScalarType.Float32);
        var r = torch.rsqrt(xf.pow(2).mean(new long[] { -1 }, keepdim: true).add(1e-6));
        var directOnly = probe.mul(norm.Weight.to_type(ScalarType.Float32)).mul(r);
        Assert.True(MaxAbsDiff(gxr, directOnly) > 1e-2 * directOnly.abs().max().item<float>());
        Assert.True(MaxAbsDiff(gx, directOnly) > 1e-2 * directOnly.abs().max().item<float>());
    }

    [Fact]
    public void TrainableWeightOrFloat32Input_UsesPlainAutograd_WeightGetsItsGradient()
    {
        using var scope = torch.NewDisposeScope();
        var g = new Generator(29);
        using var norm = new RmsNorm(16, 1e-6, ScalarType.BFloat16, CPU);
        var x = torch.randn(new long[] { 4, 16 }, generator: g).to_type(ScalarType.BFloat16).requires_grad_(true);
        norm.call(x).to_type(ScalarType.Float32).sum().backward();
        Assert.NotNull(norm.Weight.grad); // the node would give the weight no gradient
        Assert.True(norm.Weight.grad!.to_type(ScalarType.Float32).abs().max().item<float>() > 0);
    }
}
