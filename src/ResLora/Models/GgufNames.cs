using System.Text.RegularExpressions;
using ResLora.IO.Gguf;

namespace ResLora.Models;

/// <summary>
/// How a family's Hugging Face weight names map to llama.cpp's GGUF tensor names (gguf-py's constants.py and
/// tensor_mapping.py), for one GGUF architecture (<c>general.architecture</c>): <c>model.layers.3.self_attn.q_proj.weight</c>
/// ↔ <c>blk.3.attn_q.weight</c>. <see cref="PermuteQk"/>: llama.cpp's <c>llama</c> architecture applies rotary to
/// interleaved pairs, so the converter permutes the rows of q and k (convert_hf_to_gguf.py's LlamaModel.permute); the
/// <c>qwen2</c> and <c>qwen3</c> architectures use Hugging Face's rotate-half (NeoX) order and need no permutation.
/// </summary>
public sealed record GgufNames(string Architecture, bool PermuteQk)
{
    /// <summary>
    /// Per-layer Hugging Face ↔ GGUF names (relative to the layer prefix, without <c>.weight</c>); LLaMA's table by default.
    /// A family whose layers differ (Gemma 3's four norms, Phi-3's fused projections) gives its own.
    /// </summary>
    public IReadOnlyList<(string Hf, string Gguf)> LayerNames { get; init; } = PerLayer;

    /// <summary>
    /// The architecture's own metadata, written before the common keys (which are then not written again): Gemma 3's
    /// window and local rope base, Phi-3's rotary dimension, SmolLM3's no-rope step.
    /// </summary>
    public Action<GgufWriter, ModelConfig>? WriteMetadata { get; init; }

    /// <summary>When true the family's <see cref="WriteMetadata"/>/<see cref="ExtraTensors"/> carry rope scaling and the exporter's llama/linear handling is skipped.</summary>
    public bool OwnsRopeScaling { get; init; }

    /// <summary>Tensors llama.cpp needs that no checkpoint stores (Phi-3's <c>rope_factors_long/short</c>): name and 1-D float32 values.</summary>
    public Func<ModelConfig, IReadOnlyList<(string Name, float[] Values)>>? ExtraTensors { get; init; }

    /// <summary>A change of a weight's values on its way to GGUF (Gemma's norms: llama.cpp multiplies by w where transformers uses 1 + w); null = none.</summary>
    public Func<string, float[], float[]>? ToGgufValues { get; init; }

    /// <summary>The inverse of <see cref="ToGgufValues"/>, for <c>reslora convert gguf</c>.</summary>
    public Func<string, float[], float[]>? FromGgufValues { get; init; }

    private static readonly (string Hf, string Gguf)[] Global =
    {
        ("model.embed_tokens", "token_embd"),
        ("model.norm", "output_norm"),
        ("lm_head", "output"),
    };

    /// <summary>LLaMA's per-layer names (also Mistral, Qwen2, Qwen3, SmolLM3).</summary>
    public static readonly (string Hf, string Gguf)[] PerLayer =
    {
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    };

    private static readonly Regex HfLayer = new(@"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$", RegexOptions.CultureInvariant);
    private static readonly Regex GgufLayer = new(@"^blk\.(\d+)\.(.+)\.(weight|bias)$", RegexOptions.CultureInvariant);
    private static readonly Regex Plain = new(@"^(.+)\.(weight|bias)$", RegexOptions.CultureInvariant);

    /// <summary>The GGUF name of a Hugging Face weight, or null when the architecture has no such tensor.</summary>
    public string? ToGguf(string hfName)
    {
        var m = HfLayer.Match(hfName);
        if (m.Success)
        {
            var hit = LayerNames.FirstOrDefault(p => p.Hf == m.Groups[2].Value);
            return hit.Gguf is null ? null : $"blk.{m.Groups[1].Value}.{hit.Gguf}.{m.Groups[3].Value}";
        }
        var g = Plain.Match(hfName);
        if (!g.Success) return null;
        var top = Global.FirstOrDefault(p => p.Hf == g.Groups[1].Value);
        return top.Gguf is null ? null : $"{top.Gguf}.{g.Groups[2].Value}";
    }

    /// <summary>The Hugging Face name of a GGUF tensor, or null for a tensor this mapping does not know.</summary>
    public string? ToHf(string ggufName)
    {
        var m = GgufLayer.Match(ggufName);
        if (m.Success)
        {
            var hit = LayerNames.FirstOrDefault(p => p.Gguf == m.Groups[2].Value);
            return hit.Hf is null ? null : $"model.layers.{m.Groups[1].Value}.{hit.Hf}.{m.Groups[3].Value}";
        }
        var g = Plain.Match(ggufName);
        if (!g.Success) return null;
        var top = Global.FirstOrDefault(p => p.Gguf == g.Groups[1].Value);
        return top.Hf is null ? null : $"{top.Hf}.{g.Groups[2].Value}";
    }

    /// <summary>Whether <paramref name="hfName"/>'s rows are permuted for this architecture: q and k projection weights (and biases) under <see cref="PermuteQk"/>.</summary>
    public int? PermuteHeads(string hfName, ModelConfig c)
    {
        if (!PermuteQk) return null;
        if (hfName.Contains(".self_attn.q_proj.", StringComparison.Ordinal)) return c.NumAttentionHeads;
        if (hfName.Contains(".self_attn.k_proj.", StringComparison.Ordinal)) return c.NumKeyValueHeads;
        return null;
    }

    /// <summary>
    /// convert_hf_to_gguf's permute: rows of a q/k projection (heads × head_dim, …) reordered so that within each head the
    /// rotate-half pairs (i, i + d/2) become interleaved pairs (2i, 2i + 1). <paramref name="inverse"/> undoes it.
    /// </summary>
    public static float[] Permute(float[] w, long[] shape, int heads, bool inverse = false)
    {
        long rows = shape[0], cols = shape.Length > 1 ? shape[1] : 1;
        long headDim = rows / heads, half = headDim / 2;
        var y = new float[w.Length];
        for (long h = 0; h < heads; h++)
            for (long i = 0; i < half; i++)
                for (long j = 0; j < 2; j++)
                {
                    long hfRow = h * headDim + j * half + i;   // rotate-half order: [first halves..., second halves...]
                    long ggRow = h * headDim + 2 * i + j;      // interleaved order
                    long from = inverse ? ggRow : hfRow, to = inverse ? hfRow : ggRow;
                    Array.Copy(w, from * cols, y, to * cols, cols);
                }
        return y;
    }
}
