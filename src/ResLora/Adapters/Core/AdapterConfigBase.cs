using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using ResLora.IO.Json;
using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>
/// Fields every PEFT adapter config shares (peft-format.md §2.2, §2.3), with PEFT's JSON names and defaults; the
/// low-rank hyperparameters (r, lora_alpha, ...) are in <see cref="LowRankConfigBase"/>, so a config without a rank
/// (IA3) writes none. A method adds a sealed record deriving from one of them with its own <see cref="PeftType"/> and extra fields; its
/// <see cref="AdapterMethod"/> descriptor names the record type so <see cref="AdapterConfigJson"/> can read it.
/// </summary>
public abstract record AdapterConfigBase
{
    /// <summary>PEFT's <c>peft_type</c> ("LORA", ...): the key <see cref="AdapterMethods"/> dispatches on.</summary>
    [JsonPropertyName("peft_type")] public abstract string PeftType { get; }


    [JsonPropertyName("target_modules")] public ModuleTargets? TargetModules { get; init; }
    [JsonPropertyName("exclude_modules")] public ModuleTargets? ExcludeModules { get; init; }
    [JsonPropertyName("task_type")] public string? TaskType { get; init; } = "CAUSAL_LM";
    [JsonPropertyName("base_model_name_or_path")] public string? BaseModelNameOrPath { get; init; }
    [JsonPropertyName("revision")] public string? Revision { get; init; }
    [JsonPropertyName("inference_mode")] public bool InferenceMode { get; init; }
    /// <summary>Decoder-layer indices to adapt (int or list); null = all. Matched against <see cref="LinearSpec.LayerIndex"/>.</summary>
    [JsonPropertyName("layers_to_transform")][JsonConverter(typeof(IntOrIntListConverter))] public IReadOnlyList<int>? LayersToTransform { get; init; }
    /// <summary>Kept for PEFT round-trips; our layer index comes from <see cref="LinearSpec.LayerIndex"/>.</summary>
    [JsonPropertyName("layers_pattern")] public JsonNode? LayersPattern { get; init; }
    [JsonPropertyName("peft_version")] public string? PeftVersion { get; init; }
    /// <summary>
    /// PEFT's <c>modules_to_save</c>: modules trained fully and saved beside the adapter under their own names
    /// (<c>base_model.model.classifier.weight</c>); the classification head of a SEQ_CLS adapter.
    /// </summary>
    [JsonPropertyName("modules_to_save")] public IReadOnlyList<string>? ModulesToSave { get; init; }

    /// <summary>Whether the tensor (or module) path <paramref name="path"/> lies inside one of <see cref="ModulesToSave"/>.</summary>
    public bool IsSavedModule(string path) =>
        ModulesToSave is { } m && m.Any(n => path == n || path.StartsWith(n + ".", StringComparison.Ordinal) || path.Contains("." + n + ".", StringComparison.Ordinal) || path.EndsWith("." + n, StringComparison.Ordinal));

    /// <summary>The method (or named variant) as the command line says it: lora, dora, reslora, reflora-s, ...</summary>
    [JsonIgnore] public abstract string Method { get; }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid field and how to fix it.</summary>
    public virtual void Validate()
    {
        if (TargetModules is null) throw Bad("target_modules", "null", "set a list of module names (e.g. [\"q_proj\",\"v_proj\"]), a regex string, or \"all-linear\"");
        TargetModules.Validate("target_modules");
        ExcludeModules?.Validate("exclude_modules");
        if (ExcludeModules is { IsAllLinear: true }) throw Bad("exclude_modules", "all-linear", "\"all-linear\" is only meaningful for target_modules");
        if (LayersToTransform is { } l && l.Any(i => i < 0)) throw Bad("layers_to_transform", string.Join(",", l), "layer indices must be ≥ 0");
        if (ModulesToSave is { } mts && mts.Any(string.IsNullOrWhiteSpace)) throw Bad("modules_to_save", string.Join(",", mts), "module names must not be empty");
    }

    protected static UserInputException Bad(string field, object? value, string fix) =>
        new($"adapter config field '{field}' = {value}: {fix}.");
}

/// <summary>The kinds of PEFT's <c>init_lora_weights</c> (see <see cref="LoraInit"/>).</summary>
public enum LoraInitKind
{
    /// <summary><c>true</c>: A Kaiming-uniform, B = 0.</summary>
    Default,
    /// <summary><c>"gaussian"</c>: A ~ N(0, 1/r), B = 0.</summary>
    Gaussian,
    /// <summary><c>false</c>: A and B both random (ΔW ≠ 0 at step 0).</summary>
    Random,
    /// <summary><c>"pissa"</c> / <c>"pissa_niter_K"</c>: the top-r singular triplets of W (exact or randomized SVD); the residual stays in the base.</summary>
    Pissa,
    /// <summary><c>"olora"</c>: the first r columns of Q and rows of R of W = QR; the residual stays in the base.</summary>
    Olora,
    /// <summary><c>"loftq"</c>: alternating 4-bit quantization of the base and SVD of the quantization error.</summary>
    Loftq,
}

/// <summary>
/// PEFT's <c>init_lora_weights</c>: <c>true</c> (Kaiming-uniform A, zero B), <c>"gaussian"</c> (A ~ N(0, 1/r), zero B),
/// <c>false</c> (both random), <c>"pissa"</c>, <c>"pissa_niter_K"</c> (<see cref="Niter"/> = K subspace iterations of a
/// randomized SVD), <c>"olora"</c> and <c>"loftq"</c>. The last four read the base weight and change it
/// (<see cref="MutatesBase"/>): the layer is initialised after the checkpoint is loaded. <c>default</c> is <c>true</c>.
/// </summary>
[JsonConverter(typeof(LoraInitConverter))]
public readonly record struct LoraInit(LoraInitKind Kind, int Niter = 0)
{
    public static LoraInit Default => new(LoraInitKind.Default);
    public static LoraInit Gaussian => new(LoraInitKind.Gaussian);
    public static LoraInit Random => new(LoraInitKind.Random);
    public static LoraInit Pissa => new(LoraInitKind.Pissa);
    public static LoraInit Olora => new(LoraInitKind.Olora);
    public static LoraInit Loftq => new(LoraInitKind.Loftq);

    /// <summary>PiSSA through a randomized SVD with <paramref name="niter"/> subspace iterations (PEFT's <c>pissa_niter_K</c>).</summary>
    public static LoraInit PissaNiter(int niter) => new(LoraInitKind.Pissa, niter);

    /// <summary>Whether the init reads W and leaves a residual in the base (PiSSA, OLoRA, LoftQ).</summary>
    public bool MutatesBase => Kind is LoraInitKind.Pissa or LoraInitKind.Olora or LoraInitKind.Loftq;

    /// <summary>The value as PEFT writes it in adapter_config.json, and as <c>--init</c> takes it (true is <c>default</c> there).</summary>
    public string PeftName => Kind switch
    {
        LoraInitKind.Default => "true",
        LoraInitKind.Random => "false",
        LoraInitKind.Gaussian => "gaussian",
        LoraInitKind.Pissa when Niter > 0 => $"pissa_niter_{Niter}",
        LoraInitKind.Pissa => "pissa",
        LoraInitKind.Olora => "olora",
        _ => "loftq",
    };

    public override string ToString() => PeftName;

    /// <summary>The values <see cref="Parse"/> accepts, for messages.</summary>
    public const string Accepted = "default (or true), false, gaussian, pissa, pissa_niter_K (K ≥ 1 subspace iterations), olora, loftq";

    /// <summary>Reads a PEFT string value (<c>"pissa_niter_4"</c>, ...); null when it is not one.</summary>
    public static LoraInit? Parse(string text)
    {
        string t = text.Trim().ToLowerInvariant();
        switch (t)
        {
            case "true" or "default": return Default;
            case "false": return Random;
            case "gaussian": return Gaussian;
            case "pissa": return Pissa;
            case "olora": return Olora;
            case "loftq": return Loftq;
        }
        const string prefix = "pissa_niter_";
        return t.StartsWith(prefix, StringComparison.Ordinal)
            && int.TryParse(t.AsSpan(prefix.Length), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int k) && k >= 1
            ? PissaNiter(k)
            : null;
    }
}

/// <summary>Reads/writes <see cref="LoraInit"/> as PEFT spells it: true, false or a string ("gaussian", "pissa_niter_4", ...).</summary>
internal sealed class LoraInitConverter : JsonConverter<LoraInit>
{
    public override LoraInit Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => reader.TokenType switch
    {
        JsonTokenType.True => LoraInit.Default,
        JsonTokenType.False => LoraInit.Random,
        JsonTokenType.String when reader.GetString() is { } s && s != "true" && s != "false" && s != "default" && LoraInit.Parse(s) is { } init => init,
        JsonTokenType.String => throw new JsonException(
            $"init_lora_weights = \"{reader.GetString()}\" is not supported (eva, corda and orthogonal are not implemented); use true, false, \"gaussian\", \"pissa\", \"pissa_niter_K\", \"olora\" or \"loftq\"."),
        _ => throw new JsonException($"init_lora_weights must be true, false or a string such as \"gaussian\" or \"pissa\", found {reader.TokenType}."),
    };

    public override void Write(Utf8JsonWriter writer, LoraInit value, JsonSerializerOptions options)
    {
        switch (value.Kind)
        {
            case LoraInitKind.Default: writer.WriteBooleanValue(true); break;
            case LoraInitKind.Random: writer.WriteBooleanValue(false); break;
            default: writer.WriteStringValue(value.PeftName); break;
        }
    }
}
