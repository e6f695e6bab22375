using ResLora.Adapters;
using ResLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters.ResLora;

/// <summary>The calibrated least-squares fold (merge ls) of is/ms blocks: exactness, streaming, the ridge.</summary>
public sealed class LeastSquaresFoldTests
{
    private const int D = 6, R = 2, N = 3;

    /// <summary>A chain of <see cref="N"/> random blocks of one module type, in × out = D × D, B non-zero.</summary>
    private static (ResLoraLayerBuilder Builder, List<ResLoraLinear> Layers) Chain(string structure, int preNum = -1)
    {
        var b = new ResLoraLayerBuilder(new ResLoraConfig { R = R, LoraAlpha = 4, Structure = structure, PreNum = preNum, Merge = "ls", TargetModules = ModuleTargets.List("q_proj") }, new Generator(3));
        var layers = new List<ResLoraLinear>();
        var g = new Generator(7);
        for (int i = 0; i < N; i++)
        {
            var l = (ResLoraLinear)b.Build(new AdapterTarget(new LinearSpec($"model.layers.{i}.self_attn.q_proj", "q_proj", i, D, D, false), R, 4), ScalarType.Float32, CPU);
            using (torch.no_grad()) l.LoraB.copy_(torch.randn(new long[] { D, R }, generator: g));
            l.eval();
            layers.Add(l);
        }
        return (b, layers);
    }

    /// <summary>One "model forward": block i gets xs[i] (rows, D); returns each block's output.</summary>
    private static Tensor[] Forward(ResLoraLayerBuilder b, List<ResLoraLinear> layers, Tensor[] xs)
    {
        using var ctx = b.BeginForward();
        return layers.Select((l, i) => l.call(xs[i]).detach().clone()).ToArray();
    }

    /// <summary>Inputs where every block's predecessor input is a fixed linear map of its own: x_{n−1} = x_n Mᵀ.</summary>
    private static (Tensor[] Xs, Tensor M) LinearlyRelatedInputs(int rows, long seed)
    {
        var g = new Generator((ulong)seed);
        var m = torch.randn(new long[] { D, D }, generator: g) * 0.5;
        var xs = new Tensor[N];
        xs[N - 1] = torch.randn(new long[] { rows, D }, generator: g);
        for (int i = N - 2; i >= 0; i--) xs[i] = xs[i + 1].matmul(m.t());
        return (xs, m);
    }

    private static double MaxDiff(Tensor a, Tensor b) => (a.to_type(ScalarType.Float64) - b.to_type(ScalarType.Float64)).abs().max().item<double>();

    [Fact]
    public void Fold_InputShortcut_WithLinearlyRelatedInputs_IsExactAndMergesWithoutError()
    {
        var (b, layers) = Chain("is", preNum: 1);
        b.FoldRidge = 1e-12;
        var (xs, m) = LinearlyRelatedInputs(rows: 64, seed: 1);
        var unmerged = Forward(b, layers, xs);
        b.Calibrate((ids, mask) => { Forward(b, layers, xs); return ids; }, new[] { (torch.zeros(1, 64), torch.ones(1, 64)) });
        // Chain start: M = A(2x) ⇒ A* = 2A. Later blocks: M = A(x_n + x_{n−1}) = A(I + M) x_n ⇒ A* = A(I + M).
        Assert.True(MaxDiff(b.FoldedA![layers[0]], layers[0].LoraA * 2) < 1e-5);
        for (int i = 1; i < N; i++)
            Assert.True(MaxDiff(b.FoldedA[layers[i]], layers[i].LoraA.matmul(torch.eye(D) + m)) < 1e-4, $"block {i}");
        foreach (var l in layers) l.Merge();
        var merged = Forward(b, layers, xs);
        for (int i = 0; i < N; i++)
            Assert.True(MaxDiff(merged[i], unmerged[i]) < 1e-3 * Math.Max(1, unmerged[i].abs().max().item<float>()), $"block {i}: {MaxDiff(merged[i], unmerged[i])}");
    }

    [Fact]
    public void Fold_MiddleShortcut_WithLinearlyRelatedInputs_IsExact()
    {
        var (b, layers) = Chain("ms");
        b.FoldRidge = 1e-12;
        var (xs, m) = LinearlyRelatedInputs(rows: 64, seed: 2);
        b.Calibrate((ids, mask) => { Forward(b, layers, xs); return ids; }, new[] { (torch.zeros(1, 64), torch.ones(1, 64)) });
        // ms: M_n = A_n x_n + Σ_k A_{n−k} x_{n−k}, with x_{n−k} = (M^k) x_n ⇒ A*_n = A_n + Σ_k A_{n−k} M^k.
        Assert.True(MaxDiff(b.FoldedA![layers[0]], layers[0].LoraA) < 1e-5); // chain start: plain A
        var expected2 = layers[2].LoraA + layers[1].LoraA.matmul(m) + layers[0].LoraA.matmul(m.matmul(m));
        Assert.True(MaxDiff(b.FoldedA[layers[2]], expected2) < 1e-4);
    }

    [Fact]
    public void Calibrate_PaddedPositions_AreLeftOut()
    {
        var (b, layers) = Chain("is", preNum: 1);
        b.FoldRidge = 1e-12;
        var (xs, m) = LinearlyRelatedInputs(rows: 40, seed: 3);
        // Rows 32..39 are "padding": garbage that breaks the linear relation; the mask excludes them.
        using (torch.no_grad()) xs[1][32..].copy_(torch.randn(new long[] { 8, D }, generator: new Generator(99)) * 10);
        var mask = torch.cat(new[] { torch.ones(1, 32), torch.zeros(1, 8) }, 1);
        b.Calibrate((ids, _) => { Forward(b, layers, xs); return ids; }, new[] { (torch.zeros(1, 40), mask) });
        Assert.True(MaxDiff(b.FoldedA![layers[2]], layers[2].LoraA.matmul(torch.eye(D) + m)) < 1e-4);
    }

    [Fact]
    public void Accumulation_InBatches_EqualsOneBatchFit()
    {
        var g = new Generator(11);
        var x = torch.randn(new long[] { 100, D }, dtype: ScalarType.Float64, generator: g);
        var target = torch.randn(new long[] { 100, R }, dtype: ScalarType.Float64, generator: g);
        var (b, layers) = Chain("is");
        using var whole = new LeastSquaresFold();
        whole.Add(layers[0], x.t().matmul(x), target.t().matmul(x), 100);
        using var streamed = new LeastSquaresFold();
        for (int i = 0; i < 100; i += 30)
        {
            var xi = x[i..Math.Min(100, i + 30)];
            var ti = target[i..Math.Min(100, i + 30)];
            streamed.Add(layers[0], xi.t().matmul(xi), ti.t().matmul(xi), xi.shape[0]);
        }
        Assert.Equal(100, streamed.Rows[layers[0]]);
        Assert.True(MaxDiff(whole.Fit(new[] { layers[0] })[layers[0]], streamed.Fit(new[] { layers[0] })[layers[0]]) < 1e-6);
    }

    [Fact]
    public void Solve_RankDeficientX_UsesTheRidgeAndGivesZeroOnTheUnseenDirection()
    {
        var g = new Generator(5);
        var x = torch.randn(new long[] { 50, D }, dtype: ScalarType.Float64, generator: g);
        using (torch.no_grad()) x[.., D - 1] = torch.zeros(50, dtype: ScalarType.Float64); // X never uses the last coordinate
        var m = torch.randn(new long[] { 50, R }, dtype: ScalarType.Float64, generator: g);
        var xx = x.t().matmul(x);
        var mx = m.t().matmul(x);
        var a = LeastSquaresFold.Solve(xx, mx, ridge: 1e-4);
        Assert.True(a.isfinite().all().item<bool>());
        Assert.True(a[.., D - 1].abs().max().item<double>() == 0.0, "no evidence on the last coordinate: its weight stays 0");
        // The stated formula, computed independently: λ = 1e-4·tr(XXᵀ)/d, A* = MXᵀ(XXᵀ + λI)⁻¹.
        double lambda = 1e-4 * xx.trace().item<double>() / D;
        var expected = mx.matmul(torch.linalg.inv(xx + torch.eye(D, dtype: ScalarType.Float64) * lambda));
        Assert.True(MaxDiff(a, expected) < 1e-9);
        // Without a ridge the system would be singular; a larger ridge shrinks the solution.
        Assert.True(LeastSquaresFold.Solve(xx, mx, ridge: 1e-1).norm().item<double>() < a.norm().item<double>());
    }

    [Fact]
    public void Merge_LsOnBlockShortcut_IsRefusedNamingTheFix()
    {
        var e = Assert.Throws<UserInputException>(() => new ResLoraConfig { Structure = "bs", PreNum = -1, Merge = "ls", TargetModules = ModuleTargets.List("q_proj") }.Validate());
        Assert.Contains("nothing to fit", e.Message);
        Assert.Contains("merges exactly", e.Message);
    }

    [Fact]
    public void Merge_LsWithoutCalibration_IsRefused()
    {
        var (_, layers) = Chain("is");
        Assert.Contains("calibration pass", Assert.Throws<InvalidOperationException>(() => layers[0].Merge()).Message);
    }
}
