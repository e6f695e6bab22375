using ResLora.IO.Gguf;

namespace ResLora.Models.Phi3;

/// <summary>
/// llama.cpp's <c>phi3</c> architecture as convert_hf_to_gguf.py's Phi3MiniModel writes it: NeoX rotary (no q/k row
/// permutation), the fused <c>attn_qkv</c> and <c>ffn_up</c> (= gate_up_proj: llama.cpp's SwiGLU takes the first half as
/// the gate), <c>phi3.rope.dimension_count</c> = the partial rotary dim, and LongRoPE as the
/// <c>rope_factors_long/short.weight</c> tensors with <c>rope.scaling.attn_factor</c> and
/// <c>rope.scaling.original_context_length</c>. llama.cpp picks the long factors when its context exceeds the original one.
/// </summary>
internal static class Phi3Gguf
{
    public static readonly GgufNames Names = new("phi3", PermuteQk: false)
    {
        LayerNames = new[]
        {
            ("input_layernorm", "attn_norm"),
            ("self_attn.qkv_proj", "attn_qkv"),
            ("self_attn.o_proj", "attn_output"),
            ("post_attention_layernorm", "ffn_norm"),
            ("mlp.gate_up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"),
        },
        OwnsRopeScaling = true,
        WriteMetadata = WriteMetadata,
        ExtraTensors = ExtraTensors,
    };

    private static void WriteMetadata(GgufWriter w, ModelConfig c)
    {
        // llama.cpp's phi3 splits the fused qkv output at hidden_size: the query block must be exactly that wide.
        if ((long)c.NumAttentionHeads * c.HeadDim != c.HiddenSize)
            throw new UserInputException($"config.json: num_attention_heads × head_dim ({c.NumAttentionHeads} × {c.HeadDim}) differs from hidden_size ({c.HiddenSize}); llama.cpp's phi3 architecture cannot run such a model, so it is not exported to GGUF.");
        int dim = Phi3Family.RotaryDim(c);
        w.Set("phi3.rope.dimension_count", (uint)dim);
        int? original = c.Extra<int?>("original_max_position_embeddings") ?? c.RopeScaling?.OriginalMaxPositionEmbeddingsRaw;
        if (c.RopeScaling?.Kind == "longrope")
        {
            var p = Rotary.LongRopeParameters(c, dim);
            w.Set("phi3.rope.scaling.attn_factor", (float)p.AttentionFactor);
            original = p.OriginalMaxPositions;
        }
        if (original is int o) w.Set("phi3.rope.scaling.original_context_length", (uint)o);
        if (c.SlidingWindow is int sw) w.Set("phi3.attention.sliding_window", (uint)sw);
    }

    private static IReadOnlyList<(string Name, float[] Values)> ExtraTensors(ModelConfig c)
    {
        if (c.RopeScaling?.Kind != "longrope") return Array.Empty<(string, float[])>();
        var p = Rotary.LongRopeParameters(c, Phi3Family.RotaryDim(c));
        static float[] F(IReadOnlyList<double> v) => v.Select(x => (float)x).ToArray();
        return new[] { ("rope_factors_long.weight", F(p.LongFactor)), ("rope_factors_short.weight", F(p.ShortFactor)) };
    }
}
