using System.Globalization;
using ResLora.Models.Llama;

namespace ResLora.Models.SmolLM3;

/// <summary>
/// SmolLM3 (<c>model_type: smollm3</c>, SmolLM3ForCausalLM; SmolLM3-3B): the LLaMA architecture with rotary switched off on
/// some layers ("NoPE", modeling_smollm3.py's <c>use_rope</c>). Which layers rotate is <c>no_rope_layers</c>, one int per
/// layer (1 = rotary, 0 = none); without it configuration_smollm3.py derives it from <c>no_rope_layer_interval</c> (default 4):
/// layer i rotates unless (i + 1) is a multiple of the interval. Sliding windows follow <c>layer_types</c>: a layer attends
/// within <c>sliding_window</c> when <c>use_sliding_window</c> is set and its type is <c>sliding_attention</c>; without
/// <c>layer_types</c> the sliding layers are the NoPE ones (configuration_smollm3.py; <c>max_window_layers</c> is not read).
/// Embeddings are tied unless config.json says otherwise (SmolLM3Config's default). The whole family is this descriptor.
/// </summary>
public sealed class SmolLM3Family : ICausalLMFamily
{
    public static SmolLM3Family Instance { get; } = new();

    /// <summary>llama.cpp's <c>smollm3</c> graph skips rotary where (il + 1) % 4 == 0, a constant it does not read from the GGUF.</summary>
    public const int LlamaCppNoRopeStep = 4;

    private SmolLM3Family()
    {
    }

    public string Name => "smollm3";
    public IReadOnlyList<string> ModelTypes { get; } = new[] { "smollm3" };
    public ModelKind Kind => ModelKind.CausalLM;
    public IReadOnlyList<string> DefaultTargets { get; } = new[] { "q_proj", "v_proj" };
    public DecoderLayout Layout => DecoderLayout.Llama;
    public bool TiesEmbeddingsByDefault => true;

    public void CheckConfig(ModelConfig config, string source)
    {
        LlamaFamily.CheckCommon(config, source);
        RopeLayers(config, source);
        LayerTypes(config, source);
    }

    /// <summary>
    /// llama.cpp's <c>smollm3</c> (convert_hf_to_gguf's SmolLM3Model, a LlamaModel: q/k rows permuted for its interleaved
    /// rotary). Its NoPE layers are hard-wired to every 4th and it runs no sliding window, so a config that differs is refused
    /// rather than exported to a file llama.cpp would run differently.
    /// </summary>
    public GgufNames Gguf(ModelConfig config)
    {
        var rope = RopeLayers(config);
        var wrong = Enumerable.Range(0, config.NumHiddenLayers).Where(i => rope[i] != ((i + 1) % LlamaCppNoRopeStep != 0)).ToList();
        if (wrong.Count > 0)
            throw new UserInputException($"config.json: 'no_rope_layers' turns rotary {(rope[wrong[0]] ? "on" : "off")} on layer {wrong[0]}, but llama.cpp's smollm3 architecture has no GGUF key for the NoPE layers and always skips rotary on every {LlamaCppNoRopeStep}th layer (layers 3, 7, 11, …) and only there; the file would run differently in llama.cpp. Only models with no_rope_layer_interval 4 (SmolLM3-3B's pattern) can be exported to GGUF.");
        var sliding = Enumerable.Range(0, config.NumHiddenLayers).Where(i => WindowOf(config, i) is not null).ToList();
        if (sliding.Count > 0)
            throw new UserInputException($"config.json: layer {sliding[0]} attends within 'sliding_window' ({config.SlidingWindow} tokens), but llama.cpp's smollm3 architecture runs full attention on every layer; set use_sliding_window to false to export to GGUF.");
        return new GgufNames("smollm3", PermuteQk: true);
    }

    public IReadOnlyDictionary<string, long[]> ExpectedWeights(ModelConfig config) => LlamaForCausalLM.ExpectedWeights(config, VariantOf(config));

    public CausalLM Create(ModelConfig config, ILinearFactory? factory, ScalarType dtype, Device device) =>
        new LlamaForCausalLM(this, VariantOf(config), config, factory, dtype, device);

    private static LlamaVariant VariantOf(ModelConfig c)
    {
        var rope = RopeLayers(c);
        return new LlamaVariant(c.AttentionBias, HeadNorms: false, layer => WindowOf(c, layer), layer => rope[layer]);
    }

    /// <summary>
    /// Whether each layer rotates: <c>no_rope_layers</c> (0/1 per layer; a longer list is allowed, as transformers reads only
    /// the first num_hidden_layers), else every layer but each <c>no_rope_layer_interval</c>-th.
    /// </summary>
    public static bool[] RopeLayers(ModelConfig c, string source = "config.json")
    {
        int n = c.NumHiddenLayers;
        var list = c.Extra<int[]>("no_rope_layers", source);
        if (list is not null)
        {
            if (list.Length < n)
                throw new UserInputException($"{source}: 'no_rope_layers' has {list.Length} entries but the model has {n} layers (num_hidden_layers); give one 0 or 1 per layer, or remove it to use no_rope_layer_interval.");
            int bad = Array.FindIndex(list, v => v is not (0 or 1));
            if (bad >= 0)
                throw new UserInputException($"{source}: 'no_rope_layers' entry {bad} is {list[bad]}; each entry must be 1 (the layer uses rotary) or 0 (no rotary).");
            return list.Take(n).Select(v => v == 1).ToArray();
        }
        int interval = c.Extra<int?>("no_rope_layer_interval", source) ?? 4;
        if (interval <= 0)
            throw new UserInputException($"{source}: 'no_rope_layer_interval' must be a positive number of layers, got {interval}.");
        return Enumerable.Range(0, n).Select(i => (i + 1) % interval != 0).ToArray();
    }

    /// <summary>Each layer's attention type: <c>layer_types</c>, or sliding exactly on the NoPE layers when a window is in use.</summary>
    private static string[] LayerTypes(ModelConfig c, string source = "config.json")
    {
        int n = c.NumHiddenLayers;
        var types = c.Extra<string[]>("layer_types", source);
        if (types is null)
        {
            var rope = RopeLayers(c, source);
            bool window = c.UseSlidingWindow && c.SlidingWindow is not null;
            return rope.Select(r => window && !r ? Sliding : Full).ToArray();
        }
        if (types.Length < n)
            throw new UserInputException($"{source}: 'layer_types' has {types.Length} entries but the model has {n} layers (num_hidden_layers); give one per layer or remove it.");
        int bad = Array.FindIndex(types, t => t is not (Full or Sliding));
        if (bad >= 0)
            throw new UserInputException(string.Create(CultureInfo.InvariantCulture, $"{source}: 'layer_types' entry {bad} is '{types[bad]}'; SmolLM3 layers are '{Full}' or '{Sliding}'."));
        return types.Take(n).ToArray();
    }

    private const string Full = "full_attention", Sliding = "sliding_attention";

    /// <summary>modeling_smollm3.py: the window applies when use_sliding_window is set and the layer's type is sliding_attention.</summary>
    internal static int? WindowOf(ModelConfig c, int layer) =>
        c.UseSlidingWindow && LayerTypes(c)[layer] == Sliding ? c.SlidingWindow : null;
}
