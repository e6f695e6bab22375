using ResLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>
/// An independent LLaMA forward pass in plain tensor ops over a name → tensor state dict, written from the
/// transformers equations (not from our modules): explicit softmax attention with a -inf causal mask, key/value
/// heads repeated with repeat_interleave, rotary angles computed in float64 per (position, pair) from inverse
/// frequencies written out here (not <see cref="Rotary.InverseFrequencies"/>); SmolLM3's layers without rotary and its
/// layer_types windows read from config.json's fields here, not through the family.
/// </summary>
internal static class ReferenceLlama
{
    /// <summary>
    /// inv_freq (head_dim/2), float64, by the textbook formulas: inv_i = 1 / θ^(2i/d); "linear" rope_scaling divides
    /// positions (equivalently inv) by factor; "llama3" is transformers' _compute_llama3_parameters element by element:
    /// wavelength λ = 2π/inv; λ &lt; L/high kept, λ &gt; L/low divided by factor, in between
    /// (1 − s)·inv/factor + s·inv with s = (L/λ − low)/(high − low), L = original_max_position_embeddings.
    /// </summary>
    public static double[] InverseFrequencies(ModelConfig c)
    {
        int d = c.HeadDim;
        var inv = new double[d / 2];
        for (int i = 0; i < d / 2; i++) inv[i] = 1.0 / Math.Pow(c.RopeTheta, 2.0 * i / d);
        var rs = c.RopeScaling;
        switch ((rs?.RopeType ?? rs?.Type ?? "default").ToLowerInvariant())
        {
            case "default":
                break;
            case "linear":
                for (int i = 0; i < inv.Length; i++) inv[i] /= rs!.Factor;
                break;
            case "llama3":
                {
                    double factor = rs!.Factor, low = rs.LowFreqFactor, high = rs.HighFreqFactor, len = rs.OriginalMaxPositionEmbeddings;
                    for (int i = 0; i < inv.Length; i++)
                    {
                        double wavelen = 2 * Math.PI / inv[i];
                        if (wavelen < len / high) continue;
                        if (wavelen > len / low) { inv[i] /= factor; continue; }
                        double smooth = (len / wavelen - low) / (high - low);
                        inv[i] = (1 - smooth) * inv[i] / factor + smooth * inv[i];
                    }
                    break;
                }
            default:
                throw new ArgumentException($"reference: rope scaling '{rs!.RopeType ?? rs.Type}' not written out");
        }
        return inv;
    }

    /// <summary>
    /// SmolLM3 (configuration_smollm3.py): layer l rotates iff no_rope_layers[l] == 1, or, without that list,
    /// iff (l + 1) is not a multiple of no_rope_layer_interval (default 4). Every other family rotates every layer.
    /// </summary>
    public static bool UsesRope(ModelConfig c, int l)
    {
        if (c.ModelType != "smollm3") return true;
        var list = c.Extra<int[]>("no_rope_layers");
        return list is not null ? list[l] == 1 : (l + 1) % (c.Extra<int?>("no_rope_layer_interval") ?? 4) != 0;
    }

    /// <summary>SmolLM3's sliding layers: layer_types[l] == "sliding_attention", or without layer_types the NoPE layers when a window is set.</summary>
    private static bool SmolLM3Sliding(ModelConfig c, int l, bool rope)
    {
        var types = c.Extra<string[]>("layer_types");
        return types is not null ? types[l] == "sliding_attention" : c.SlidingWindow is not null && !rope;
    }

    public static Tensor Logits(ModelConfig c, IReadOnlyDictionary<string, Tensor> w, long[] ids)
    {
        using var scope = torch.NewDisposeScope();
        int t = ids.Length, h = c.HeadDim, nH = c.NumAttentionHeads, nKv = c.NumKeyValueHeads;
        var x = w["model.embed_tokens.weight"].index_select(0, torch.tensor(ids)); // (t, d)
        // Rotary: angle(pos, i) = pos · θ^(-2i/h), the pair is (i, i + h/2) (rotate-half convention).
        var ang = new double[t, h / 2];
        var inv = InverseFrequencies(c);
        for (int p = 0; p < t; p++)
            for (int i = 0; i < h / 2; i++) ang[p, i] = p * inv[i];
        var angle = torch.tensor(ang).to_type(ScalarType.Float32);
        var cos = angle.cos(); var sin = angle.sin(); // (t, h/2)
        Tensor Rope(Tensor q) // (heads, t, h)
        {
            var a = q.narrow(-1, 0, h / 2); var b = q.narrow(-1, h / 2, h / 2);
            return torch.cat(new[] { a * cos - b * sin, b * cos + a * sin }, -1);
        }
        Tensor Norm(Tensor v, string name)
        {
            var rms = (v.pow(2).mean(new long[] { -1 }, keepdim: true) + c.RmsNormEps).sqrt();
            return v / rms * w[name];
        }
        Tensor Lin(Tensor v, string name)
        {
            var y = v.matmul(w[name + ".weight"].t());
            return w.TryGetValue(name + ".bias", out var bias) ? y + bias : y;
        }
        var causal = torch.ones(t, t).triu(1).to_type(ScalarType.Bool);
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string p = $"model.layers.{l}.";
            // Sliding window (modeling_mistral / modeling_qwen2): key j is hidden from query i when i - j >= window.
            bool rope = UsesRope(c, l);
            int? window = c.ModelType switch
            {
                "mistral" => c.SlidingWindow,
                "qwen2" or "qwen3" when c.UseSlidingWindow && l >= (c.MaxWindowLayers ?? 0) => c.SlidingWindow,
                "smollm3" when c.UseSlidingWindow && SmolLM3Sliding(c, l, rope) => c.SlidingWindow,
                _ => null,
            };
            var hidden = window is int wnd ? causal.logical_or(torch.ones(t, t).tril(-wnd).to_type(ScalarType.Bool)) : causal;
            var hn = Norm(x, p + "input_layernorm.weight");
            // Qwen3: q_norm / k_norm, an RMSNorm over head_dim of each head, before rotary.
            Tensor HeadNorm(Tensor v, string name) => w.ContainsKey(name) ? Norm(v, name) : v;
            // SmolLM3's NoPE layers: q and k enter the scores unrotated.
            Func<Tensor, Tensor> maybeRope = rope ? Rope : v => v;
            var q = maybeRope(HeadNorm(Lin(hn, p + "self_attn.q_proj").view(t, nH, h), p + "self_attn.q_norm.weight").transpose(0, 1));
            var k = maybeRope(HeadNorm(Lin(hn, p + "self_attn.k_proj").view(t, nKv, h), p + "self_attn.k_norm.weight").transpose(0, 1)).repeat_interleave(nH / nKv, 0);
            var v = Lin(hn, p + "self_attn.v_proj").view(t, nKv, h).transpose(0, 1).repeat_interleave(nH / nKv, 0);
            var scores = q.matmul(k.transpose(1, 2)) / Math.Sqrt(h);
            scores = scores.masked_fill(hidden, double.NegativeInfinity);
            var att = scores.softmax(-1).matmul(v).transpose(0, 1).reshape(t, nH * h);
            x = x + Lin(att, p + "self_attn.o_proj");
            var hm = Norm(x, p + "post_attention_layernorm.weight");
            var g = Lin(hm, p + "mlp.gate_proj");
            var mlp = Lin(g * g.sigmoid() * Lin(hm, p + "mlp.up_proj"), p + "mlp.down_proj");
            x = x + mlp;
        }
        x = Norm(x, "model.norm.weight");
        var head = c.TieWordEmbeddings ? w["model.embed_tokens.weight"] : w["lm_head.weight"];
        return scope.MoveToOuter(x.matmul(head.t()));
    }
}
