namespace ResLora.Models.Gemma3;

/// <summary>
/// Gemma 3 text models (<c>model_type: gemma3_text</c>, <c>Gemma3ForCausalLM</c>: gemma-3-270m, gemma-3-1b and the text
/// stacks of the larger sizes). What sets them apart from LLaMA: Gemma RMSNorms (1 + w), four norms per block (a post-norm
/// on each sublayer's output), q/k head norms, a GELU-tanh gated MLP, embeddings scaled by sqrt(hidden_size), the attention
/// scale query_pre_attn_scalar^-½, and local sliding-window layers with their own rotary base between global ones.
/// </summary>
public sealed class Gemma3Family : ICausalLMFamily
{
    /// <summary>Indices into <see cref="CreateRotaries"/>: global layers' table (rope_theta with rope_scaling) and local layers' (rope_local_base_freq, unscaled).</summary>
    internal const int GlobalRotary = 0, LocalRotary = 1;

    public static Gemma3Family Instance { get; } = new();

    private Gemma3Family()
    {
    }

    public string Name => "gemma3";
    public IReadOnlyList<string> ModelTypes { get; } = new[] { "gemma3_text" };
    public ModelKind Kind => ModelKind.CausalLM;
    public IReadOnlyList<string> DefaultTargets { get; } = new[] { "q_proj", "v_proj" };
    public bool TiesEmbeddingsByDefault => true;

    public DecoderLayout Layout { get; } = new()
    {
        NormReaders = new[]
        {
            ("input_layernorm", new[] { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj" }),
            ("pre_feedforward_layernorm", new[] { "mlp.gate_proj", "mlp.up_proj" }),
        },
        RotationRefusal = "Gemma 3 normalizes the output of o_proj and down_proj (post_attention_layernorm, post_feedforward_layernorm) " +
            "before it joins the residual stream, and its norms scale by (1 + w); a rotation of the residual stream does not pass through " +
            "those norms, so the rotated model would not compute the same function. Use another method (lora, reslora-*, dora, ...).",
    };

    public void CheckConfig(ModelConfig config, string source) => Gemma3Settings.Read(config, source);

    public GgufNames Gguf(ModelConfig config) => Gemma3Gguf.Names;

    public IReadOnlyDictionary<string, long[]> ExpectedWeights(ModelConfig config) => Gemma3ForCausalLM.ExpectedWeights(config);

    public CausalLM Create(ModelConfig config, ILinearFactory? factory, ScalarType dtype, Device device) =>
        new Gemma3ForCausalLM(this, config, factory, dtype, device);

    /// <summary>Global layers: rope_theta with rope_scaling (linear 8 on 4B and up); local layers: rope_local_base_freq, no scaling.</summary>
    public IReadOnlyList<Rotary> CreateRotaries(ModelConfig config, Device device)
    {
        var s = Gemma3Settings.Read(config);
        return new[] { new Rotary(config, device), new Rotary(config with { RopeTheta = s.RopeLocalBase, RopeScaling = null }, device) };
    }

    public string? HintFor(string modelType) => modelType == "gemma3"
        ? "this is a multimodal Gemma 3 checkpoint (Gemma3ForConditionalGeneration, with a vision tower and a text_config); the vision part is not supported. " +
          "Use a text-only checkpoint (model_type gemma3_text, e.g. google/gemma-3-1b-it or gemma-3-270m), or make a text folder: " +
          "config.json = the text_config object with \"model_type\": \"gemma3_text\", and the weights renamed from language_model.model.* (model.language_model.* in newer saves) to model.*, vision weights dropped."
        : null;
}
