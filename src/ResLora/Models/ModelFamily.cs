namespace ResLora.Models;

/// <summary>What a model family builds: a causal language model or a sequence encoder (BERT-like).</summary>
public enum ModelKind
{
    CausalLM,
    Encoder,
}

/// <summary>
/// One model family (one folder under <c>Models/</c>, one line in <see cref="ModelFamilies"/>): the <c>model_type</c>s of
/// config.json it accepts and what the rest of the library needs to know about it without naming its classes.
/// </summary>
public interface IModelFamily
{
    /// <summary>The family's name in messages and docs ("llama", "qwen3", "bert").</summary>
    string Name { get; }

    /// <summary>The config.json <c>model_type</c> values it loads (lower case).</summary>
    IReadOnlyList<string> ModelTypes { get; }

    ModelKind Kind { get; }

    /// <summary>The modules adapted when <c>--targets</c> is not given (PEFT's defaults for the architecture).</summary>
    IReadOnlyList<string> DefaultTargets { get; }
}

/// <summary>A family of decoder-only causal LMs: its config checks, its weight layout and its model class.</summary>
public interface ICausalLMFamily : IModelFamily
{
    /// <summary>The checks beyond <see cref="ModelConfig.Validate"/>'s common ones; errors name <paramref name="source"/> and the field.</summary>
    void CheckConfig(ModelConfig config, string source);

    /// <summary>Every base weight a checkpoint of this config stores, by Hugging Face name, with its shape.</summary>
    IReadOnlyDictionary<string, long[]> ExpectedWeights(ModelConfig config);

    /// <summary>Where whole-model transforms (RoLoRA's rotation, quantization groups) find the weights.</summary>
    DecoderLayout Layout { get; }

    /// <summary>The GGUF architecture and tensor names of a model of <paramref name="config"/> (llama.cpp's conversion).</summary>
    GgufNames Gguf(ModelConfig config);

    /// <summary>Builds the model (random weights; <see cref="CausalLM.LoadWeights(IO.HfCheckpoint)"/> fills them), every projection through <paramref name="factory"/>.</summary>
    CausalLM Create(ModelConfig config, ILinearFactory? factory, ScalarType dtype, Device device);

    /// <summary>
    /// The rotary tables the model's blocks index (<see cref="IDecoderBlock.RotaryIndex"/>): one from config.json by default;
    /// Gemma 3 adds its local base for sliding layers, Phi-3 its partial/LongRoPE table.
    /// </summary>
    IReadOnlyList<Rotary> CreateRotaries(ModelConfig config, Device device) => new[] { new Rotary(config, device) };

    /// <summary>
    /// What a config.json without <c>tie_word_embeddings</c> means, as transformers' config class defaults it: false for the
    /// LLaMA-style configs, true for Gemma 3 and SmolLM3 (whose published config.json files do not write the field).
    /// </summary>
    bool TiesEmbeddingsByDefault => false;

    /// <summary>
    /// A message for a related <c>model_type</c> this family does not load (Gemma 3's multimodal <c>gemma3</c> beside its
    /// <c>gemma3_text</c>): what is missing and how to get a loadable folder; null when it has nothing to say.
    /// </summary>
    string? HintFor(string modelType) => null;
}

/// <summary>One decoder block: the unit the stack runs, checkpoints (<c>--grad-checkpoint</c>) and RoLoRA instruments.</summary>
public interface IDecoderBlock
{
    /// <summary>
    /// x (batch, seq, hidden) → (batch, seq, hidden). cos/sin (batch, seq, headDim); mask additive (batch, 1, seq, past+seq),
    /// or null for a plain causal mask without cache; the cache is appended in place when given.
    /// </summary>
    Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, KvCache? cache);

    /// <summary>The block's sliding attention window in tokens (Mistral), or null for full causal attention.</summary>
    int? SlidingWindow { get; }

    /// <summary>Which of the family's rotary tables (<see cref="ICausalLMFamily.CreateRotaries"/>) the block's cos/sin come from.</summary>
    int RotaryIndex => 0;

    /// <summary>An optional transform of the MLP's down projection input (RoLoRA's online Hadamard); null for ordinary models.</summary>
    Func<Tensor, Tensor>? DownProjInputTransform { get; set; }
}

/// <summary>
/// A decoder's weight names as whole-model transforms need them: the embedding, final norm and head, and per layer
/// (<see cref="LayerPrefix"/>) which norm feeds which projections and which projections write to the residual stream.
/// Names are relative to the layer prefix and carry no <c>.weight</c>.
/// </summary>
public sealed record DecoderLayout
{
    public string EmbedTokens { get; init; } = "model.embed_tokens.weight";
    public string FinalNorm { get; init; } = "model.norm.weight";
    public string LmHead { get; init; } = "lm_head.weight";
    public string LayerPrefixFormat { get; init; } = "model.layers.{0}.";

    /// <summary>Each pre-norm and the projections that read its output (a rotation folds the norm into them).</summary>
    public IReadOnlyList<(string Norm, string[] Readers)> NormReaders { get; init; } = new[]
    {
        ("input_layernorm", new[] { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj" }),
        ("post_attention_layernorm", new[] { "mlp.gate_proj", "mlp.up_proj" }),
    };

    /// <summary>The projections whose output is added to the residual stream.</summary>
    public IReadOnlyList<string> ResidualWriters { get; init; } = new[] { "self_attn.o_proj", "mlp.down_proj" };

    /// <summary>The MLP's down projection (RoLoRA's online Hadamard acts on its input).</summary>
    public string DownProj { get; init; } = "mlp.down_proj";

    /// <summary>
    /// Why RoLoRA's rotation cannot be applied to this layout (e.g. Gemma 3's post-norms on the residual writers break the
    /// rotation invariance), or null when it can.
    /// </summary>
    public string? RotationRefusal { get; init; }

    /// <summary>Projections that share one input, in order (activation quantizers are shared within a group).</summary>
    public IReadOnlyList<string[]> InputGroups { get; init; } = new[]
    {
        new[] { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj" }, new[] { "self_attn.o_proj" },
        new[] { "mlp.gate_proj", "mlp.up_proj" }, new[] { "mlp.down_proj" },
    };

    /// <summary>The Hugging Face name prefix of layer <paramref name="i"/> ("model.layers.3.").</summary>
    public string LayerPrefix(int i) => string.Format(System.Globalization.CultureInfo.InvariantCulture, LayerPrefixFormat, i);

    /// <summary>The layout of LLaMA-style checkpoints (Llama, Mistral, Qwen2, Qwen3, SmolLM).</summary>
    public static DecoderLayout Llama { get; } = new();
}
