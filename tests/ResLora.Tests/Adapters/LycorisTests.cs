using ResLora.Adapters;
using ResLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters;

/// <summary>LoHa and LoKr math and shapes (peft-format.md §2.7–2.8, §3.4–3.5) on hand-set factors.</summary>
public sealed class LycorisTests
{
    [Theory]
    [InlineData(4096, 64, 64)]
    [InlineData(128, 8, 16)]
    [InlineData(127, 1, 127)]
    [InlineData(24, 4, 6)]
    [InlineData(16, 4, 4)]
    public void Factorization_IsClosestToTheSquareRoot(int dim, int small, int large) =>
        Assert.Equal((small, large), LoKrLinear.Factorization(dim));

    [Fact]
    public void LoHa_DeltaIsTheHadamardProductOfTwoLowRankPairs()
    {
        var spec = new LinearSpec("m.q_proj", "q_proj", 0, 3, 2, false);
        using var l = new LoHaLinear(spec, 1, 2, new LoHaConfig { R = 1, Alpha = 2, TargetModules = ModuleTargets.List("q_proj") }, ScalarType.Float32, CPU, null);
        var st = l.GetAdapterState();
        using (torch.no_grad())
        {
            st["hada_w1_a"].copy_(torch.tensor(new float[] { 1, 2 }).view(2, 1));
            st["hada_w1_b"].copy_(torch.tensor(new float[] { 1, 0, -1 }).view(1, 3));
            st["hada_w2_a"].copy_(torch.tensor(new float[] { 3, 1 }).view(2, 1));
            st["hada_w2_b"].copy_(torch.tensor(new float[] { 2, 2, 2 }).view(1, 3));
        }
        // (α/r)=2 · ([1,2]ᵀ[1,0,−1]) ⊙ ([3,1]ᵀ[2,2,2]) = 2 · [[6,0,−6],[4,0,−4]]
        using var d = l.DeltaWeight();
        Assert.Equal(new float[] { 12, 0, -12, 8, 0, -8 }, d.data<float>().ToArray());
    }

    [Fact]
    public void LoKr_ShapesAndKroneckerDelta()
    {
        // out 24 = 4·6, in 16 = 4·4; r = 2 < max(6, 4)/2 = 3 → W2 decomposed; W1 full (no decompose_both).
        var spec = new LinearSpec("m.q_proj", "q_proj", 0, 16, 24, false);
        using var l = new LoKrLinear(spec, 2, 4, new LoKrConfig { R = 2, Alpha = 4, TargetModules = ModuleTargets.List("q_proj") }, ScalarType.Float32, CPU, null);
        var st = l.GetAdapterState();
        Assert.Equal(new long[] { 4, 4 }, st["lokr_w1"].shape);
        Assert.Equal(new long[] { 6, 2 }, st["lokr_w2_a"].shape);
        Assert.Equal(new long[] { 2, 4 }, st["lokr_w2_b"].shape);
        Assert.Equal(0f, st["lokr_w1"].abs().max().item<float>()); // default init: W1 = 0 ⇒ ΔW = 0
        using var gen = new torch.Generator(3);
        using (torch.no_grad()) st["lokr_w1"].copy_(torch.randn(new long[] { 4, 4 }, generator: gen));
        using var expected = torch.kron(st["lokr_w1"], st["lokr_w2_a"].matmul(st["lokr_w2_b"])) * 2.0;
        using var d = l.DeltaWeight();
        Assert.Equal(new long[] { 24, 16 }, d.shape);
        Assert.True((d - expected).abs().max().item<float>() < 1e-6);
        // r ≥ max(b, d)/2 → W2 is a full matrix.
        using var full = new LoKrLinear(spec, 4, 4, new LoKrConfig { R = 4, Alpha = 4, TargetModules = ModuleTargets.List("q_proj") }, ScalarType.Float32, CPU, null);
        Assert.Equal(new[] { "lokr_w1", "lokr_w2" }, full.GetAdapterState().Keys.OrderBy(k => k, StringComparer.Ordinal));
    }

    [Fact]
    public void LoHaConfig_ReadsPeftsAlphaName()
    {
        var (cfg, _) = AdapterConfigJson.Parse("{\"peft_type\":\"LOHA\",\"r\":4,\"alpha\":12,\"target_modules\":[\"q_proj\"],\"rank_dropout\":0.1}");
        var loha = Assert.IsType<LoHaConfig>(cfg);
        Assert.Equal(12, loha.Alpha);
        Assert.Equal(12, loha.LoraAlpha);
        Assert.Equal(0.1, loha.RankDropout);
    }
}
