using TorchSharp.Utils;

namespace ResLora.Models.Gemma3;

/// <summary>
/// Gemma 3's text model (<c>Gemma3ForCausalLM</c>, model_type <c>gemma3_text</c>): embeddings scaled by sqrt(hidden_size),
/// sandwich-normed blocks alternating sliding-window (local rotary base) and global attention, Gemma RMSNorms (1 + w),
/// and the head tied to the embeddings unless config.json says otherwise. Every projection through the linear factory.
/// </summary>
public sealed class Gemma3ForCausalLM : CausalLM
{
    [ComponentName(Name = "model")] private readonly DecoderStack<Gemma3DecoderLayer> _model;
    [ComponentName(Name = "lm_head")] private readonly nn.Module<Tensor, Tensor>? _lmHead;
    private readonly IReadOnlyList<IDecoderBlock> _blocks;
    private readonly float _embedScale;

    public Gemma3ForCausalLM(ICausalLMFamily family, ModelConfig config, ILinearFactory? factory, ScalarType dtype, Device device)
        : base("Gemma3ForCausalLM", family, config, factory, dtype, device)
    {
        var settings = Gemma3Settings.Read(config);
        _model = new DecoderStack<Gemma3DecoderLayer>(config, i => new Gemma3DecoderLayer(config, settings, i, Factory, dtype, device), () => new GemmaRmsNorm(config.HiddenSize, config.RmsNormEps, dtype, device), dtype, device);
        _lmHead = CreateLmHead();
        _blocks = _model.Layers.Cast<IDecoderBlock>().ToList();
        // Gemma3TextScaledWordEmbedding: hidden_size ** 0.5 held as a float32 tensor and cast to the weights' dtype.
        _embedScale = (float)Math.Sqrt(config.HiddenSize);
        RegisterComponents();
    }

    public override Embedding EmbedTokens => _model.EmbedTokens;
    public override IReadOnlyList<IDecoderBlock> Blocks => _blocks;
    protected override nn.Module<Tensor, Tensor> FinalNorm => _model.Norm;
    protected override nn.Module<Tensor, Tensor>? LmHead => _lmHead;

    /// <summary>Embeddings (batch, seq, hidden) times sqrt(hidden_size) rounded to the model's dtype, as transformers does.</summary>
    protected override Tensor Embed(Tensor inputIds)
    {
        var e = EmbedTokens.call(inputIds);
        using var scale = torch.tensor(_embedScale, dtype: ScalarType.Float32, device: Device).to_type(Dtype);
        return e * scale;
    }

    /// <summary>The base weights of a Gemma 3 text checkpoint of <paramref name="c"/>, by Hugging Face name, with shapes.</summary>
    public static IReadOnlyDictionary<string, long[]> ExpectedWeights(ModelConfig c)
    {
        var d = new Dictionary<string, long[]>(StringComparer.Ordinal);
        long h = c.HiddenSize, hd = c.HeadDim, qOut = c.NumAttentionHeads * hd, kvOut = c.NumKeyValueHeads * hd, m = c.IntermediateSize;
        d["model.embed_tokens.weight"] = new[] { (long)c.VocabSize, h };
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            d[p + "input_layernorm.weight"] = new[] { h };
            d[p + "self_attn.q_proj.weight"] = new[] { qOut, h };
            d[p + "self_attn.k_proj.weight"] = new[] { kvOut, h };
            d[p + "self_attn.v_proj.weight"] = new[] { kvOut, h };
            d[p + "self_attn.o_proj.weight"] = new[] { h, qOut };
            if (c.AttentionBias)
            {
                d[p + "self_attn.q_proj.bias"] = new[] { qOut };
                d[p + "self_attn.k_proj.bias"] = new[] { kvOut };
                d[p + "self_attn.v_proj.bias"] = new[] { kvOut };
                d[p + "self_attn.o_proj.bias"] = new[] { h };
            }
            d[p + "self_attn.q_norm.weight"] = new[] { hd };
            d[p + "self_attn.k_norm.weight"] = new[] { hd };
            d[p + "post_attention_layernorm.weight"] = new[] { h };
            d[p + "pre_feedforward_layernorm.weight"] = new[] { h };
            d[p + "post_feedforward_layernorm.weight"] = new[] { h };
            d[p + "mlp.gate_proj.weight"] = new[] { m, h };
            d[p + "mlp.up_proj.weight"] = new[] { m, h };
            d[p + "mlp.down_proj.weight"] = new[] { h, m };
        }
        d["model.norm.weight"] = new[] { h };
        if (!c.TieWordEmbeddings) d["lm_head.weight"] = new[] { (long)c.VocabSize, h };
        return d;
    }
}
