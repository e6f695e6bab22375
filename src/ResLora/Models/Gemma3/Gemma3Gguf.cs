using ResLora.IO.Gguf;

namespace ResLora.Models.Gemma3;

/// <summary>
/// Gemma 3 in llama.cpp's <c>gemma3</c> architecture, as convert_hf_to_gguf.py's Gemma3Model writes it: NeoX rotary (no q/k
/// permutation), the four block norms under their own names, every norm weight stored as 1 + w (llama.cpp multiplies by
/// the stored weight), the sliding window, the local rotary base and the layer period as metadata. llama.cpp derives the
/// attention scale itself (1/sqrt(head_dim), or 1/sqrt(hidden/heads) for a 62-layer model) and knows no per-layer type
/// list: a config it would read differently is refused, naming the field.
/// </summary>
internal static class Gemma3Gguf
{
    private static readonly (string Hf, string Gguf)[] PerLayer =
    {
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
        ("post_attention_layernorm", "post_attention_norm"),
        ("pre_feedforward_layernorm", "ffn_norm"),
        ("post_feedforward_layernorm", "post_ffw_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    };

    public static GgufNames Names { get; } = new("gemma3", PermuteQk: false)
    {
        LayerNames = PerLayer,
        WriteMetadata = WriteMetadata,
        ToGgufValues = (name, v) => IsNorm(name) ? v.Select(x => x + 1f).ToArray() : v,
        FromGgufValues = (name, v) => IsNorm(name) ? v.Select(x => x - 1f).ToArray() : v,
    };

    /// <summary>Every Gemma norm (the four block norms, q/k norms, the final norm) scales by 1 + w.</summary>
    private static bool IsNorm(string hfName) => hfName.EndsWith("norm.weight", StringComparison.Ordinal);

    private static void WriteMetadata(GgufWriter w, ModelConfig c)
    {
        var s = Gemma3Settings.Read(c);
        const string src = "config.json";
        // llama.cpp's gemma3: layer i slides iff i % period < period − 1 (llama_hparams::set_swa_pattern), i.e. transformers'
        // default rule with period = sliding_window_pattern. An explicit layer_types must follow that rule for some period.
        int period = PeriodOf(s.Sliding)
            ?? throw new UserInputException($"{src}: 'layer_types' ({Describe(s.Sliding)}) is not a repeating pattern of sliding layers closed by one full-attention layer; llama.cpp's gemma3 architecture can only express such a pattern, so this model is not exported to GGUF.");
        double expectedScalar = c.NumHiddenLayers == 62 ? (double)c.HiddenSize / c.NumAttentionHeads : c.HeadDim;
        if (Math.Abs(s.QueryPreAttnScalar - expectedScalar) > 1e-9 * expectedScalar)
            throw new UserInputException($"{src}: 'query_pre_attn_scalar' is {s.QueryPreAttnScalar}, but llama.cpp's gemma3 architecture scales attention by 1/sqrt({expectedScalar}) " +
                $"({(c.NumHiddenLayers == 62 ? "hidden_size / num_attention_heads for a 62-layer model" : "head_dim")}) and reads no such field; this model is not exported to GGUF.");
        w.Set("gemma3.attention.key_length", (uint)c.HeadDim);
        w.Set("gemma3.attention.value_length", (uint)c.HeadDim);
        w.Set("gemma3.attention.sliding_window", (uint)s.Window);
        w.Set("gemma3.attention.sliding_window_pattern", (uint)period);
        w.Set("gemma3.rope.freq_base_swa", (float)s.RopeLocalBase);
    }

    /// <summary>The period p with layer i sliding iff (i + 1) % p != 0, or null when there is none (p = layers + 1 means no global layer).</summary>
    internal static int? PeriodOf(IReadOnlyList<bool> sliding)
    {
        for (int p = 1; p <= sliding.Count + 1; p++)
        {
            bool ok = true;
            for (int i = 0; i < sliding.Count && ok; i++) ok = sliding[i] == ((i + 1) % p != 0);
            if (ok) return p;
        }
        return null;
    }

    private static string Describe(IReadOnlyList<bool> sliding) => string.Concat(sliding.Select(x => x ? 'S' : 'F')) + ": S sliding, F full";
}
