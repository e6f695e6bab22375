using TorchSharp.Utils;

namespace ResLora.Models.Llama;

/// <summary>
/// A LLaMA-architecture causal LM (Llama 1/2/3, Mistral, Qwen2, Qwen3, TinyLlama, SmolLM, SmolLM3) with Hugging Face's module names
/// and state-dict keys (<c>model.layers.{i}.self_attn.q_proj.weight</c>). What differs between those families (q/k/v
/// biases, per-head q/k norms, sliding windows, layers without rotary) is a <see cref="LlamaVariant"/> their descriptors choose. Every projection
/// is built through one <see cref="ILinearFactory"/>, which is where adapters are decided.
/// </summary>
public sealed class LlamaForCausalLM : CausalLM
{
    [ComponentName(Name = "model")] private readonly DecoderStack<LlamaDecoderLayer> _model;
    [ComponentName(Name = "lm_head")] private readonly nn.Module<Tensor, Tensor>? _lmHead;
    private readonly IReadOnlyList<IDecoderBlock> _blocks;

    public LlamaForCausalLM(ICausalLMFamily family, LlamaVariant variant, ModelConfig config, ILinearFactory? factory, ScalarType dtype, Device device)
        : base("LlamaForCausalLM", family, config, factory, dtype, device)
    {
        _model = new DecoderStack<LlamaDecoderLayer>(config, i => new LlamaDecoderLayer(config, variant, i, Factory, dtype, device), () => new RmsNorm(config.HiddenSize, config.RmsNormEps, dtype, device), dtype, device);
        // Tied embeddings: lm_head reuses model.embed_tokens.weight and has no module (and no key) of its own.
        _lmHead = CreateLmHead();
        _blocks = _model.Layers.Cast<IDecoderBlock>().ToList();
        RegisterComponents();
    }

    public override Embedding EmbedTokens => _model.EmbedTokens;
    public override IReadOnlyList<IDecoderBlock> Blocks => _blocks;
    protected override nn.Module<Tensor, Tensor> FinalNorm => _model.Norm;
    protected override nn.Module<Tensor, Tensor>? LmHead => _lmHead;

    /// <summary>The base weights of a LLaMA-architecture checkpoint of <paramref name="c"/> in <paramref name="variant"/>.</summary>
    public static IReadOnlyDictionary<string, long[]> ExpectedWeights(ModelConfig c, LlamaVariant variant)
    {
        var d = new Dictionary<string, long[]>(StringComparer.Ordinal);
        long h = c.HiddenSize, qOut = (long)c.NumAttentionHeads * c.HeadDim, kvOut = (long)c.NumKeyValueHeads * c.HeadDim, m = c.IntermediateSize;
        d["model.embed_tokens.weight"] = new[] { (long)c.VocabSize, h };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            d[p + "input_layernorm.weight"] = new[] { h };
            d[p + "self_attn.q_proj.weight"] = new[] { qOut, h };
            d[p + "self_attn.k_proj.weight"] = new[] { kvOut, h };
            d[p + "self_attn.v_proj.weight"] = new[] { kvOut, h };
            d[p + "self_attn.o_proj.weight"] = new[] { h, qOut };
            if (variant.QkvBias)
            {
                d[p + "self_attn.q_proj.bias"] = new[] { qOut };
                d[p + "self_attn.k_proj.bias"] = new[] { kvOut };
                d[p + "self_attn.v_proj.bias"] = new[] { kvOut };
            }
            if (c.AttentionBias) d[p + "self_attn.o_proj.bias"] = new[] { h };
            if (variant.HeadNorms)
            {
                d[p + "self_attn.q_norm.weight"] = new[] { (long)c.HeadDim };
                d[p + "self_attn.k_norm.weight"] = new[] { (long)c.HeadDim };
            }
            d[p + "post_attention_layernorm.weight"] = new[] { h };
            d[p + "mlp.gate_proj.weight"] = new[] { m, h };
            d[p + "mlp.up_proj.weight"] = new[] { m, h };
            d[p + "mlp.down_proj.weight"] = new[] { h, m };
            if (c.MlpBias)
            {
                d[p + "mlp.gate_proj.bias"] = new[] { m };
                d[p + "mlp.up_proj.bias"] = new[] { m };
                d[p + "mlp.down_proj.bias"] = new[] { h };
            }
        }
        d["model.norm.weight"] = new[] { h };
        if (!c.TieWordEmbeddings) d["lm_head.weight"] = new[] { (long)c.VocabSize, h };
        return d;
    }
}

/// <summary>
/// What distinguishes the LLaMA-architecture families: q/k/v biases (Qwen2, or <c>attention_bias</c>), an RMSNorm over
/// each head of q and k before rotary (Qwen3's <c>q_norm</c>/<c>k_norm</c>), each layer's sliding window, and whether a
/// layer applies rotary at all (<see cref="RopeOfLayer"/>: SmolLM3's NoPE layers attend by content only; null = every
/// layer rotates, as in Llama, Mistral, Qwen2 and Qwen3).
/// </summary>
public sealed record LlamaVariant(bool QkvBias, bool HeadNorms, Func<int, int?> WindowOfLayer, Func<int, bool>? RopeOfLayer = null)
{
    /// <summary>Whether layer <paramref name="layer"/> rotates q and k.</summary>
    public bool UsesRope(int layer) => RopeOfLayer?.Invoke(layer) ?? true;
}
