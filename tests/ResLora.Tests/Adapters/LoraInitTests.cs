using ResLora.Adapters;
using ResLora.Models;
using ResLora.Quantization;
using TorchSharp;
using Xunit.Abstractions;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters;

/// <summary>
/// PiSSA, OLoRA and LoftQ (PEFT's init_lora_weights "pissa", "pissa_niter_K", "olora", "loftq") on one layer: what the
/// base keeps plus s·B·A is W, the pair is the top-r SVD part / the QR slice, LoftQ lowers the 4-bit error; and the
/// refusals. Float32 throughout; tolerances are stated at each assertion.
/// </summary>
public sealed class LoraInitTests(ITestOutputHelper output)
{
    private static readonly LinearSpec Layer = new("model.layers.0.self_attn.q_proj", "q_proj", 0, 12, 10, false);

    private static Tensor RandomW(long outF, long inF, ulong seed) => torch.randn(new long[] { outF, inF }, generator: new Generator(seed)) * 0.3;

    /// <summary>A LoRA layer with <paramref name="init"/> whose base is set to <paramref name="w"/>, then initialised from it.</summary>
    private static LoraLinear Initialised(LoraInit init, Tensor w, int r = 3, double alpha = 6, LinearSpec? spec = null)
    {
        var l = new LoraLinear(spec ?? Layer, new LoraLayerOptions(r, alpha, Init: init), ScalarType.Float32, CPU, new Generator(7));
        using (torch.no_grad()) l.Weight.copy_(w);
        ((IBaseWeightDependent)l).OnBaseWeightsLoaded();
        return l;
    }

    /// <summary>U_r diag(S_r) V_rᵀ, the best rank-r approximation of W.</summary>
    private static Tensor TopR(Tensor w, int r)
    {
        var (u, s, vh) = torch.linalg.svd(w, fullMatrices: false);
        return u.narrow(1, 0, r).mul(s.narrow(0, 0, r).unsqueeze(0)).matmul(vh.narrow(0, 0, r));
    }

    [Fact]
    public void Pissa_ResidualPlusScaledProduct_IsW_AndTheProductIsTheTopRSvdPart()
    {
        using var w = RandomW(10, 12, 1);
        using var l = Initialised(LoraInit.Pissa, w); // s = 6/3 = 2
        using var ba = l.LoraB.matmul(l.LoraA).mul(l.Scaling);
        Assert.True(MaxAbsDiff(l.Weight + ba, w) < 1e-6, $"W_res + s·B·A vs W: {MaxAbsDiff(l.Weight + ba, w)}");
        using var top = TopR(w, 3);
        Assert.True(MaxAbsDiff(ba, top) < 1e-5, $"s·B·A vs top-3 SVD part: {MaxAbsDiff(ba, top)}");
        // PEFT's split: A = √(S/s) Uhᵀ rows and B = V √(S/s), so AAᵀ = BᵀB = diag(S/s).
        using var aat = l.LoraA.matmul(l.LoraA.t());
        using var btb = l.LoraB.t().matmul(l.LoraB);
        Assert.True(MaxAbsDiff(aat, btb) < 1e-5);
        using var x = torch.randn(new long[] { 4, 12 }, generator: new Generator(3));
        using var y = l.call(x);
        using var yBase = x.matmul(w.t());
        Assert.True(MaxAbsDiff(y, yBase) < 1e-5, "the layer equals the original base at step 0");
        Assert.True(l.HasMutatedInit);
    }

    [Fact]
    public void PissaNiter_RandomizedSvd_FindsTheTopSubspace_AndIsSeeded()
    {
        // W = a rank-3 part with singular values 3, 2, 1 plus a 1e-3 tail: four subspace iterations recover the part.
        using var u = torch.linalg.qr(torch.randn(new long[] { 10, 3 }, generator: new Generator(4))).Q;
        using var v = torch.linalg.qr(torch.randn(new long[] { 12, 3 }, generator: new Generator(5))).Q;
        using var w = u.mul(torch.tensor(new float[] { 3, 2, 1 }).unsqueeze(0)).matmul(v.t()) + RandomW(10, 12, 6) * (1e-3 / 0.3);
        using var l = Initialised(LoraInit.PissaNiter(4), w);
        using var ba = l.LoraB.matmul(l.LoraA).mul(l.Scaling);
        Assert.True(MaxAbsDiff(l.Weight + ba, w) < 1e-6, "the residual is W − s·B·A whatever the SVD's error");
        using var top = TopR(w, 3);
        Assert.True(MaxAbsDiff(ba, top) < 1e-4, $"randomized vs exact top-3 part: {MaxAbsDiff(ba, top)}");
        using var again = Initialised(LoraInit.PissaNiter(4), w);
        Assert.Equal(0.0, MaxAbsDiff(again.LoraA, l.LoraA)); // same layer generator, same sketch
    }

    [Fact]
    public void Olora_ProductIsTheQrSlice_WithOrthonormalB()
    {
        using var w = RandomW(10, 12, 2);
        using var l = Initialised(LoraInit.Olora, w, r: 4, alpha: 8);
        var (q, rr) = torch.linalg.qr(w);
        using (q) using (rr)
        {
            Assert.True(MaxAbsDiff(l.LoraB, q.narrow(1, 0, 4)) < 1e-6, "B = Q[:, :r]");
            Assert.True(MaxAbsDiff(l.LoraA, rr.narrow(0, 0, 4)) < 1e-6, "A = R[:r]");
        }
        using var btb = l.LoraB.t().matmul(l.LoraB);
        Assert.True(MaxAbsDiff(btb, torch.eye(4)) < 1e-5, "BᵀB = I");
        using var ba = l.LoraB.matmul(l.LoraA).mul(l.Scaling);
        Assert.True(MaxAbsDiff(l.Weight + ba, w) < 1e-6, $"W_res + s·B·A vs W: {MaxAbsDiff(l.Weight + ba, w)}");
    }

    [Theory]
    [InlineData("nf4")]
    [InlineData("int4")]
    public void Loftq_QuantizationErrorAfterIterations_IsBelowThePlain4BitError(string format)
    {
        var f = format == "nf4" ? PackedFormats.Nf4 : PackedFormats.Int4;
        var spec = new LinearSpec("model.layers.0.mlp.up_proj", "up_proj", 0, 128, 32, false) { PackedBase = f };
        using var w = RandomW(32, 128, 9);
        double plain;
        using (var scratch = f.Create(32, 128, CPU))
        {
            scratch.Pack(w);
            using var dq = scratch.Dequantize(ScalarType.Float32);
            plain = (w - dq).norm().item<float>();
        }
        double last = plain;
        foreach (int iters in new[] { 1, 2, 5 })
        {
            using var l = new LoraLinear(spec, new LoraLayerOptions(8, 16, Init: LoraInit.Loftq, LoftqIter: iters), ScalarType.Float32, CPU, new Generator(7));
            l.Base.Packed!.Pack(w); // the loader's call: the init sees W and the base keeps Q_T
            ((IBaseWeightDependent)l).OnBaseWeightsLoaded();
            using var q = l.Base.Packed.Dequantize(ScalarType.Float32);
            using var ba = l.LoraB.matmul(l.LoraA).mul(l.Scaling);
            double err = (w - q - ba).norm().item<float>();
            output.WriteLine($"{format}: ‖W − q(W)‖_F = {plain:F4}; LoftQ r=8, {iters} step(s): ‖W − Q − s·B·A‖_F = {err:F4} ({err / plain:P1} of plain)");
            Assert.True(err < 0.9 * plain, $"LoftQ error {err} vs plain 4-bit {plain}");
            Assert.True(err <= last * 1.02, $"more steps do not raise the error much: {err} after {last}");
            last = err;
        }
    }

    [Fact]
    public void Loftq_WithoutA4BitBase_IsRefusedNamingBaseBits()
    {
        var e = Assert.Throws<UserInputException>(() => new LoraLinear(Layer, new LoraLayerOptions(3, 6, Init: LoraInit.Loftq), ScalarType.Float32, CPU));
        Assert.Contains("--base-bits 4", e.Message);
        var int8 = Layer with { PackedBase = PackedFormats.Int8 };
        Assert.Contains("--base-bits 4", Assert.Throws<UserInputException>(() => new LoraLinear(int8, new LoraLayerOptions(3, 6, Init: LoraInit.Loftq), ScalarType.Float32, CPU)).Message);
    }

    [Theory]
    [InlineData("pissa")]
    [InlineData("olora")]
    public void RankAboveTheMatrix_IsRefusedNamingTheLargestRank(string init)
    {
        var e = Assert.Throws<UserInputException>(() => new LoraLinear(Layer, new LoraLayerOptions(11, 6, Init: LoraInit.Parse(init)!.Value), ScalarType.Float32, CPU));
        Assert.Contains("--rank 10", e.Message);
    }

    [Theory]
    [InlineData("loha")]
    [InlineData("lokr")]
    [InlineData("adalora")]
    [InlineData("reslora")]
    public void MethodsWithoutAPlainPair_RefuseABaseMutatingInit(string method)
    {
        var e = Assert.Throws<UserInputException>(() => AdapterMethods.Build(new MethodSpec { Method = method, Rank = 2, Init = LoraInit.Pissa, TotalSteps = 10 }));
        Assert.Contains("--init pissa", e.Message);
        Assert.Contains("--method lora", e.Message);
    }

    [Theory]
    [InlineData("\"pissa\"", LoraInitKind.Pissa, 0)]
    [InlineData("\"pissa_niter_4\"", LoraInitKind.Pissa, 4)]
    [InlineData("\"olora\"", LoraInitKind.Olora, 0)]
    [InlineData("\"loftq\"", LoraInitKind.Loftq, 0)]
    [InlineData("true", LoraInitKind.Default, 0)]
    public void InitLoraWeights_RoundTripsAsPeftWritesIt(string json, LoraInitKind kind, int niter)
    {
        var (cfg, _) = AdapterConfigJson.Parse($$"""{"peft_type":"LORA","target_modules":["q_proj"],"init_lora_weights":{{json}}}""");
        var c = Assert.IsType<LoraConfig>(cfg);
        Assert.Equal(new LoraInit(kind, niter), c.InitLoraWeights);
        Assert.Contains($"\"init_lora_weights\": {json}", AdapterConfigJson.Serialize(c));
    }

    [Theory]
    [InlineData("pissa_niter_0")]
    [InlineData("pissa_niter_x")]
    [InlineData("corda")]
    public void UnknownInitText_IsNotParsed(string text) => Assert.Null(LoraInit.Parse(text));
}
