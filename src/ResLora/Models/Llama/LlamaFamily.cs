namespace ResLora.Models.Llama;

/// <summary>
/// The LLaMA family: <c>llama</c> (Llama 1/2/3, TinyLlama, SmolLM), <c>mistral</c> (with its <c>sliding_window</c>) and
/// <c>qwen2</c> (q/k/v biases; a sliding window only with <c>use_sliding_window</c>, on layers from
/// <c>max_window_layers</c> on, as transformers' Qwen2 does).
/// </summary>
public sealed class LlamaFamily : ICausalLMFamily
{
    public static LlamaFamily Instance { get; } = new();

    private LlamaFamily()
    {
    }

    public string Name => "llama";
    public IReadOnlyList<string> ModelTypes { get; } = new[] { "llama", "mistral", "qwen2" };
    public ModelKind Kind => ModelKind.CausalLM;
    public IReadOnlyList<string> DefaultTargets { get; } = new[] { "q_proj", "v_proj" };
    public DecoderLayout Layout => DecoderLayout.Llama;

    public void CheckConfig(ModelConfig config, string source) => CheckCommon(config, source);

    /// <summary>The checks every LLaMA-style family shares: SwiGLU, the rotary kinds <see cref="Rotary"/> implements, windows.</summary>
    internal static void CheckCommon(ModelConfig config, string source)
    {
        config.RequireSilu(source);
        config.RequireRopeKinds(source, "default", "linear", "llama3");
        CheckWindow(config, source);
    }

    /// <summary>Qwen2 is llama.cpp's <c>qwen2</c> (NeoX rotary, no permutation); Llama and Mistral are its <c>llama</c> (q/k permuted).</summary>
    public GgufNames Gguf(ModelConfig config) => config.ModelType.Equals("qwen2", StringComparison.OrdinalIgnoreCase)
        ? new GgufNames("qwen2", PermuteQk: false)
        : new GgufNames("llama", PermuteQk: true);

    public IReadOnlyDictionary<string, long[]> ExpectedWeights(ModelConfig config) => LlamaForCausalLM.ExpectedWeights(config, VariantOf(config));

    public CausalLM Create(ModelConfig config, ILinearFactory? factory, ScalarType dtype, Device device) =>
        new LlamaForCausalLM(this, VariantOf(config), config, factory, dtype, device);

    private static LlamaVariant VariantOf(ModelConfig c) => new(c.HasQkvBias, HeadNorms: false, layer => WindowOf(c, layer));

    /// <summary>
    /// Layer <paramref name="layer"/>'s sliding window: Mistral's <c>sliding_window</c> on every layer; Qwen2/Qwen3's only
    /// with <c>use_sliding_window</c> and from layer <c>max_window_layers</c> on; none for Llama (which has no such field).
    /// </summary>
    internal static int? WindowOf(ModelConfig c, int layer) => c.ModelType.ToLowerInvariant() switch
    {
        "mistral" => c.SlidingWindow,
        "qwen2" or "qwen3" when c.UseSlidingWindow && layer >= (c.MaxWindowLayers ?? 0) => c.SlidingWindow,
        _ => null,
    };

    /// <summary>A window that is given must be positive.</summary>
    internal static void CheckWindow(ModelConfig c, string source)
    {
        if (c.SlidingWindow is int w && w <= 0)
            throw new UserInputException($"{source}: 'sliding_window' must be a positive number of tokens or null, got {w}.");
        if (c.UseSlidingWindow && c.SlidingWindow is null)
            throw new UserInputException($"{source}: 'use_sliding_window' is true but 'sliding_window' is not set; give the window in tokens or set use_sliding_window to false.");
    }
}
