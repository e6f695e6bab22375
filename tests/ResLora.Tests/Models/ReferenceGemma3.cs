using ResLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>
/// An independent Gemma 3 text forward pass in plain tensor ops over a name → tensor state dict, written from
/// transformers' modeling_gemma3.py equations (not from our modules): embeddings × sqrt(hidden), RMSNorm scaled by
/// (1 + w), per-head q/k norms before rotary, explicit softmax attention scaled by query_pre_attn_scalar^-½ under a -inf
/// causal mask (sliding layers also hide keys j ≤ i − window), GELU with its tanh formula written out, post-norms on both
/// sublayers. Which layer slides and its rotary base are re-derived here from the raw config fields.
/// </summary>
internal static class ReferenceGemma3
{
    public static Tensor Logits(ModelConfig c, IReadOnlyDictionary<string, Tensor> w, long[] ids)
    {
        using var scope = torch.NewDisposeScope();
        int t = ids.Length, h = c.HeadDim, nH = c.NumAttentionHeads, nKv = c.NumKeyValueHeads;
        double qScalar = c.Extra<double>("query_pre_attn_scalar", fallback: 256.0);
        double localBase = c.Extra<double>("rope_local_base_freq", fallback: 10000.0);
        int pattern = c.Extra<int>("sliding_window_pattern", fallback: 6);
        string[]? types = c.Extra<string[]>("layer_types");
        int window = c.SlidingWindow!.Value;

        var x = w["model.embed_tokens.weight"].index_select(0, torch.tensor(ids)) * (float)Math.Sqrt(c.HiddenSize); // (t, d)
        (Tensor Cos, Tensor Sin) Angles(double[] inv)
        {
            var ang = new double[t, h / 2];
            for (int p = 0; p < t; p++)
                for (int i = 0; i < h / 2; i++) ang[p, i] = p * inv[i];
            var a = torch.tensor(ang).to_type(ScalarType.Float32);
            return (a.cos(), a.sin()); // (t, h/2)
        }
        var global = Angles(ReferenceLlama.InverseFrequencies(c)); // rope_theta with rope_scaling
        var localInv = new double[h / 2];
        for (int i = 0; i < h / 2; i++) localInv[i] = 1.0 / Math.Pow(localBase, 2.0 * i / h); // no scaling on local layers
        var local = Angles(localInv);
        Tensor Rope(Tensor q, (Tensor Cos, Tensor Sin) cs) // (heads, t, h), pairs (i, i + h/2)
        {
            var a = q.narrow(-1, 0, h / 2); var b = q.narrow(-1, h / 2, h / 2);
            return torch.cat(new[] { a * cs.Cos - b * cs.Sin, b * cs.Cos + a * cs.Sin }, -1);
        }
        Tensor Norm(Tensor v, string name)
        {
            var rms = (v.pow(2).mean(new long[] { -1 }, keepdim: true) + c.RmsNormEps).sqrt();
            return v / rms * (w[name] + 1);
        }
        Tensor Lin(Tensor v, string name)
        {
            var y = v.matmul(w[name + ".weight"].t());
            return w.TryGetValue(name + ".bias", out var bias) ? y + bias : y;
        }
        Tensor GeluTanh(Tensor g) => 0.5 * g * (1 + (Math.Sqrt(2 / Math.PI) * (g + 0.044715 * g.pow(3))).tanh());

        var causal = torch.ones(t, t).triu(1).to_type(ScalarType.Bool);
        var outside = causal.logical_or(torch.ones(t, t).tril(-window).to_type(ScalarType.Bool));
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string p = $"model.layers.{l}.";
            bool sliding = types is not null ? types[l] == "sliding_attention" : (l + 1) % pattern != 0;
            var cs = sliding ? local : global;
            var hn = Norm(x, p + "input_layernorm.weight");
            var q = Rope(Norm(Lin(hn, p + "self_attn.q_proj").view(t, nH, h), p + "self_attn.q_norm.weight").transpose(0, 1), cs);
            var k = Rope(Norm(Lin(hn, p + "self_attn.k_proj").view(t, nKv, h), p + "self_attn.k_norm.weight").transpose(0, 1), cs).repeat_interleave(nH / nKv, 0);
            var v = Lin(hn, p + "self_attn.v_proj").view(t, nKv, h).transpose(0, 1).repeat_interleave(nH / nKv, 0);
            var scores = q.matmul(k.transpose(1, 2)) * Math.Pow(qScalar, -0.5);
            scores = scores.masked_fill(sliding ? outside : causal, double.NegativeInfinity);
            var att = scores.softmax(-1).matmul(v).transpose(0, 1).reshape(t, nH * h);
            x = x + Norm(Lin(att, p + "self_attn.o_proj"), p + "post_attention_layernorm.weight");
            var hm = Norm(x, p + "pre_feedforward_layernorm.weight");
            var mlp = Lin(GeluTanh(Lin(hm, p + "mlp.gate_proj")) * Lin(hm, p + "mlp.up_proj"), p + "mlp.down_proj");
            x = x + Norm(mlp, p + "post_feedforward_layernorm.weight");
        }
        x = Norm(x, "model.norm.weight");
        var head = w.TryGetValue("lm_head.weight", out var lm) ? lm : w["model.embed_tokens.weight"];
        return scope.MoveToOuter(x.matmul(head.t()));
    }
}
