using ResLora.Models.Llama;

namespace ResLora.Models.Qwen3;

/// <summary>
/// Qwen3 dense models (<c>model_type: qwen3</c>; Qwen3-0.6B … 32B): the LLaMA architecture with an RMSNorm over each head
/// of q and k before rotary (<c>self_attn.q_norm</c>, <c>self_attn.k_norm</c>, weight of size <c>head_dim</c>), an explicit
/// <c>head_dim</c> that need not be hidden_size / heads, q/k/v biases only with <c>attention_bias</c>, and Qwen2's
/// sliding-window rule. The whole family is this descriptor: the LLaMA modules take the variant.
/// </summary>
public sealed class Qwen3Family : ICausalLMFamily
{
    public static Qwen3Family Instance { get; } = new();

    private Qwen3Family()
    {
    }

    public string Name => "qwen3";
    public IReadOnlyList<string> ModelTypes { get; } = new[] { "qwen3" };
    public ModelKind Kind => ModelKind.CausalLM;
    public IReadOnlyList<string> DefaultTargets { get; } = new[] { "q_proj", "v_proj" };
    public DecoderLayout Layout => DecoderLayout.Llama;

    public void CheckConfig(ModelConfig config, string source) => LlamaFamily.CheckCommon(config, source);

    /// <summary>llama.cpp's <c>qwen3</c> architecture: NeoX rotary (no q/k permutation), <c>attn_q_norm</c>/<c>attn_k_norm</c>.</summary>
    public GgufNames Gguf(ModelConfig config) => new("qwen3", PermuteQk: false);

    public IReadOnlyDictionary<string, long[]> ExpectedWeights(ModelConfig config) => LlamaForCausalLM.ExpectedWeights(config, VariantOf(config));

    public CausalLM Create(ModelConfig config, ILinearFactory? factory, ScalarType dtype, Device device) =>
        new LlamaForCausalLM(this, VariantOf(config), config, factory, dtype, device);

    private static LlamaVariant VariantOf(ModelConfig c) => new(c.AttentionBias, HeadNorms: true, layer => LlamaFamily.WindowOf(c, layer));
}
