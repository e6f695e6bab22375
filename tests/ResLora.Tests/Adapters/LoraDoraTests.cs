using ResLora.Adapters;
using ResLora.Models;
using TorchSharp;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters;

public sealed class LoraDoraTests
{
    private static readonly LinearSpec Big = new("model.layers.0.mlp.down_proj", "down_proj", 0, 400, 6, false);

    [Fact]
    public void Init_Default_AIsKaimingUniformOverSqrtInAndBIsZero()
    {
        using var l = new LoraLinear(Big, new LoraLayerOptions(8, 16), ScalarType.Float32, CPU, new Generator(1));
        double bound = 1 / Math.Sqrt(400); // §3.1: a = √5 ⇒ U(−1/√d_in, 1/√d_in)
        Assert.Equal(new long[] { 8, 400 }, l.LoraA.shape);
        Assert.Equal(new long[] { 6, 8 }, l.LoraB.shape);
        double maxA = l.LoraA.abs().max().item<float>();
        Assert.InRange(maxA, 0.95 * bound, bound);
        // uniform variance bound²/3
        double var = l.LoraA.var().item<float>();
        Assert.InRange(var, 0.9 * bound * bound / 3, 1.1 * bound * bound / 3);
        Assert.Equal(0f, l.LoraB.abs().max().item<float>());
        Assert.Equal(2.0, l.Scaling); // α/r = 16/8
    }

    [Fact]
    public void Init_GaussianOrFalse_AHasStdOneOverRAndFalseMakesBNonzero()
    {
        using var g = new LoraLinear(Big, new LoraLayerOptions(4, 8, Init: LoraInit.Gaussian), ScalarType.Float32, CPU, new Generator(2));
        double std = g.LoraA.std().item<float>();
        Assert.InRange(std, 0.25 * 0.93, 0.25 * 1.07); // σ = 1/r = 0.25, 1600 samples
        Assert.Equal(0f, g.LoraB.abs().max().item<float>());

        using var r = new LoraLinear(Big, new LoraLayerOptions(4, 8, Init: LoraInit.Random), ScalarType.Float32, CPU, new Generator(2));
        Assert.True(r.LoraB.abs().min().item<float>() >= 0 && r.LoraB.abs().max().item<float>() > 0.05f);
        using var d = r.DeltaWeight();
        Assert.True(d.abs().max().item<float>() > 1e-3f);
    }

    [Fact]
    public void Scaling_WithRslora_IsAlphaOverSqrtR()
    {
        Assert.Equal(4.0, new LoraLayerOptions(4, 8, UseRslora: true).Scaling, 12);
        Assert.Equal(2.0, new LoraLayerOptions(4, 8).Scaling, 12);
    }

    [Fact]
    public void Forward_Lora_EqualsHandComputedWxPlusBPlusSBAx()
    {
        var spec = new LinearSpec("model.layers.0.self_attn.q_proj", "q_proj", 0, 2, 2, true);
        using var l = new LoraLinear(spec, new LoraLayerOptions(1, 2), ScalarType.Float32, CPU);
        using (var _ = torch.no_grad())
        {
            l.Weight.copy_(torch.tensor(new float[] { 1, 2, 3, 4 }).reshape(2, 2));
            l.Bias!.copy_(torch.tensor(new float[] { 0.5f, -0.5f }));
            l.LoraA.copy_(torch.tensor(new float[] { 1, 1 }).reshape(1, 2));
            l.LoraB.copy_(torch.tensor(new float[] { 2, 0 }).reshape(2, 1));
        }
        using var y = l.call(torch.tensor(new float[] { 1, 2 }).reshape(1, 2));
        // Wx = [5, 11]; +b = [5.5, 10.5]; BAx = [6, 0]; s = 2/1 ⇒ [17.5, 10.5]
        Assert.Equal(new[] { 17.5f, 10.5f }, y.data<float>().ToArray());
    }

    [Fact]
    public void Dropout_InTraining_TouchesOnlyTheAdapterPathAndIsOffInEval()
    {
        var spec = Spec(0, "self_attn", "v_proj", 16, 4);
        using var l = new LoraLinear(spec, new LoraLayerOptions(2, 4, Dropout: 0.5), ScalarType.Float32, CPU, new Generator(3));
        using var x = torch.randn(new long[] { 5, 16 }, generator: new Generator(4));
        using var bse = nn.functional.linear(x, l.Weight);
        l.train();
        using var y0 = l.call(x);
        Assert.True(MaxAbsDiff(y0, bse) < 1e-6, "B = 0: dropout must not reach the base path");
        Perturb(l, 5);
        l.eval();
        using var e1 = l.call(x);
        using var e2 = l.call(x);
        Assert.Equal(0.0, MaxAbsDiff(e1, e2));
        l.train();
        using var t1 = l.call(x);
        Assert.True(MaxAbsDiff(t1, e1) > 1e-4, "training mode must apply dropout to the adapter input");
    }

    [Fact]
    public void Bf16Base_Adapter_StaysFloat32AndMergeCastsBack()
    {
        var spec = Spec(0, "self_attn", "q_proj", 8, 4);
        using var l = new LoraLinear(spec, new LoraLayerOptions(2, 4), ScalarType.BFloat16, CPU, new Generator(6));
        Assert.Equal(ScalarType.Float32, l.LoraA.dtype);
        Assert.Equal(ScalarType.BFloat16, l.Weight.dtype);
        Perturb(l, 7);
        using var x = torch.randn(new long[] { 3, 8 }, generator: new Generator(8)).to_type(ScalarType.BFloat16);
        using var y = l.call(x);
        Assert.Equal(ScalarType.BFloat16, y.dtype);
        using var w0 = l.Weight.detach().to_type(ScalarType.Float32);
        using var d = l.DeltaWeight();
        l.Merge();
        Assert.Equal(ScalarType.BFloat16, l.Weight.dtype);
        // bf16 has 8 mantissa bits: the merged weight is W0 + ΔW rounded to bf16 (relative error ≤ 2^-8).
        using var expect = w0.add(d);
        Assert.True(MaxAbsDiff(l.Weight, expect) <= expect.abs().max().item<float>() / 256 + 1e-6);
    }

    [Fact]
    public void DoraForward_AnyInput_MatchesTheWeightDecompositionFormula()
    {
        var spec = Spec(1, "mlp", "up_proj", 6, 4, bias: true);
        using var l = new DoraLinear(spec, new LoraLayerOptions(2, 3), ScalarType.Float32, CPU, new Generator(9));
        // init m = ‖W₀ row‖ (B = 0)
        using var rn = torch.linalg.norm(l.Weight, dims: new long[] { 1 });
        Assert.True(MaxAbsDiff(l.Magnitude, rn) < 1e-6);
        Perturb(l, 10);
        using var x = torch.randn(new long[] { 2, 3, 6 }, generator: new Generator(11));
        using var y = l.call(x);
        // §3.2 reference: W' = m ⊙ V/‖V‖_row with V = W₀ + s·BA; y = W'x + b
        using var v = l.Weight.add(l.LoraB.matmul(l.LoraA).mul(l.Scaling));
        using var wp = l.Magnitude.div(torch.linalg.norm(v, dims: new long[] { 1 })).unsqueeze(1).mul(v);
        using var reference = nn.functional.linear(x, wp, l.Bias);
        Assert.True(MaxAbsDiff(y, reference) < 1e-5, $"DoRA forward vs formula: {MaxAbsDiff(y, reference)}");
    }

    [Fact]
    public void DoraMagnitude_Backward_FlowsThroughMOverTheDetachedNorm()
    {
        // With the norm detached, ∂y/∂m_j = (1/n_j)·(V x)_j exactly; check on a 1-row layer against that formula.
        var spec = Spec(0, "self_attn", "k_proj", 3, 1);
        using var l = new DoraLinear(spec, new LoraLayerOptions(1, 1), ScalarType.Float32, CPU, new Generator(12));
        Perturb(l, 13);
        using var x = torch.tensor(new float[] { 0.5f, -1f, 2f }).reshape(1, 3);
        using var y = l.call(x).sum();
        y.backward();
        using var v = l.Weight.add(l.LoraB.detach().matmul(l.LoraA.detach()).mul(l.Scaling));
        double n = torch.linalg.norm(v).item<float>();
        double vx = v.matmul(x.t()).item<float>();
        using var g = l.Magnitude.grad!;
        Assert.Equal(vx / n, g.item<float>(), 4);
    }

    [Fact]
    public void DoraFactors_Backward_TreatTheNormAsAConstant()
    {
        var spec = Spec(0, "self_attn", "o_proj", 5, 4);
        using var l = new DoraLinear(spec, new LoraLayerOptions(2, 4), ScalarType.Float32, CPU, new Generator(16));
        Perturb(l, 17);
        using var x = torch.randn(new long[] { 3, 5 }, generator: new Generator(18));
        using (var loss = l.call(x).square().sum()) loss.backward();

        // Reference (§3.2 detach trick): y = (m / n_const) ⊙ ((W₀ + s·B A) x), with n_const = ‖W₀ + s·BA‖_row computed without grad.
        using var a = l.LoraA.detach().clone().requires_grad_(true);
        using var b = l.LoraB.detach().clone().requires_grad_(true);
        using var nConst = torch.linalg.norm(l.Weight.detach().add(b.detach().matmul(a.detach()).mul(l.Scaling)), dims: new long[] { 1 });
        using var v = l.Weight.detach().add(b.matmul(a).mul(l.Scaling));
        using var yRef = nn.functional.linear(x, v).mul(l.Magnitude.detach().div(nConst));
        using (var lossRef = yRef.square().sum()) lossRef.backward();
        using var ga = l.LoraA.grad!;
        using var gb = l.LoraB.grad!;
        using var gaRef = a.grad!;
        using var gbRef = b.grad!;
        Assert.True(MaxAbsDiff(ga, gaRef) < 1e-4, $"dA {MaxAbsDiff(ga, gaRef)}");
        Assert.True(MaxAbsDiff(gb, gbRef) < 1e-4, $"dB {MaxAbsDiff(gb, gbRef)}");
        Assert.True(gaRef.abs().max().item<float>() > 1e-2);
    }

    [Fact]
    public void DoraMagnitude_AfterBaseLoad_FollowsTheNewBaseWeights()
    {
        var spec = Spec(0, "self_attn", "q_proj", 4, 3);
        using var l = new DoraLinear(spec, new LoraLayerOptions(2, 2), ScalarType.Float32, CPU, new Generator(14));
        using (var _ = torch.no_grad()) l.Weight.mul_(3);
        Assert.Equal(1, AdapterModel.OnBaseWeightsLoaded(l));
        using var x = torch.randn(new long[] { 2, 4 }, generator: new Generator(15));
        using var y = l.call(x);
        using var b = nn.functional.linear(x, l.Weight);
        Assert.True(MaxAbsDiff(y, b) < 1e-5, "after OnBaseWeightsLoaded the fresh DoRA layer must equal the new base");
    }

    [Fact]
    public void LoadState_WrongShapesOrMissingKeys_AreRefusedByName()
    {
        var spec = Spec(0, "self_attn", "q_proj", 4, 3);
        using var l = new LoraLinear(spec, new LoraLayerOptions(2, 2), ScalarType.Float32, CPU);
        var bad = new Dictionary<string, Tensor> { ["lora_A.weight"] = torch.zeros(3, 4), ["lora_B.weight"] = torch.zeros(3, 2) };
        var e = Assert.Throws<UserInputException>(() => l.LoadAdapterState(bad));
        Assert.Contains("model.layers.0.self_attn.q_proj.lora_A.weight", e.Message);
        Assert.Contains("[3, 4]", e.Message);
        Assert.Contains("[2, 4]", e.Message);
        var missing = new Dictionary<string, Tensor> { ["lora_A.weight"] = torch.zeros(2, 4) };
        Assert.Contains("'lora_B.weight' is missing", Assert.Throws<UserInputException>(() => l.LoadAdapterState(missing)).Message);
    }
}
