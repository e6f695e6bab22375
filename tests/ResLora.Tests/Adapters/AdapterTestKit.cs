using ResLora.Adapters;
using ResLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Adapters;

/// <summary>Small shared fixtures for adapter tests: LLaMA-like specs, temp folders, tensor comparisons.</summary>
internal static class AdapterTestKit
{
    public static LinearSpec Spec(int layer, string block, string type, int inF = 6, int outF = 5, bool bias = false) =>
        new($"model.layers.{layer}.{block}.{type}", type, layer, inF, outF, bias);

    /// <summary>Two decoder layers of a tiny LLaMA (7 projections each) plus lm_head: 15 specs.</summary>
    public static List<LinearSpec> TinyLlamaSpecs()
    {
        var l = new List<LinearSpec>();
        for (int i = 0; i < 2; i++)
        {
            foreach (var t in new[] { "q_proj", "k_proj", "v_proj", "o_proj" }) l.Add(Spec(i, "self_attn", t, 8, 8));
            l.Add(Spec(i, "mlp", "gate_proj", 8, 12));
            l.Add(Spec(i, "mlp", "up_proj", 8, 12));
            l.Add(Spec(i, "mlp", "down_proj", 12, 8));
        }
        l.Add(new LinearSpec("lm_head", "lm_head", -1, 8, 16, false));
        return l;
    }

    public static double MaxAbsDiff(Tensor a, Tensor b)
    {
        using var d = a.detach().to_type(ScalarType.Float64).sub(b.detach().to_type(ScalarType.Float64)).abs().max();
        return d.item<double>();
    }

    public static string TempDir()
    {
        string d = Path.Combine(Path.GetTempPath(), "reslora-adapter-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(d);
        return d;
    }

    /// <summary>Adds N(0, 0.3²) noise to every trainable parameter so ΔW ≠ 0 (deterministic per seed).</summary>
    public static void Perturb(IAdapter a, long seed)
    {
        var g = new Generator((ulong)seed);
        using var _ = torch.no_grad();
        foreach (var p in a.TrainableParameters)
        {
            using var n = torch.randn(p.shape, dtype: ScalarType.Float32, generator: g).mul(0.3);
            p.add_(n.to_type(p.dtype));
        }
    }

    /// <summary>
    /// <paramref name="reference"/>'s base weights with <paramref name="config"/>'s adapters attached (optionally on a packed
    /// base), everything but the adapters frozen, each adapter perturbed so every factor gets a gradient; in train mode.
    /// </summary>
    public static CausalLM AdaptedCopy(CausalLM reference, AdapterConfigBase config, IPackedWeightFormat? packed = null, ScalarType dtype = ScalarType.Float32)
    {
        var plan = new AdapterPlan(config, new Generator(21)) { PackedBase = packed };
        var m = ModelFamilies.CreateCausalLM(reference.Config, plan, dtype, CPU);
        var src = reference.BaseParameters();
        m.LoadWeights(n => src[n]);
        AdapterModel.OnBaseWeightsLoaded(m);
        AdapterModel.FreezeAllButAdapters(m);
        long seed = 3;
        foreach (var (_, a) in AdapterModel.FindAdapters(m)) Perturb(a, seed++);
        m.train();
        return m;
    }
}
