using ResLora.Adapters;
using ResLora.Models;
using ResLora.Tests.Infrastructure;
using ResLora.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Training;

/// <summary>Shared pieces of the optimiser-variant tests: a tiny adapted model, fixed data and plain-double matrix algebra.</summary>
internal static class OptimizerTestKit
{
    /// <summary>Seven short fixed sequences over a 40-token vocabulary (the first two tokens of each carry no loss).</summary>
    public static List<TokenizedExample> Examples(int n = 7) => Enumerable.Range(0, n).Select(i => new TokenizedExample(
        Enumerable.Range(0, 5 + i % 3).Select(j => (i * 7 + j * 3) % 37 + 3).ToArray(),
        Enumerable.Range(0, 5 + i % 3).Select(j => j < 2 ? -100 : (i * 7 + j * 3) % 37 + 3).ToArray())).ToList();

    /// <summary>A tiny LLaMA (vocab 40) with <paramref name="config"/>'s adapters on q_proj and v_proj, only adapters trainable.</summary>
    public static CausalLM Model(AdapterConfigBase config, long seed = 4, bool qkvBias = false)
    {
        var plan = new AdapterPlan(config, new torch.Generator(9));
        var model = TinyModels.Build(TinyModels.Config(vocab: 40, qkvBias: qkvBias), seed: seed, factory: plan);
        AdapterModel.FreezeAllButAdapters(model);
        return model;
    }

    public static LoraConfig Lora(bool dora = false) => new() { R = 2, LoraAlpha = 4, UseDora = dora, TargetModules = ModuleTargets.List("q_proj", "v_proj") };

    public static IReadOnlyList<ILowRankPair> Pairs(nn.Module model) =>
        AdapterModel.FindAdapters(model).Select(a => a.Adapter).OfType<ILowRankPair>().ToList();

    public static double[,] M(Tensor t)
    {
        var d = t.detach().to_type(ScalarType.Float64).contiguous().data<double>().ToArray();
        int rows = (int)t.shape[0], cols = (int)t.shape[1];
        var m = new double[rows, cols];
        for (int i = 0; i < rows; i++) for (int j = 0; j < cols; j++) m[i, j] = d[i * cols + j];
        return m;
    }

    public static double[,] MatMul(double[,] x, double[,] y)
    {
        int n = x.GetLength(0), k = x.GetLength(1), m = y.GetLength(1);
        var z = new double[n, m];
        for (int i = 0; i < n; i++) for (int j = 0; j < m; j++) { double s = 0; for (int l = 0; l < k; l++) s += x[i, l] * y[l, j]; z[i, j] = s; }
        return z;
    }

    public static double[,] T(double[,] x)
    {
        var z = new double[x.GetLength(1), x.GetLength(0)];
        for (int i = 0; i < x.GetLength(0); i++) for (int j = 0; j < x.GetLength(1); j++) z[j, i] = x[i, j];
        return z;
    }

    /// <summary>(M + δI)⁻¹ by Gauss–Jordan elimination with partial pivoting, in doubles.</summary>
    public static double[,] DampedInverse(double[,] m, double delta)
    {
        int n = m.GetLength(0);
        var a = new double[n, 2 * n];
        for (int i = 0; i < n; i++) { for (int j = 0; j < n; j++) a[i, j] = m[i, j] + (i == j ? delta : 0); a[i, n + i] = 1; }
        for (int c = 0; c < n; c++)
        {
            int p = c;
            for (int i = c + 1; i < n; i++) if (Math.Abs(a[i, c]) > Math.Abs(a[p, c])) p = i;
            for (int j = 0; j < 2 * n; j++) (a[c, j], a[p, j]) = (a[p, j], a[c, j]);
            double piv = a[c, c];
            for (int j = 0; j < 2 * n; j++) a[c, j] /= piv;
            for (int i = 0; i < n; i++)
            {
                if (i == c) continue;
                double f = a[i, c];
                for (int j = 0; j < 2 * n; j++) a[i, j] -= f * a[c, j];
            }
        }
        var inv = new double[n, n];
        for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) inv[i, j] = a[i, n + j];
        return inv;
    }

    /// <summary>max |x − y| over the elements, with the shapes checked.</summary>
    public static double MaxDiff(double[,] x, double[,] y)
    {
        Assert.Equal(x.GetLength(0), y.GetLength(0));
        Assert.Equal(x.GetLength(1), y.GetLength(1));
        double d = 0;
        for (int i = 0; i < x.GetLength(0); i++) for (int j = 0; j < x.GetLength(1); j++) d = Math.Max(d, Math.Abs(x[i, j] - y[i, j]));
        return d;
    }
}
