using ResLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Models;

/// <summary>
/// An independent Phi-3 forward pass in plain tensor ops over a name → tensor state dict, written from modeling_phi3.py's
/// equations (not from our modules or <see cref="Rotary"/>): the fused qkv_proj split into q (heads·d rows), k, v; the
/// fused gate_up_proj split into gate and up halves; rotary angles in float64 over the first rotary dims only, LongRoPE's
/// short or long divisors chosen by the sequence length against original_max_position_embeddings and cos/sin scaled by
/// sqrt(1 + ln(max/original) / ln(original)); explicit softmax attention with a −∞ causal (and sliding-window) mask.
/// </summary>
internal static class ReferencePhi3
{
    /// <summary>The rotary angle divisor per frequency: base^(2i/rd) · ext_i, with ext_i the LongRoPE factor (1 without).</summary>
    public static double[] InverseFrequencies(ModelConfig c, int rotaryDim, int seqLen, out double cosScale)
    {
        var inv = new double[rotaryDim / 2];
        cosScale = 1.0;
        var rs = c.RopeScaling;
        IReadOnlyList<double>? ext = null;
        if (rs is not null)
        {
            int original = c.Extra<int?>("original_max_position_embeddings") ?? rs.OriginalMaxPositionEmbeddingsRaw ?? c.MaxPositionEmbeddings;
            ext = seqLen > original ? rs.LongFactor : rs.ShortFactor;
            double scale = (double)c.MaxPositionEmbeddings / original;
            cosScale = rs.AttentionFactor ?? (scale <= 1 ? 1.0 : Math.Sqrt(1 + Math.Log(scale) / Math.Log(original)));
        }
        for (int i = 0; i < inv.Length; i++) inv[i] = 1.0 / (Math.Pow(c.RopeTheta, 2.0 * i / rotaryDim) * (ext?[i] ?? 1.0));
        return inv;
    }

    public static Tensor Logits(ModelConfig c, IReadOnlyDictionary<string, Tensor> w, long[] ids)
    {
        using var scope = torch.NewDisposeScope();
        int t = ids.Length, h = c.HeadDim, nH = c.NumAttentionHeads, nKv = c.NumKeyValueHeads;
        int rd = (int)(h * (c.Extra<double?>("partial_rotary_factor") ?? 1.0));
        var x = w["model.embed_tokens.weight"].index_select(0, torch.tensor(ids)); // (t, d)
        var inv = InverseFrequencies(c, rd, t, out double cosScale);
        var ang = new double[t, rd / 2];
        for (int p = 0; p < t; p++)
            for (int i = 0; i < rd / 2; i++) ang[p, i] = p * inv[i];
        var angle = torch.tensor(ang);
        var dtype = x.dtype; // float32 or float64, as the weights
        var cos = (angle.cos() * cosScale).to_type(dtype); // (t, rd/2)
        var sin = (angle.sin() * cosScale).to_type(dtype);
        Tensor Rope(Tensor q) // (heads, t, h): pairs (i, i + rd/2) inside the first rd dims; the rest untouched
        {
            var a = q.narrow(-1, 0, rd / 2); var b = q.narrow(-1, rd / 2, rd / 2);
            return torch.cat(new[] { a * cos - b * sin, b * cos + a * sin, q.narrow(-1, rd, h - rd) }, -1);
        }
        Tensor Norm(Tensor v, string name)
        {
            var rms = (v.pow(2).mean(new long[] { -1 }, keepdim: true) + c.RmsNormEps).sqrt();
            return v / rms * w[name];
        }
        Tensor Lin(Tensor v, string name) => v.matmul(w[name + ".weight"].t());
        var hidden = torch.ones(t, t).triu(1).to_type(ScalarType.Bool);
        // Sliding window on every layer: key j hidden from query i when i − j ≥ window.
        if (c.SlidingWindow is int wnd) hidden = hidden.logical_or(torch.ones(t, t).tril(-wnd).to_type(ScalarType.Bool));
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            string p = $"model.layers.{l}.";
            var qkv = Lin(Norm(x, p + "input_layernorm.weight"), p + "self_attn.qkv_proj"); // (t, (nH + 2nKv)·h)
            var q = Rope(qkv.narrow(1, 0, nH * h).reshape(t, nH, h).transpose(0, 1));
            var k = Rope(qkv.narrow(1, nH * h, nKv * h).reshape(t, nKv, h).transpose(0, 1)).repeat_interleave(nH / nKv, 0);
            var v = qkv.narrow(1, (nH + nKv) * h, nKv * h).reshape(t, nKv, h).transpose(0, 1).repeat_interleave(nH / nKv, 0);
            var scores = q.matmul(k.transpose(1, 2)) / Math.Sqrt(h);
            scores = scores.masked_fill(hidden, double.NegativeInfinity);
            var att = scores.softmax(-1).matmul(v).transpose(0, 1).reshape(t, nH * h);
            x = x + Lin(att, p + "self_attn.o_proj");
            var gu = Lin(Norm(x, p + "post_attention_layernorm.weight"), p + "mlp.gate_up_proj");
            var (gate, up) = (gu.narrow(1, 0, c.IntermediateSize), gu.narrow(1, c.IntermediateSize, c.IntermediateSize));
            x = x + Lin(gate * gate.sigmoid() * up, p + "mlp.down_proj");
        }
        x = Norm(x, "model.norm.weight");
        var head = c.TieWordEmbeddings ? w["model.embed_tokens.weight"] : w["lm_head.weight"];
        return scope.MoveToOuter(x.matmul(head.t()));
    }
}
