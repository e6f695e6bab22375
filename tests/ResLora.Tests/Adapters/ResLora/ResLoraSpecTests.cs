using ResLora.Adapters;
using ResLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters.ResLora;

/// <summary>The numeric cases of docs/specs/reslora.md §8 (one chain of 3 blocks, d = 2, r = 1, α = 2 ⇒ s = 2, W = I).</summary>
public sealed class ResLoraSpecTests
{
    private static readonly float[][] A = { new[] { 1f, 0f }, new[] { 0f, 1f }, new[] { 1f, 1f } };
    private static readonly float[][] B = { new[] { 1f, 1f }, new[] { 2f, 0f }, new[] { 0f, 1f } };
    private static readonly float[][] X = { new[] { 1f, 2f }, new[] { 2f, 4f }, new[] { 3f, -1f } };

    private static (ResLoraLayerBuilder Builder, List<ResLoraLinear> Layers) Chain(string structure, int preNum = 1, string merge = "bi", int n = 3)
    {
        var b = new ResLoraLayerBuilder(new ResLoraConfig { R = 1, LoraAlpha = 2, Structure = structure, PreNum = preNum, Merge = merge, TargetModules = ModuleTargets.List("q_proj") });
        var layers = new List<ResLoraLinear>();
        for (int i = 0; i < n; i++)
        {
            var l = (ResLoraLinear)b.Build(new AdapterTarget(new LinearSpec($"model.layers.{i}.self_attn.q_proj", "q_proj", i, 2, 2, false), 1, 2), ScalarType.Float32, CPU);
            using (torch.no_grad())
            {
                l.Weight.copy_(torch.eye(2));
                l.LoraA.copy_(torch.tensor(A[i]).view(1, 2));
                l.LoraB.copy_(torch.tensor(B[i]).view(2, 1));
            }
            layers.Add(l);
        }
        return (b, layers);
    }

    /// <summary>Feeds x_0, x_1, x_2 to blocks 0, 1, 2 in one forward; returns each h_n.</summary>
    private static float[][] Run(ResLoraLayerBuilder b, List<ResLoraLinear> layers, bool train = false)
    {
        foreach (var l in layers) l.train(train);
        using var ctx = b.BeginForward();
        return layers.Select((l, i) => l.call(torch.tensor(X[i]).view(1, 2)).detach().data<float>().ToArray()).ToArray();
    }

    private static void Near(float[] expected, float[] actual, double tol = 1e-5)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++) Assert.True(Math.Abs(expected[i] - actual[i]) <= tol, $"expected [{string.Join(", ", expected)}], got [{string.Join(", ", actual)}]");
    }

    private static float[][] Merged(ResLoraLayerBuilder b, List<ResLoraLinear> layers)
    {
        Run(b, layers, train: true); // single-entry windows
        foreach (var l in layers) l.Merge();
        var h = Run(b, layers);
        foreach (var l in layers) l.Unmerge();
        return h;
    }

    [Fact]
    public void Case1_PlainLora_Module2() // s·B2 A2 x2 = 2·[0,1]ᵀ·2 + x2
    {
        var (b, l) = Chain("bs", preNum: 1);
        l[2].Previous = null; // no predecessors: plain LoRA
        Near(new[] { 3f, 3f }, Run(b, l)[2]);
    }

    [Theory]
    [InlineData("is", 1)]
    [InlineData("bs", 1)]
    [InlineData("bs", -1)]
    [InlineData("ms", 1)]
    [InlineData("ms", -1)]
    public void Case2_ZeroB_ReturnsTheBaseExactly(string structure, int preNum)
    {
        var (b, l) = Chain(structure, preNum);
        using (torch.no_grad()) foreach (var x in l) x.LoraB.zero_();
        var h = Run(b, l);
        for (int i = 0; i < 3; i++) Assert.Equal(X[i], h[i]);
    }

    [Fact]
    public void Case3_BlockShortcut_AndItsExactMerge()
    {
        var (b, l) = Chain("bs", 1);
        var h = Run(b, l);
        Near(new[] { 3f, 4f }, h[0]); Near(new[] { 22f, 8f }, h[1]); Near(new[] { -1f, 3f }, h[2]);
        var m = Merged(b, l);
        for (int i = 0; i < 3; i++) Near(h[i], m[i], 1e-6);
        var (b2, l2) = Chain("bs", -1);
        Near(new[] { 5f, 9f }, Run(b2, l2)[2]);
        Near(new[] { 5f, 9f }, Merged(b2, l2)[2], 1e-6);
    }

    [Fact]
    public void Case4_InputShortcut_TrainingPath()
    {
        var (b, l) = Chain("is");
        var h = Run(b, l);
        Near(new[] { 5f, 6f }, h[0]); Near(new[] { 26f, 4f }, h[1]); Near(new[] { 3f, 15f }, h[2]);
    }

    [Fact]
    public void Case5_InputShortcut_MergeBi()
    {
        var (b, l) = Chain("is", merge: "bi");
        Run(b, l, train: true);
        var alphas = b.ComputeAlphas();
        Assert.Equal(1.0, alphas[l[0]], 6);
        Assert.Equal(0.5, alphas[l[1]], 6);
        Assert.Equal(Math.Sqrt(2), alphas[l[2]], 5);
        Assert.Equal(Math.Sqrt(20), l[1].InputNormMean, 5);
        var m = Merged(b, l);
        Near(new[] { 5f, 6f }, m[0]); Near(new[] { 26f, 4f }, m[1]); Near(new[] { 3f, 8.6568542f }, m[2]);
    }

    [Fact]
    public void Case6_InputShortcut_MergeBw()
    {
        var (b, l) = Chain("is", merge: "bw");
        var alphas = b.ComputeAlphas();
        Assert.Equal(1.0, alphas[l[1]], 6);
        Assert.Equal(Math.Sqrt(14) / Math.Sqrt(18), alphas[l[2]], 5);
        var m = Merged(b, l);
        Near(new[] { 5f, 6f }, m[0]); Near(new[] { 34f, 4f }, m[1]); Near(new[] { 3f, 6.5276684f }, m[2]);
    }

    [Fact]
    public void Case7_MiddleShortcut_TrainingPath()
    {
        var (b, l) = Chain("ms", 1);
        var h = Run(b, l);
        Near(new[] { 3f, 4f }, h[0]); Near(new[] { 22f, 4f }, h[1]); Near(new[] { 3f, 11f }, h[2]);
        var (b2, l2) = Chain("ms", -1);
        Near(new[] { 3f, 13f }, Run(b2, l2)[2]);
    }

    [Fact]
    public void Case8_MiddleShortcut_ScalarMerge()
    {
        var (b, l) = Chain("ms", 1, "bi");
        Run(b, l, train: true);
        var alphas = b.ComputeAlphas();
        Assert.Equal(0.0, alphas[l[0]], 6);
        Assert.Equal(0.25, alphas[l[1]], 6);
        Assert.Equal(2.0, alphas[l[2]], 6);
        var m = Merged(b, l);
        Near(new[] { 3f, 4f }, m[0]); Near(new[] { 22f, 4f }, m[1]); Near(new[] { 3f, 11f }, m[2]);
    }

    [Fact]
    public void Case9_MiddleShortcut_AMerge()
    {
        var (b, l) = Chain("ms", 1, "a");
        var m = Merged(b, l);
        Near(new[] { 22f, 4f }, m[1]);
        Near(new[] { 3f, 0.1715729f }, m[2]);
    }

    [Fact]
    public void Case10_GradientThroughTheBlockShortcut()
    {
        var (b, l) = Chain("bs", 1);
        using (var ctx = b.BeginForward())
        {
            using var h2 = l[2].call(torch.tensor(X[2]).view(1, 2));
            h2.sum().backward();
        }
        Assert.Equal(new[] { 12f, -4f }, l[1].LoraA.grad!.data<float>().ToArray());
        Assert.Equal(new[] { -2f, -2f }, l[1].LoraB.grad!.data<float>().ToArray());
    }

    [Fact]
    public void Case11_GradientThroughTheInputShortcut()
    {
        var (b, l) = Chain("is");
        using var x1 = torch.tensor(X[1]).view(1, 2).requires_grad_(true);
        using (var ctx = b.BeginForward())
        {
            l[0].call(torch.tensor(X[0]).view(1, 2));
            l[1].call(x1);
            using var h2 = l[2].call(torch.tensor(X[2]).view(1, 2));
            h2.sum().backward();
        }
        // h_2 depends on x_1 only through module 2's shortcut: ∂sum(h_2)/∂x_1 = s·A_2ᵀ(B_2ᵀ1) = [2, 2] (zero for plain LoRA).
        Assert.Equal(new[] { 2f, 2f }, x1.grad!.data<float>().ToArray());
    }

    [Fact]
    public void Case12_WindowKeepsTheLast100()
    {
        var b = new ResLoraLayerBuilder(new ResLoraConfig { R = 1, LoraAlpha = 2, Structure = "is", TargetModules = ModuleTargets.List("q_proj") });
        var l = (ResLoraLinear)b.Build(new AdapterTarget(new LinearSpec("m.q_proj", "q_proj", 0, 1, 1, false), 1, 2), ScalarType.Float32, CPU);
        l.train();
        for (int v = 1; v <= 150; v++)
        {
            using var ctx = b.BeginForward();
            l.call(torch.tensor(new float[] { v }).view(1, 1));
        }
        Assert.Equal(100, l.WindowCount);
        Assert.Equal(100.5, l.InputNormMean, 4);
        l.eval();
        using (var ctx = b.BeginForward()) l.call(torch.tensor(new float[] { 1000 }).view(1, 1));
        Assert.Equal(100.5, l.InputNormMean, 4); // eval forwards never touch the window
    }

    [Fact]
    public void Case13_ChainsLinkOnlyEqualShapes()
    {
        var b = new ResLoraLayerBuilder(new ResLoraConfig { R = 1, LoraAlpha = 2, Structure = "bs", PreNum = -1, TargetModules = ModuleTargets.List("q_proj") });
        (int In, int Out)[] shapes = { (16, 16), (16, 16), (16, 4), (16, 4) };
        var ls = shapes.Select((s, i) => (ResLoraLinear)b.Build(new AdapterTarget(new LinearSpec($"m.{i}.q_proj", "q_proj", i, s.In, s.Out, false), 1, 2), ScalarType.Float32, CPU)).ToList();
        Assert.Null(ls[0].Previous);
        Assert.Same(ls[0], ls[1].Previous);
        Assert.Null(ls[2].Previous);
        Assert.Same(ls[2], ls[3].Previous);
        Assert.Empty(ls[2].Predecessors(-1));
        // Keys: no predecessor modules nested in the state dict.
        Assert.Equal(new[] { "lora_A.weight", "lora_B.weight", "weight" }, ls[1].state_dict().Keys.OrderBy(k => k, StringComparer.Ordinal));
    }

    [Fact]
    public void StaleOrMissingContext_IsRefused()
    {
        var (b, l) = Chain("is");
        Assert.Contains("outside a model forward", Assert.Throws<InvalidOperationException>(() => l[1].call(torch.tensor(X[1]).view(1, 2))).Message);
        using (var ctx = b.BeginForward())
        {
            Assert.Contains("did not run earlier", Assert.Throws<InvalidOperationException>(() => l[1].call(torch.tensor(X[1]).view(1, 2))).Message);
            Assert.Throws<InvalidOperationException>(() => b.BeginForward());
        }
    }
}
