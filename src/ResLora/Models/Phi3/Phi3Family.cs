namespace ResLora.Models.Phi3;

/// <summary>
/// Phi-3 and Phi-4-mini (<c>model_type: phi3</c>, Phi3ForCausalLM): the LLaMA-style pre-norm block with fused projections
/// (<c>self_attn.qkv_proj</c>, <c>mlp.gate_up_proj</c>), partial rotary (<c>partial_rotary_factor</c>: only the first
/// int(head_dim · factor) dims of each head rotate), LongRoPE (<c>rope_scaling.type: longrope</c>, older <c>su</c>), the
/// config's <c>sliding_window</c> on every layer, and tied embeddings where the config says so.
/// </summary>
public sealed class Phi3Family : ICausalLMFamily
{
    public static Phi3Family Instance { get; } = new();

    private Phi3Family()
    {
    }

    public string Name => "phi3";
    public IReadOnlyList<string> ModelTypes { get; } = new[] { "phi3" };
    public ModelKind Kind => ModelKind.CausalLM;

    /// <summary>PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["phi3"].</summary>
    public IReadOnlyList<string> DefaultTargets { get; } = new[] { "qkv_proj", "o_proj", "gate_up_proj", "down_proj" };

    /// <summary>One reader per norm (the fused projection), the same residual writers as LLaMA.</summary>
    public DecoderLayout Layout { get; } = new()
    {
        NormReaders = new[] { ("input_layernorm", new[] { "self_attn.qkv_proj" }), ("post_attention_layernorm", new[] { "mlp.gate_up_proj" }) },
        InputGroups = new[] { new[] { "self_attn.qkv_proj" }, new[] { "self_attn.o_proj" }, new[] { "mlp.gate_up_proj" }, new[] { "mlp.down_proj" } },
    };

    /// <summary>The rotated dims of each head: int(head_dim · partial_rotary_factor), as transformers' rope init computes it.</summary>
    public static int RotaryDim(ModelConfig c, string source = "config.json")
    {
        double f = c.Extra<double?>("partial_rotary_factor", source) ?? 1.0;
        if (!(f > 0 && f <= 1))
            throw new UserInputException($"{source}: 'partial_rotary_factor' must be in (0, 1], got {f}.");
        int dim = (int)(c.HeadDim * f);
        if (dim < 2 || dim % 2 != 0)
            throw new UserInputException($"{source}: 'partial_rotary_factor' {f} gives {dim} rotary dims of head_dim {c.HeadDim}; it must give an even number ≥ 2.");
        return dim;
    }

    public void CheckConfig(ModelConfig config, string source)
    {
        config.RequireSilu(source);
        if (config.RopeScaling is { } rs && rs.Kind == "yarn")
            throw new UserInputException($"{source}: 'rope_scaling.type' 'yarn' is an old Phi-3 name that transformers reads as longrope while llama.cpp's converter scales attention the YaRN way; set it to 'longrope' (with short_factor/long_factor).");
        config.RequireRopeKinds(source, "default", "longrope");
        if (config.AttentionBias || config.MlpBias)
            throw new UserInputException($"{source}: Phi-3 has no projection biases; remove 'attention_bias'/'mlp_bias' or set them to false.");
        if (config.SlidingWindow is int w && w <= 0)
            throw new UserInputException($"{source}: 'sliding_window' must be a positive number of tokens or null, got {w}.");
        int dim = RotaryDim(config, source);
        if (config.RopeScaling?.Kind == "longrope") Rotary.LongRopeParameters(config, dim, source);
    }

    public GgufNames Gguf(ModelConfig config) => Phi3Gguf.Names;

    public IReadOnlyDictionary<string, long[]> ExpectedWeights(ModelConfig config) => Phi3ForCausalLM.ExpectedWeights(config);

    public CausalLM Create(ModelConfig config, ILinearFactory? factory, ScalarType dtype, Device device) =>
        new Phi3ForCausalLM(this, config, factory, dtype, device);

    public IReadOnlyList<Rotary> CreateRotaries(ModelConfig config, Device device) => new[] { new Rotary(config, device, RotaryDim(config)) };
}
