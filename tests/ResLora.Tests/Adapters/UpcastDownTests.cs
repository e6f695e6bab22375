using ResLora.Adapters;
using ResLora.Models;
using TorchSharp;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters;

/// <summary>
/// The bf16 adapter input node (<see cref="UpcastDown"/>): the same forward and gradients as autograd through
/// <c>x.to(float32)</c> then <c>linear</c>, which kept the float32 cast for backward.
/// </summary>
public sealed class UpcastDownTests
{
    private static (Tensor Z, Tensor Gx, Tensor Ga) Grads(Tensor x0, Tensor a0, Tensor probe, bool custom, bool xNeedsGrad = true)
    {
        var x = x0.detach().clone().requires_grad_(xNeedsGrad);
        var a = a0.detach().clone().requires_grad_(true);
        var z = custom ? UpcastDown.Run(x, a) : nn.functional.linear(x.to_type(ScalarType.Float32), a);
        z.mul(probe).sum().backward();
        return (z.detach(), xNeedsGrad ? x.grad!.detach() : torch.zeros(1), a.grad!.detach());
    }

    [Theory]
    [InlineData(ScalarType.BFloat16, true)]
    [InlineData(ScalarType.BFloat16, false)]
    [InlineData(ScalarType.Float16, true)]
    public void Node_ThreeDimensionalHalfInput_MatchesAutogradThroughTheCast(ScalarType dtype, bool xNeedsGrad)
    {
        var g = new Generator(41);
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(new long[] { 3, 7, 24 }, generator: g).to_type(dtype);
        var a = torch.randn(new long[] { 4, 24 }, generator: g).mul(0.2);
        var probe = torch.randn(new long[] { 3, 7, 4 }, generator: g);
        var (z, gx, ga) = Grads(x, a, probe, custom: true, xNeedsGrad);
        var (zr, gxr, gar) = Grads(x, a, probe, custom: false, xNeedsGrad);
        Assert.Equal(ScalarType.Float32, z.dtype);
        Assert.Equal(0.0, MaxAbsDiff(z, zr)); // the same cast and the same linear
        // gA = gzᵀ x_f32 summed over 21 tokens: only the summation order may differ.
        Assert.True(MaxAbsDiff(ga, gar) <= 1e-5 * gar.abs().max().item<float>(), $"gA: {MaxAbsDiff(ga, gar)}");
        if (!xNeedsGrad) return;
        Assert.Equal(dtype, gx.dtype);
        Assert.Equal(0.0, MaxAbsDiff(gx, gxr)); // gz A, rounded to x's dtype once, as the cast's backward does
    }

    [Theory]
    [InlineData("lora")]
    [InlineData("dora")]
    public void Layer_Bf16Base_SameOutputAndGradientsAsAutogradThroughTheCast(string method)
    {
        var spec = Spec(0, "self_attn", "q_proj", 16, 12, bias: true);
        var o = new LoraLayerOptions(4, 8);
        using var l = method == "dora"
            ? (LowRankLinear)new DoraLinear(spec, o, ScalarType.BFloat16, CPU, new Generator(5))
            : new LoraLinear(spec, o, ScalarType.BFloat16, CPU, new Generator(5));
        Perturb(l, 6);
        using var scope = torch.NewDisposeScope();
        var g = new Generator(7);
        var x0 = torch.randn(new long[] { 2, 5, 16 }, generator: g).to_type(ScalarType.BFloat16);
        var probe = torch.randn(new long[] { 2, 5, 12 }, generator: g);

        (Tensor Y, Tensor Gx, Tensor Ga, Tensor Gb) Run()
        {
            l.LoraA.grad?.zero_();
            l.LoraB.grad?.zero_();
            var x = x0.detach().clone().requires_grad_(true);
            var y = l.call(x);
            y.to_type(ScalarType.Float32).mul(probe).sum().backward();
            return (y.detach(), x.grad!.detach(), l.LoraA.grad!.detach().clone(), l.LoraB.grad!.detach().clone());
        }

        var (y, gx, ga, gb) = Run();
        // Reference: the same layer with A's input cast by plain autograd (the path with dropout in effect).
        UpcastDown.Off = true;
        (Tensor, Tensor, Tensor, Tensor) reference;
        try { reference = Run(); }
        finally { UpcastDown.Off = false; }
        var (yr, gxr, gar, gbr) = reference;
        Assert.Equal(0.0, MaxAbsDiff(y, yr));
        Assert.True(MaxAbsDiff(ga, gar) <= 1e-5 * gar.abs().max().item<float>(), $"{method} gA: {MaxAbsDiff(ga, gar)}");
        Assert.True(MaxAbsDiff(gb, gbr) <= 1e-6 * gbr.abs().max().item<float>(), $"{method} gB: {MaxAbsDiff(gb, gbr)}");
        // x's gradient is bf16: at most one bf16 rounding step apart where a float32 sum landed on either side.
        Assert.True(MaxAbsDiff(gx, gxr) <= gxr.abs().max().to_type(ScalarType.Float32).item<float>() / 128, $"{method} gx: {MaxAbsDiff(gx, gxr)}");
        Assert.True(ga.abs().max().item<float>() > 1e-3f, "A's gradient is not trivially zero");
    }

    [Fact]
    public void Layer_Bf16BaseWithDropout_DropsTheAdapterInputInTrainingOnly()
    {
        // The node has no dropout: with a dropout rate the layer must take the cast-and-drop path, or the rate is ignored.
        var spec = Spec(0, "self_attn", "v_proj", 32, 8);
        using var l = new LoraLinear(spec, new LoraLayerOptions(4, 8, Dropout: 0.5), ScalarType.BFloat16, CPU, new Generator(11));
        Perturb(l, 12);
        using var scope = torch.NewDisposeScope();
        var x = torch.randn(new long[] { 4, 32 }, generator: new Generator(13)).to_type(ScalarType.BFloat16).requires_grad_(true);
        var baseOut = nn.functional.linear(x, l.Weight).detach();
        l.train();
        var a = l.call(x).detach();
        var b = l.call(x).detach();
        Assert.True(MaxAbsDiff(a, b) > 1e-2, "two training forwards gave the same output: no dropout mask was drawn");
        l.eval();
        var full = l.call(x).detach();
        using (torch.no_grad())
        {
            var reference = baseOut.to_type(ScalarType.Float32)
                .add(nn.functional.linear(nn.functional.linear(x.to_type(ScalarType.Float32), l.LoraA), l.LoraB).mul(l.Scaling));
            Assert.True(MaxAbsDiff(full, reference) <= reference.abs().max().item<float>() / 64, "eval runs the whole adapter");
        }
    }
}
