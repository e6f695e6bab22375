using System.Text.Json;
using ResLora.Adapters;
using ResLora.Tests.Distributed;
using ResLora.Training;
using ResLora.Training.Distributed;
using ResLora.Training.Optimization;
using TorchSharp;
using TorchSharp.Modules;
using static ResLora.Tests.Training.OptimizerTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.Training;

/// <summary>PrecLoRA's r×r preconditioner (<see cref="RiemannianPreconditioner"/>): its formula, its place in the step, what it refuses.</summary>
public sealed class RiemannianPreconditionerTests
{
    private static Tensor F(double[,] m) => torch.tensor(m, dtype: ScalarType.Float32);

    /// <summary>
    /// A worked 2×2 case by hand: B (3, 2), BᵀB + I = [[3, 1], [1, 6]], inverse [[6, −1], [−1, 3]]/17, so
    /// grad_A = [[1, 2], [3, 4]] becomes [[3, 8], [8, 10]]/17; A = [[1, 1], [0, 1]], AAᵀ + I = [[3, 1], [1, 2]], inverse
    /// [[2, −1], [−1, 3]]/5, so grad_B = [[1, 0], [0, 1], [2, 2]] becomes [[2, −1], [−1, 3], [2, 4]]/5.
    /// </summary>
    [Fact]
    public void Precondition_OnAWorkedTwoByTwoCase_EqualsTheHandComputedGradients()
    {
        using var scope = torch.NewDisposeScope();
        var a = F(new double[,] { { 1, 1 }, { 0, 1 } });
        var b = F(new double[,] { { 1, 0 }, { 0, 2 }, { 1, 1 } });
        var gA = F(new double[,] { { 1, 2 }, { 3, 4 } });
        var gB = F(new double[,] { { 1, 0 }, { 0, 1 }, { 2, 2 } });
        var (pa, pb) = RiemannianPreconditioner.Precondition(a, b, gA, gB, delta: 1.0);
        Assert.True(MaxDiff(M(pa!), new double[,] { { 3 / 17.0, 8 / 17.0 }, { 8 / 17.0, 10 / 17.0 } }) < 1e-6);
        Assert.True(MaxDiff(M(pb!), new double[,] { { 2 / 5.0, -1 / 5.0 }, { -1 / 5.0, 3 / 5.0 }, { 2 / 5.0, 4 / 5.0 } }) < 1e-6);
        Assert.Equal(ScalarType.Float32, pa!.dtype);
    }

    /// <summary>
    /// Fixed random pairs (r = 4 with in ≠ out; a rank-deficient B; LoRA's B = 0 start) against Gauss–Jordan in doubles
    /// (1e-6), written with the inputs for bench/pytorch/precondition_peer.py: to $RESLORA_PRECONDITION_PEER_OUT when set
    /// (bench/precondition-check.sh sets it), else to a temporary file that is deleted. The case also holds one AdamW step
    /// with LoRA+'s lrs on the preconditioned gradients, which the peer repeats with torch.optim.AdamW.
    /// </summary>
    [Fact]
    public void PeerCase_MatchesGaussJordan_AndIsWrittenForThePyTorchPeer()
    {
        using var scope = torch.NewDisposeScope();
        var gen = new torch.Generator(35);
        const double delta = RiemannianPreconditioner.DefaultDelta;
        var cases = new List<object>();
        foreach (var (name, r, inF, outF) in new[] { ("random", 4, 12, 10), ("rank_deficient_b", 3, 7, 9), ("zero_b", 2, 6, 5) })
        {
            var a = torch.randn(new long[] { r, inF }, generator: gen) * 0.5;
            var b = name switch
            {
                "zero_b" => torch.zeros(outF, r),
                "rank_deficient_b" => torch.randn(new long[] { outF, 1 }, generator: gen).matmul(torch.randn(new long[] { 1, r }, generator: gen)) * 0.3,
                _ => torch.randn(new long[] { outF, r }, generator: gen) * 0.2,
            };
            var gA = torch.randn(new long[] { r, inF }, generator: gen) * 0.1;
            var gB = torch.randn(new long[] { outF, r }, generator: gen) * 0.1;
            var (pa, pb) = RiemannianPreconditioner.Precondition(a, b, gA, gB, delta);
            var expectA = MatMul(DampedInverse(MatMul(T(M(b)), M(b)), delta), M(gA));
            var expectB = MatMul(M(gB), DampedInverse(MatMul(M(a), T(M(a))), delta));
            Assert.True(MaxDiff(M(pa!), expectA) <= 1e-6 * Math.Max(1, Max(expectA)), $"{name}: grad_A off by {MaxDiff(M(pa!), expectA)}");
            Assert.True(MaxDiff(M(pb!), expectB) <= 1e-6 * Math.Max(1, Max(expectB)), $"{name}: grad_B off by {MaxDiff(M(pb!), expectB)}");
            cases.Add(new { name, a = Rows(a), b = Rows(b), grad_a = Rows(gA), grad_b = Rows(gB), ours_grad_a = Rows(pa!), ours_grad_b = Rows(pb!) });
        }

        // One AdamW step over LoRA+'s groups (A at lr, B at 16·lr, weight decay 0.1) on the preconditioned gradients.
        var pA = new Parameter(torch.randn(new long[] { 3, 8 }, generator: gen) * 0.5);
        var pB = new Parameter(torch.randn(new long[] { 6, 3 }, generator: gen) * 0.2);
        var stepA0 = Rows(pA); var stepB0 = Rows(pB);
        pA.grad = torch.randn(new long[] { 3, 8 }, generator: gen) * 0.1;
        pB.grad = torch.randn(new long[] { 6, 3 }, generator: gen) * 0.1;
        var gradA0 = Rows(pA.grad!); var gradB0 = Rows(pB.grad!);
        var o = new TrainOptions { LearningRate = 1e-3, WeightDecay = 0.1 };
        var groups = new[]
        {
            new LoraPlusGroup("groupA", new[] { ("a", pA) }, 1.0, true),
            new LoraPlusGroup("groupB", new[] { ("b", pB) }, 16.0, true),
        };
        using var opt = LoraPlusGroups.AdamW(groups, o);
        var (qa, qb) = RiemannianPreconditioner.Precondition(pA, pB, pA.grad, pB.grad, delta);
        pA.grad!.copy_(qa!); pB.grad!.copy_(qb!);
        opt.step();
        var step = new { lr = 1e-3, ratio = 16.0, weight_decay = 0.1, a = stepA0, b = stepB0, grad_a = gradA0, grad_b = gradB0, ours_a = Rows(pA), ours_b = Rows(pB) };

        string? target = Environment.GetEnvironmentVariable("RESLORA_PRECONDITION_PEER_OUT");
        string path = target ?? Path.Combine(Path.GetTempPath(), $"reslora-precondition-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, JsonSerializer.Serialize(new { delta, cases, adamw_step = step }));
        try { Assert.True(new FileInfo(path).Length > 0); }
        finally { if (target is null) File.Delete(path); }
    }

    private static double Max(double[,] m) => m.Cast<double>().Max(Math.Abs);

    private static double[][] Rows(Tensor t)
    {
        var m = M(t);
        return Enumerable.Range(0, m.GetLength(0)).Select(i => Enumerable.Range(0, m.GetLength(1)).Select(j => m[i, j]).ToArray()).ToArray();
    }

    /// <summary>Captures every pair's gradients before the preconditioner (a method hook runs first) and after the step.</summary>
    private sealed class Capture(IReadOnlyList<ILowRankPair> pairs, IReadOnlyList<Parameter> all) : IOptimizerStepHook
    {
        public List<(double[,] A, double[,] B, double[,] GA, double[,] GB)> Before { get; } = new();
        public List<(double[,] GA, double[,] GB)> After { get; } = new();
        public double BeforeNorm { get; private set; }
        public double AfterNorm { get; private set; }

        public void BeforeOptimizerStep(OptimizerStepContext context)
        {
            Before.Clear();
            foreach (var p in pairs) Before.Add((M(p.LoraA), M(p.LoraB), M(p.LoraA.grad!), M(p.LoraB.grad!)));
            BeforeNorm = Norm();
        }

        public void AfterOptimizerStep(OptimizerStepContext context)
        {
            After.Clear();
            foreach (var p in pairs) After.Add((M(p.LoraA.grad!), M(p.LoraB.grad!)));
            AfterNorm = Norm();
        }

        private double Norm() => Math.Sqrt(all.Where(p => p.grad is not null).Sum(p => p.grad!.to_type(ScalarType.Float64).pow(2).sum().item<double>()));
    }

    /// <summary>
    /// The order in a step is clip → method hooks → precondition → AdamW: the hook sees the clipped raw gradients (norm =
    /// --max-grad-norm), and the gradients AdamW used are exactly those preconditioned with the factors before the step,
    /// not clipped again (their norm differs from the clip).
    /// </summary>
    [Fact]
    public void Step_ClipsFirst_ThenPreconditionsWithTheFactorsBeforeTheStep()
    {
        const double clip = 1e-3, delta = 0.05;
        using var model = Model(Lora());
        var pairs = Pairs(model);
        var o = new TrainOptions { Steps = 3, BatchSize = 3, LearningRate = 1e-2, MaxGradNorm = clip, Seed = 3, Precondition = "riemannian", PreconditionDelta = delta };
        var trainer = new Trainer(model, o, Array.Empty<object>());
        var capture = new Capture(pairs, trainer.TrainableParameters);
        trainer = new Trainer(model, o, new object[] { capture });
        using var opt = trainer.CreateOptimizer();
        var data = new ShuffledBatchSource(Examples(), o.BatchSize, padId: 0, seed: o.Seed);
        for (int s = 1; s <= 3; s++)
        {
            trainer.Step(opt, data, s, o.Steps);
            Assert.Equal(clip, capture.BeforeNorm, 1e-8); // the raw gradient is far longer; clipping ran before the hook
            Assert.True(Math.Abs(capture.AfterNorm - clip) > 0.1 * clip, $"step {s}: the preconditioned gradient's norm {capture.AfterNorm} looks clipped again");
            for (int i = 0; i < pairs.Count; i++)
            {
                var (a, b, ga, gb) = capture.Before[i];
                var expectA = MatMul(DampedInverse(MatMul(T(b), b), delta), ga);
                var expectB = MatMul(gb, DampedInverse(MatMul(a, T(a)), delta));
                Assert.True(MaxDiff(capture.After[i].GA, expectA) <= 1e-6 * Math.Max(1e-3, Max(expectA)), $"step {s} pair {i}: grad_A");
                Assert.True(MaxDiff(capture.After[i].GB, expectB) <= 1e-6 * Math.Max(1e-3, Max(expectB)), $"step {s} pair {i}: grad_B");
            }
        }
    }

    [Fact]
    public void MethodsWithoutPairs_AndRefLora_AreRefusedWithTheReason()
    {
        var targets = ModuleTargets.List("q_proj", "v_proj");
        var o = new TrainOptions { Steps = 2, Precondition = "riemannian" };
        foreach (var (config, type) in new (AdapterConfigBase, string)[]
        {
            (new LoHaConfig { R = 2, LoraAlpha = 4, TargetModules = targets }, "LoHa"),
            (new LoKrConfig { R = 2, LoraAlpha = 4, TargetModules = targets }, "LoKr"),
            (new Ia3Config { TargetModules = targets }, "Ia3"),
            (new AdaLoraConfig { InitR = 4, TargetR = 2, TotalStep = 10, TInit = 1, TFinal = 2, TargetModules = targets }, "AdaLora"),
        })
        {
            using var model = Model(config);
            var e = Assert.Throws<UserInputException>(() => new Trainer(model, o, Array.Empty<object>()).CreateOptimizer());
            Assert.Contains("--precondition riemannian scales the gradients of low-rank (A, B) pairs", e.Message);
            Assert.Contains(type, e.Message, StringComparison.OrdinalIgnoreCase);
            Assert.Contains("use it with --method lora, dora, reslora or rolora, or drop --precondition", e.Message);
        }
        using var lora = Model(Lora());
        var refactor = new RefLoraHook(new RefLoraConfig { R = 2, LoraAlpha = 4, TargetModules = targets }, Pairs(lora));
        var both = Assert.Throws<UserInputException>(() => new Trainer(lora, o, new object[] { refactor }).CreateOptimizer());
        Assert.Contains("both rewrite the gradients of the same (A, B) pairs", both.Message);
        Assert.Throws<UserInputException>(() => new TrainOptions { Precondition = "shampoo" }.Validate());
        Assert.Contains("--precondition-delta must be positive", Assert.Throws<UserInputException>(() => new TrainOptions { PreconditionDelta = 0 }.Validate()).Message);
    }

    /// <summary>ResLoRA (every structure) and RoLoRA's LoRA layers are (A, B) pairs: preconditioned every step, and the loss stays finite.</summary>
    [Theory]
    [InlineData("reslora-is")]
    [InlineData("reslora-bs")]
    [InlineData("reslora-ms")]
    [InlineData("rolora")]
    public void LowRankMethods_ArePreconditionedEveryStep(string method)
    {
        var targets = ModuleTargets.List("q_proj", "v_proj");
        AdapterConfigBase config = method == "rolora"
            ? new RoLoraConfig { R = 2, LoraAlpha = 4, TargetModules = targets }
            : new ResLoraConfig { R = 2, LoraAlpha = 4, Structure = method[^2..], TargetModules = targets };
        using var model = Model(config);
        var o = new TrainOptions { Steps = 3, BatchSize = 3, LearningRate = 1e-2, Precondition = "riemannian" };
        var pairs = Pairs(model);
        Assert.Equal(4, pairs.Count);
        var capture = new Capture(pairs, pairs.SelectMany(p => new[] { p.LoraA, p.LoraB }).ToList());
        var trainer = new Trainer(model, o, new object[] { capture });
        using var opt = trainer.CreateOptimizer();
        var data = new ShuffledBatchSource(Examples(), o.BatchSize, padId: 0, seed: 1);
        for (int s = 1; s <= 3; s++)
        {
            Assert.True(double.IsFinite(trainer.Step(opt, data, s, o.Steps).Loss));
            var (a, _, _, gb) = capture.Before[0];
            var expectB = MatMul(gb, DampedInverse(MatMul(a, T(a)), o.PreconditionDelta));
            Assert.True(MaxDiff(capture.After[0].GB, expectB) <= 1e-6 * Math.Max(1e-3, Max(expectB)), $"{method} step {s}");
        }
    }

    /// <summary>DoRA's pairs are preconditioned, its magnitude vector is stepped unchanged (as PEFT collects only lora_A/lora_B).</summary>
    [Fact]
    public void Dora_PreconditionsItsPairs_AndLeavesTheMagnitudeGradient()
    {
        using var model = Model(Lora(dora: true));
        var o = new TrainOptions { Steps = 2, BatchSize = 3, LearningRate = 1e-2, MaxGradNorm = 0, Precondition = "riemannian" };
        var pairs = Pairs(model);
        var trainer = new Trainer(model, o, Array.Empty<object>());
        var magnitudes = trainer.TrainableParameters.Where(p => p.dim() == 1).ToList();
        Assert.Equal(4, magnitudes.Count);
        var capture = new Capture(pairs, magnitudes);
        trainer = new Trainer(model, o, new object[] { capture });
        using var opt = trainer.CreateOptimizer();
        var data = new ShuffledBatchSource(Examples(), o.BatchSize, padId: 0, seed: 1);
        trainer.Step(opt, data, 1, 2);
        Assert.True(capture.BeforeNorm > 0);
        Assert.Equal(capture.BeforeNorm, capture.AfterNorm, 12);
        var (a, _, _, gb) = capture.Before[0];
        Assert.True(MaxDiff(capture.After[0].GB, MatMul(gb, DampedInverse(MatMul(a, T(a)), o.PreconditionDelta))) <= 1e-6 * Math.Max(1e-3, Max(capture.After[0].GB)));
    }

    /// <summary>Two ranks on threads equal one process with LoRA+ and the preconditioner: the hook sees the summed gradients.</summary>
    [Fact]
    public void ShardedSteps_OnTwoThreadRanks_EqualOneProcess_WithLoraPlusAndPreconditioning()
    {
        var o = new TrainOptions { Steps = 4, BatchSize = 3, GradAccum = 2, LearningRate = 1e-2, MaxGradNorm = 1.0, Seed = 3, LoraPlusLrRatio = 4, Precondition = "riemannian" };
        (double[] Losses, float[] Weights) Train(ICommunicator? comm)
        {
            using var model = Model(Lora());
            var trainer = new Trainer(model, o, Array.Empty<object>()) { Communicator = comm };
            using var opt = trainer.CreateOptimizer();
            var data = new ShuffledBatchSource(Examples(), o.BatchSize, padId: 0, seed: o.Seed);
            var losses = Enumerable.Range(1, o.Steps).Select(s => trainer.Step(opt, data, s, o.Steps).Loss).ToArray();
            return (losses, trainer.TrainableParameters.SelectMany(p => p.detach().data<float>().ToArray()).ToArray());
        }
        var one = Train(null);
        var ranks = new ThreadGroup(2).Run(comm => Train(comm));
        foreach (var r in ranks)
        {
            for (int i = 0; i < one.Losses.Length; i++) Assert.Equal(one.Losses[i], r.Losses[i], 4);
            for (int i = 0; i < one.Weights.Length; i++) Assert.True(Math.Abs(one.Weights[i] - r.Weights[i]) < 2e-5, $"weight {i}: {one.Weights[i]} vs {r.Weights[i]}");
        }
        Assert.Equal(ranks[0].Weights, ranks[1].Weights);
    }
}
