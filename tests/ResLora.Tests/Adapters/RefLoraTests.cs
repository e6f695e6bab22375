using ResLora.Adapters;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters;

/// <summary>docs/specs/reflora.md §10 in PEFT's orientation: lora_A = paper Aᵀ (r, in), lora_B = paper B (out, r).</summary>
[Collection(Infrastructure.LongNativeLoopCollection.Name)]
public sealed class RefLoraTests
{
    private sealed class Pair(Tensor a, Tensor b) : ILowRankPair
    {
        public Parameter LoraA { get; } = new(a.to_type(ScalarType.Float64));
        public Parameter LoraB { get; } = new(b.to_type(ScalarType.Float64));
        public double Scaling => 1;
    }

    private static Tensor T(double[,] v) => torch.tensor(v, ScalarType.Float64);

    private static double RelErr(Tensor a, Tensor b) => (a - b).norm().item<double>() / Math.Max(1e-300, b.norm().item<double>());

    [Fact]
    public void T7_DiagonalCase_ByHand()
    {
        using var loraA = T(new double[,] { { 1, 0, 0 }, { 0, 2, 0 } }); // paper A = [[1,0],[0,2],[0,0]]
        using var loraB = T(new double[,] { { 4, 0 }, { 0, 1 } });
        var (s, sInv) = RefLoraMath.Preconditioners(loraA, loraB);
        Assert.True(RelErr(s, T(new double[,] { { 4, 0 }, { 0, 0.5 } })) < 1e-6);
        Assert.True(RelErr(sInv, T(new double[,] { { 0.25, 0 }, { 0, 2 } })) < 1e-6);
    }

    [Fact]
    public void T7b_NonDiagonalCase_ByHand()
    {
        using var loraA = T(new double[,] { { 1, 0, 1 }, { 2, 1, 0 } }); // paper A = [[1,2],[0,1],[1,0]]
        using var loraB = T(new double[,] { { 2, 0 }, { 1, 3 } });
        var (s, sInv) = RefLoraMath.Preconditioners(loraA, loraB, eps: 0); // exact algebra; the default ε shifts results by ~1e-7
        Assert.True(RelErr(s, T(new double[,] { { 1.7567102623, -0.1934174037 }, { -0.1934174037, 1.4156574867 } })) < 1e-7);
        Assert.True(RelErr(sInv, T(new double[,] { { 0.5779397488, 0.0789623244 }, { 0.0789623244, 0.7171739614 } })) < 1e-7);
    }

    [Fact]
    public void T1_T15_BalancingEquation_AndWeightSpaceForm()
    {
        using var gen = new torch.Generator(1);
        using var loraA = torch.randn(new long[] { 4, 40 }, ScalarType.Float64, generator: gen) * 3;   // paper A ~ N(0, 9)
        using var loraB = torch.randn(new long[] { 30, 4 }, ScalarType.Float64, generator: gen) * 0.1; // paper B ~ N(0, 0.01)
        var (s, sInv) = RefLoraMath.Preconditioners(loraA, loraB, eps: 0);
        using var x = loraA.matmul(loraA.t());
        using var y = loraB.t().matmul(loraB);
        Assert.True(RelErr(s.matmul(x).matmul(s), y) < 1e-10);
        Assert.True(RelErr(s, s.t()) < 1e-12);
        Assert.True(RelErr(s.matmul(sInv), torch.eye(4, dtype: ScalarType.Float64)) < 1e-8);
        // T15: paper A S Aᵀ = (ΔW ΔWᵀ)^{1/2} with ΔW_paper = A Bᵀ = lora_Aᵀ lora_Bᵀ; swapping S and S⁻¹ must fail.
        using var dw = loraA.t().matmul(loraB.t());
        static Tensor PsdSqrt(Tensor m)
        {
            var (l, v) = torch.linalg.eigh(m);
            return (v * l.clamp_min(0).sqrt().unsqueeze(0)).matmul(v.t());
        }
        using var lhs = loraA.t().matmul(s).matmul(loraA);
        using var rhs = PsdSqrt(dw.matmul(dw.t()));
        Assert.True(RelErr(lhs, rhs) < 1e-6);
        using var swapped = loraA.t().matmul(sInv).matmul(loraA);
        Assert.True(RelErr(swapped, rhs) > 1e-2);
    }

    [Fact]
    public void T13_ZeroB_GivesZeroS_AndFiniteInverse()
    {
        using var gen = new torch.Generator(2);
        using var loraA = (torch.rand(new long[] { 4, 64 }, generator: gen) * 2 - 1) / 8;
        using var loraB = torch.zeros(32, 4);
        var (s, sInv) = RefLoraMath.Preconditioners(loraA, loraB);
        Assert.Equal(0.0, s.abs().max().item<double>());
        Assert.True(sInv.isfinite().all().item<bool>());
    }

    /// <summary>T12: ½‖B A − Y‖² with an unbalanced start; plain GD vs RefLoRA (preconditioned GD, no warm-up since B ≠ 0).</summary>
    private static (int StepsToTol, double LossAt2000) Toy(bool refLora, ulong seed)
    {
        using var gen = new torch.Generator(seed);
        using var u = torch.linalg.qr(torch.randn(new long[] { 50, 4 }, ScalarType.Float64, generator: gen)).Q;
        using var v = torch.linalg.qr(torch.randn(new long[] { 40, 4 }, ScalarType.Float64, generator: gen)).Q;
        using var target = (u * torch.tensor(new double[] { 10, 5, 2, 1 }).unsqueeze(0)).matmul(v.t()); // (50, 40)
        var pair = new Pair(torch.randn(new long[] { 4, 40 }, ScalarType.Float64, generator: gen) * 0.05, torch.randn(new long[] { 50, 4 }, ScalarType.Float64, generator: gen));
        using var opt = torch.optim.SGD(new[] { pair.LoraA, pair.LoraB }, 0.03);
        var cfg = new RefLoraConfig { R = 4, LoraAlpha = 4, TargetModules = ModuleTargets.AllLinear, RefactorWarmupSteps = 0, InitLoraWeights = LoraInit.Random };
        var hook = new RefLoraHook(cfg, new[] { pair });
        int reached = -1;
        double loss = 0;
        for (int step = 1; step <= 2000; step++)
        {
            using var scope = torch.NewDisposeScope();
            opt.zero_grad();
            var l = 0.5 * (pair.LoraB.matmul(pair.LoraA) - target).pow(2).sum();
            loss = l.item<double>();
            if (loss < 1e-6 && reached < 0) { reached = step; if (refLora) break; }
            l.backward();
            var ctx = new OptimizerStepContext(step, 2000, opt);
            if (refLora) hook.BeforeOptimizerStep(ctx);
            opt.step();
            if (refLora) hook.AfterOptimizerStep(ctx);
        }
        return (reached, loss);
    }

    [Fact]
    public void T12_RefLora_ConvergesWhereLoraCrawls()
    {
        for (ulong seed = 1; seed <= 3; seed++)
        {
            var (refSteps, _) = Toy(true, seed);
            var (_, loraLoss) = Toy(false, seed);
            Assert.InRange(refSteps, 1, 600);
            Assert.True(loraLoss > 1e-3, $"seed {seed}: LoRA loss {loraLoss}");
        }
    }

    /// <summary>T14: AdamW toy, statistical only (spec: mean steps LoRA 501, RefLoRA 468, RefLoRA-S 504 over 8 seeds).</summary>
    private static int AdamToy(string variant, ulong seed)
    {
        using var gen = new torch.Generator(seed);
        using var u = torch.linalg.qr(torch.randn(new long[] { 64, 4 }, ScalarType.Float64, generator: gen)).Q;
        using var v = torch.linalg.qr(torch.randn(new long[] { 48, 4 }, ScalarType.Float64, generator: gen)).Q;
        using var target = (u * torch.tensor(new double[] { 4, 2, 1, 0.5 }).unsqueeze(0)).matmul(v.t()); // (64, 48)
        // Paper A0 = U(−1,1)/√64 (in = 64 here, so lora_A is (4, 64)), B0 = 0.
        var pair = new Pair((torch.rand(new long[] { 4, 64 }, ScalarType.Float64, generator: gen) * 2 - 1) / 8, torch.zeros(48, 4, ScalarType.Float64));
        using var opt = torch.optim.AdamW(new[] { pair.LoraA, pair.LoraB }, 3e-3, 0.9, 0.999, 1e-8, 0.0);
        var hook = variant == "lora" ? null : new RefLoraHook(new RefLoraConfig { R = 4, LoraAlpha = 4, Variant = variant, RefactorWarmupSteps = 20, TargetModules = ModuleTargets.AllLinear }, new[] { pair });
        for (int step = 1; step <= 3000; step++)
        {
            using var scope = torch.NewDisposeScope();
            opt.zero_grad();
            var l = 0.5 * (pair.LoraB.matmul(pair.LoraA) - target.t()).pow(2).sum();
            if (l.item<double>() < 1e-4) return step;
            l.backward();
            var ctx = new OptimizerStepContext(step, 3000, opt);
            hook?.BeforeOptimizerStep(ctx);
            opt.step();
            hook?.AfterOptimizerStep(ctx);
        }
        return 3000;
    }

    [Fact]
    public void T14_AdamToy_RefLoraIsNotSlowerOnAverage()
    {
        var lora = new List<int>();
        var full = new List<int>();
        for (ulong seed = 1; seed <= 8; seed++)
        {
            lora.Add(AdamToy("lora", seed));
            full.Add(AdamToy("full", seed));
        }
        // Statistical, not per seed: the mean over seeds must not be worse than LoRA's by more than 5%.
        Assert.True(full.Average() <= lora.Average() * 1.05, $"RefLoRA mean {full.Average()} vs LoRA {lora.Average()} (per seed {string.Join(",", full)} vs {string.Join(",", lora)})");
        Assert.All(lora.Concat(full), s => Assert.True(s < 3000));
    }

    [Fact]
    public void T10_ScalarVariant_BalancesNorms_KeepsTheProduct_AndTransformsAdamMoments()
    {
        using var gen = new torch.Generator(4);
        var pair = new Pair(torch.randn(new long[] { 3, 10 }, ScalarType.Float64, generator: gen) * 2, torch.randn(new long[] { 8, 3 }, ScalarType.Float64, generator: gen) * 0.1);
        using var opt = torch.optim.AdamW(new[] { pair.LoraA, pair.LoraB }, 1e-3, 0.9, 0.999, 1e-8, 0.0);
        var cfg = new RefLoraConfig { R = 3, LoraAlpha = 3, Variant = "scalar", RefactorWarmupSteps = 1, TargetModules = ModuleTargets.AllLinear };
        var hook = new RefLoraHook(cfg, new[] { pair });
        for (int step = 1; step <= 2; step++)
        {
            opt.zero_grad();
            using (var l = pair.LoraB.matmul(pair.LoraA).pow(2).sum()) l.backward();
            var ctx = new OptimizerStepContext(step, 2, opt);
            hook.BeforeOptimizerStep(ctx);
            opt.step();
            if (step == 2)
            {
                double na = pair.LoraA.norm().item<double>(), nb = pair.LoraB.norm().item<double>();
                using var prod = pair.LoraB.matmul(pair.LoraA).detach().clone();
                var before = RefLoraHook.MomentsByParameter(opt)[pair.LoraA.Handle].ExpAvg.detach().clone();
                hook.AfterOptimizerStep(ctx);
                double q = Math.Sqrt(nb / na);
                Assert.Equal(Math.Sqrt(na * nb), pair.LoraA.norm().item<double>(), 9);
                Assert.Equal(Math.Sqrt(na * nb), pair.LoraB.norm().item<double>(), 9);
                Assert.True(RelErr(pair.LoraB.matmul(pair.LoraA), prod) < 1e-12);
                var after = RefLoraHook.MomentsByParameter(opt)[pair.LoraA.Handle].ExpAvg;
                Assert.True(RelErr(after, before / q) < 1e-12, "Adam's exp_avg of A must be divided by p");
                Assert.Equal(1, hook.Refactorings);
            }
            else hook.AfterOptimizerStep(ctx);
        }
    }

    [Fact]
    public void Warmup_SkipsTheFirstSteps_AndZeroWarmupWithZeroBIsRefused()
    {
        var pair = new Pair(torch.randn(2, 5), torch.randn(4, 2));
        using var opt = torch.optim.SGD(new[] { pair.LoraA, pair.LoraB }, 0.01);
        var hook = new RefLoraHook(new RefLoraConfig { R = 2, LoraAlpha = 2, RefactorWarmupSteps = 3, RefactorInterval = 2, TargetModules = ModuleTargets.AllLinear }, new[] { pair });
        var fired = new List<int>();
        for (int step = 1; step <= 9; step++)
        {
            opt.zero_grad();
            using (var l = pair.LoraB.matmul(pair.LoraA).sum()) l.backward();
            int before = hook.Refactorings;
            hook.BeforeOptimizerStep(new OptimizerStepContext(step, 9, opt));
            if (hook.Refactorings > before) fired.Add(step);
        }
        Assert.Equal(new[] { 4, 6, 8 }, fired);
        Assert.Contains("refactor_warmup_steps", Assert.Throws<UserInputException>(() => new RefLoraConfig { R = 2, LoraAlpha = 2, RefactorWarmupSteps = 0, TargetModules = ModuleTargets.AllLinear }.Validate()).Message);
    }
}
