using ResLora.Models.Deberta;
using ResLora.Models.Encoders;
using ResLora.Models.Gemma3;
using ResLora.Models.Llama;
using ResLora.Models.Phi3;
using ResLora.Models.Qwen3;
using ResLora.Models.SmolLM3;

namespace ResLora.Models;

/// <summary>
/// The registry of model families. Adding a family is one folder under <c>Models/</c> (its descriptor and whatever
/// modules it needs beyond the shared ones) and one line in <see cref="BuiltIn"/>; loading, the CLI's checks and
/// messages, and the family contract tests enumerate this list. A config.json whose <c>model_type</c> no family
/// accepts is refused up front, naming the families that exist.
/// </summary>
public static class ModelFamilies
{
    private static readonly IModelFamily[] BuiltIn =
    {
        LlamaFamily.Instance,
        Qwen3Family.Instance,
        SmolLM3Family.Instance,
        Phi3Family.Instance,
        Gemma3Family.Instance,
        BertFamily.Instance,
        DebertaFamily.Instance,
    };

    public static IReadOnlyList<IModelFamily> All => BuiltIn;

    /// <summary>The family that accepts <paramref name="modelType"/> (case-insensitive), or null.</summary>
    public static IModelFamily? Find(string? modelType) =>
        modelType is null ? null : BuiltIn.FirstOrDefault(f => f.ModelTypes.Contains(modelType.Trim().ToLowerInvariant()));

    /// <summary>The encoder model types: "bert, roberta, xlm-roberta, camembert, deberta-v2".</summary>
    public static string SupportedEncoders() => string.Join(", ", BuiltIn.Where(f => f.Kind == ModelKind.Encoder).SelectMany(f => f.ModelTypes));

    /// <summary>"llama, mistral, qwen2, qwen3 (causal LMs); bert, roberta, … (encoders)".</summary>
    public static string Supported()
    {
        string Of(ModelKind k) => string.Join(", ", BuiltIn.Where(f => f.Kind == k).SelectMany(f => f.ModelTypes));
        return $"{Of(ModelKind.CausalLM)} (causal LMs); {Of(ModelKind.Encoder)} (encoders)";
    }

    /// <summary>
    /// The family of the model folder <paramref name="modelDir"/> by its config.json's <c>model_type</c> (absent = llama, as
    /// <see cref="ModelConfig"/> reads it); null when there is no readable config.json or no family accepts the type (the
    /// loader then gives the precise error).
    /// </summary>
    public static IModelFamily? OfFolder(string modelDir)
    {
        string path = Path.Combine(modelDir, "config.json");
        if (!File.Exists(path)) return null;
        try
        {
            using var doc = System.Text.Json.JsonDocument.Parse(IO.BoundedFile.ReadAllText(path, IO.BoundedFile.ConfigLimit, "config.json"));
            if (doc.RootElement.ValueKind != System.Text.Json.JsonValueKind.Object) return null;
            if (!doc.RootElement.TryGetProperty("model_type", out var t)) return Find("llama");
            return t.ValueKind == System.Text.Json.JsonValueKind.String ? Find(t.GetString()) : null;
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or IOException or UserInputException)
        {
            return null;
        }
    }

    /// <summary>The causal-LM family of <paramref name="modelType"/>; an unknown type or an encoder is an error naming <paramref name="source"/>.</summary>
    public static ICausalLMFamily ForCausalLM(string modelType, string source = "config.json")
    {
        var family = Find(modelType);
        if (family is ICausalLMFamily lm) return lm;
        if (family is not null)
            throw new UserInputException($"{source}: model_type '{modelType}' is a {family.Name}-family encoder, not a causal language model; this command needs a decoder ({Supported()}).");
        string key = modelType?.Trim().ToLowerInvariant() ?? "";
        string? hint = BuiltIn.OfType<ICausalLMFamily>().Select(f => f.HintFor(key)).FirstOrDefault(h => h is not null);
        if (hint is not null) throw new UserInputException($"{source}: model_type '{modelType}': {hint} Supported model types: {Supported()}.");
        throw new UserInputException($"{source}: model_type '{modelType}' is not supported; supported model types: {Supported()}.");
    }

    /// <summary>Builds the causal LM of <paramref name="config"/>'s family (random weights).</summary>
    public static CausalLM CreateCausalLM(ModelConfig config, ILinearFactory? factory, ScalarType dtype, Device device) =>
        ForCausalLM(config.ModelType).Create(config, factory, dtype, device);

    /// <summary>The base weights of <paramref name="config"/>'s family, by Hugging Face name, with shapes.</summary>
    public static IReadOnlyDictionary<string, long[]> ExpectedWeights(ModelConfig config) => ForCausalLM(config.ModelType).ExpectedWeights(config);
}
