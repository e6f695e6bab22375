using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;
using ResLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Adapters;

/// <summary>
/// Fields every PEFT adapter config shares (peft-format.md §2.2, §2.3), with PEFT's JSON names and defaults.
/// A method adds a sealed record deriving from this with its own <see cref="PeftType"/> and extra fields, and one
/// line in <see cref="AdapterRegistry"/>.
/// </summary>
public abstract record AdapterConfigBase
{
    /// <summary>PEFT's <c>peft_type</c> ("LORA", ...): the key <see cref="AdapterRegistry"/> dispatches on.</summary>
    [JsonPropertyName("peft_type")] public abstract string PeftType { get; }

    [JsonPropertyName("r")] public int R { get; init; } = 8;
    [JsonPropertyName("lora_alpha")] public double LoraAlpha { get; init; } = 8;
    [JsonPropertyName("lora_dropout")] public double LoraDropout { get; init; }
    [JsonPropertyName("target_modules")] public ModuleTargets? TargetModules { get; init; }
    [JsonPropertyName("exclude_modules")] public ModuleTargets? ExcludeModules { get; init; }
    [JsonPropertyName("rank_pattern")] public Dictionary<string, int> RankPattern { get; init; } = new();
    [JsonPropertyName("alpha_pattern")] public Dictionary<string, double> AlphaPattern { get; init; } = new();
    [JsonPropertyName("bias")] public string Bias { get; init; } = "none";
    [JsonPropertyName("task_type")] public string? TaskType { get; init; } = "CAUSAL_LM";
    [JsonPropertyName("base_model_name_or_path")] public string? BaseModelNameOrPath { get; init; }
    [JsonPropertyName("revision")] public string? Revision { get; init; }
    [JsonPropertyName("inference_mode")] public bool InferenceMode { get; init; }
    [JsonPropertyName("fan_in_fan_out")] public bool FanInFanOut { get; init; }
    [JsonPropertyName("init_lora_weights")] public LoraInit InitLoraWeights { get; init; } = LoraInit.Default;
    [JsonPropertyName("use_rslora")] public bool UseRslora { get; init; }
    [JsonPropertyName("modules_to_save")] public List<string>? ModulesToSave { get; init; }
    /// <summary>Decoder-layer indices to adapt (int or list); null = all. Matched against <see cref="LinearSpec.LayerIndex"/>.</summary>
    [JsonPropertyName("layers_to_transform")][JsonConverter(typeof(IntOrIntListConverter))] public List<int>? LayersToTransform { get; init; }
    /// <summary>Kept for PEFT round-trips; our layer index comes from <see cref="LinearSpec.LayerIndex"/>.</summary>
    [JsonPropertyName("layers_pattern")] public JsonNode? LayersPattern { get; init; }
    [JsonPropertyName("lora_bias")] public bool LoraBias { get; init; }
    [JsonPropertyName("peft_version")] public string? PeftVersion { get; init; }

    /// <summary>Method name as on the command line and in <see cref="IAdapter.Method"/> (lora, dora, ...).</summary>
    /// <summary>The same targets and LoRA hyperparameters as a plain LoRA config (RefLoRA and RoLoRA train LoRA layers).</summary>
    public LoraConfig AsLora() => new()
    {
        R = R,
        LoraAlpha = LoraAlpha,
        LoraDropout = LoraDropout,
        TargetModules = TargetModules,
        ExcludeModules = ExcludeModules,
        RankPattern = RankPattern,
        AlphaPattern = AlphaPattern,
        InitLoraWeights = InitLoraWeights,
        UseRslora = UseRslora,
        LayersToTransform = LayersToTransform,
    };

    /// <summary>The method the layers report (IAdapter.Method); differs from <see cref="Method"/> only for training-time methods on LoRA layers (RefLoRA).</summary>
    [JsonIgnore] public virtual string LayerMethod => Method;

    [JsonIgnore] public abstract string Method { get; }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid field and how to fix it.</summary>
    public virtual void Validate()
    {
        if (R <= 0) throw Bad("r", R, "must be a positive rank, e.g. 8");
        if (!(LoraAlpha > 0) || double.IsInfinity(LoraAlpha)) throw Bad("lora_alpha", LoraAlpha, "must be a positive finite number, e.g. 16");
        if (!(LoraDropout >= 0 && LoraDropout < 1)) throw Bad("lora_dropout", LoraDropout, "must be in [0, 1)");
        if (TargetModules is null) throw Bad("target_modules", "null", "set a list of module names (e.g. [\"q_proj\",\"v_proj\"]), a regex string, or \"all-linear\"");
        TargetModules.Validate("target_modules");
        ExcludeModules?.Validate("exclude_modules");
        if (ExcludeModules is { IsAllLinear: true }) throw Bad("exclude_modules", "all-linear", "\"all-linear\" is only meaningful for target_modules");
        foreach (var (k, v) in RankPattern)
        {
            ModuleTargets.CheckRegex(k, "rank_pattern");
            if (v <= 0) throw Bad($"rank_pattern[\"{k}\"]", v, "must be a positive rank");
        }
        foreach (var (k, v) in AlphaPattern)
        {
            ModuleTargets.CheckRegex(k, "alpha_pattern");
            if (!(v > 0) || double.IsInfinity(v)) throw Bad($"alpha_pattern[\"{k}\"]", v, "must be a positive finite number");
        }
        if (Bias != "none") throw Bad("bias", Bias, "only \"none\" is supported (base biases stay frozen); \"all\"/\"lora_only\" are not implemented");
        if (FanInFanOut) throw Bad("fan_in_fan_out", true, "LLaMA projections are nn.Linear with (out, in) weights; set it to false");
        if (LoraBias) throw Bad("lora_bias", true, "a bias on lora_B is not supported; set it to false");
        if (ModulesToSave is { Count: > 0 }) throw Bad("modules_to_save", string.Join(",", ModulesToSave), "fully trained extra modules are not supported; remove the field or set it to null");
        if (LayersToTransform is { } l && l.Any(i => i < 0)) throw Bad("layers_to_transform", string.Join(",", l), "layer indices must be ≥ 0");
    }

    protected static ArgumentException Bad(string field, object? value, string fix) =>
        new($"adapter config field '{field}' = {value}: {fix}.");
}

/// <summary>PEFT's <c>init_lora_weights</c>: <c>true</c> (Kaiming-uniform A, zero B), <c>"gaussian"</c> (A ~ N(0, 1/r), zero B), <c>false</c> (both random).</summary>
[JsonConverter(typeof(LoraInitConverter))]
public enum LoraInit
{
    Default,
    Gaussian,
    Random,
}

/// <summary>
/// <c>target_modules</c>/<c>exclude_modules</c> (peft-format.md §2.3): either a list of names (a module matches when its path
/// equals a name or ends with "." + name) or a single string, which is a regex that must match the whole path;
/// the string "all-linear" (any case) means every linear inside the decoder layers, never lm_head.
/// </summary>
[JsonConverter(typeof(ModuleTargetsConverter))]
public sealed record ModuleTargets
{
    /// <summary>The regex (or "all-linear") when the JSON value was a string; otherwise null.</summary>
    public string? Pattern { get; }

    /// <summary>The names when the JSON value was a list; otherwise null.</summary>
    public IReadOnlyList<string>? Names { get; }

    private ModuleTargets(string? pattern, IReadOnlyList<string>? names) { Pattern = pattern; Names = names; }

    public static ModuleTargets List(params string[] names) => new(null, names.ToArray());
    public static ModuleTargets Regex(string pattern) => new(pattern, null);
    public static ModuleTargets AllLinear { get; } = new("all-linear", null);

    public bool IsAllLinear => Pattern is { } p && string.Equals(p, "all-linear", StringComparison.OrdinalIgnoreCase);

    /// <summary>PEFT's matching rule for one module path (all-linear: decoder layers only).</summary>
    public bool Matches(LinearSpec spec) => MatchingEntry(spec) is not null;

    /// <summary>The list entry / pattern that matched <paramref name="spec"/>, or null.</summary>
    public string? MatchingEntry(LinearSpec spec)
    {
        if (IsAllLinear) return spec.LayerIndex >= 0 && spec.ModuleType != "lm_head" ? Pattern : null;
        if (Pattern is { } p) return FullMatch(p, spec.Name) ? p : null;
        foreach (var n in Names!)
            if (spec.Name == n || spec.Name.EndsWith("." + n, StringComparison.Ordinal)) return n;
        return null;
    }

    /// <summary>The entries that can each match nothing and should be checked (list names, or the single pattern).</summary>
    public IEnumerable<string> Entries => Names ?? new[] { Pattern! };

    internal void Validate(string field)
    {
        if (Names is { } n)
        {
            if (n.Count == 0) throw new ArgumentException($"adapter config field '{field}' is an empty list: name at least one module (e.g. [\"q_proj\",\"v_proj\"]) or use null.");
            if (n.Any(string.IsNullOrWhiteSpace)) throw new ArgumentException($"adapter config field '{field}' contains an empty module name: remove it.");
        }
        else if (!IsAllLinear) CheckRegex(Pattern!, field);
    }

    internal static void CheckRegex(string pattern, string field)
    {
        try { _ = new System.Text.RegularExpressions.Regex(pattern); }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"adapter config field '{field}': '{pattern}' is not a valid regular expression ({e.Message}); fix the pattern or use a list of names.", e);
        }
    }

    internal static bool FullMatch(string pattern, string text) =>
        System.Text.RegularExpressions.Regex.IsMatch(text, "^(?:" + pattern + ")$", System.Text.RegularExpressions.RegexOptions.CultureInvariant);

    public override string ToString() => Names is { } n ? "[" + string.Join(", ", n) + "]" : $"\"{Pattern}\"";
}

internal sealed class ModuleTargetsConverter : JsonConverter<ModuleTargets>
{
    public override ModuleTargets? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        switch (reader.TokenType)
        {
            case JsonTokenType.Null: return null;
            case JsonTokenType.String: return ModuleTargets.Regex(reader.GetString()!);
            case JsonTokenType.StartArray:
                var names = new List<string>();
                while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
                {
                    if (reader.TokenType != JsonTokenType.String) throw new JsonException($"target_modules/exclude_modules: list entries must be strings, found {reader.TokenType}.");
                    names.Add(reader.GetString()!);
                }
                return ModuleTargets.List(names.ToArray());
            default:
                throw new JsonException($"target_modules/exclude_modules must be a string (regex or \"all-linear\") or a list of strings, found {reader.TokenType}.");
        }
    }

    public override void Write(Utf8JsonWriter writer, ModuleTargets value, JsonSerializerOptions options)
    {
        if (value.Names is { } n)
        {
            writer.WriteStartArray();
            foreach (var s in n) writer.WriteStringValue(s);
            writer.WriteEndArray();
        }
        else writer.WriteStringValue(value.Pattern);
    }
}

internal sealed class LoraInitConverter : JsonConverter<LoraInit>
{
    public override LoraInit Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) => reader.TokenType switch
    {
        JsonTokenType.True => LoraInit.Default,
        JsonTokenType.False => LoraInit.Random,
        JsonTokenType.String when reader.GetString() == "gaussian" => LoraInit.Gaussian,
        JsonTokenType.String => throw new JsonException(
            $"init_lora_weights = \"{reader.GetString()}\" is not supported (data-driven/base-mutating inits such as pissa, olora, loftq, eva, corda are not implemented); use true, false or \"gaussian\"."),
        _ => throw new JsonException($"init_lora_weights must be true, false or \"gaussian\", found {reader.TokenType}."),
    };

    public override void Write(Utf8JsonWriter writer, LoraInit value, JsonSerializerOptions options)
    {
        switch (value)
        {
            case LoraInit.Default: writer.WriteBooleanValue(true); break;
            case LoraInit.Random: writer.WriteBooleanValue(false); break;
            default: writer.WriteStringValue("gaussian"); break;
        }
    }
}

internal sealed class IntOrIntListConverter : JsonConverter<List<int>?>
{
    public override bool HandleNull => true;

    public override List<int>? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.Null) return null;
        if (reader.TokenType == JsonTokenType.Number) return new List<int> { reader.GetInt32() };
        if (reader.TokenType != JsonTokenType.StartArray) throw new JsonException($"layers_to_transform must be an int or a list of ints, found {reader.TokenType}.");
        var l = new List<int>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray) l.Add(reader.GetInt32());
        return l;
    }

    public override void Write(Utf8JsonWriter writer, List<int>? value, JsonSerializerOptions options)
    {
        if (value is null) { writer.WriteNullValue(); return; }
        writer.WriteStartArray();
        foreach (var i in value) writer.WriteNumberValue(i);
        writer.WriteEndArray();
    }
}

/// <summary>One targeted projection with its resolved rank and α (after rank_pattern/alpha_pattern).</summary>
public sealed record AdapterTarget(LinearSpec Spec, int R, double Alpha);

/// <summary>
/// Builds a method's layer for a targeted projection. A builder may also implement <see cref="IForwardLifecycle"/>
/// (ResLoRA's per-forward context); <see cref="AdapterPlan"/> forwards <c>BeginForward</c> to it.
/// </summary>
public interface IAdapterLayerBuilder
{
    /// <summary>Method name (lora, dora, ...).</summary>
    string Method { get; }

    /// <summary>The module returned to the model: owns the frozen base <c>weight</c>/<c>bias</c> and implements <see cref="IAdapter"/>.</summary>
    nn.Module<Tensor, Tensor> Build(AdapterTarget target, ScalarType dtype, Device device);
}

/// <summary>
/// peft_type → config record type + layer builder. Adding a method is one <see cref="Register{TConfig}"/> line in the
/// static constructor (or a call from the method's own code before configs are read).
/// </summary>
public static class AdapterRegistry
{
    private sealed record Entry(Type ConfigType, Func<AdapterConfigBase, Generator?, IAdapterLayerBuilder> Builder);

    private static readonly Dictionary<string, Entry> Entries = new(StringComparer.Ordinal);
    private static readonly object Gate = new();

    static AdapterRegistry()
    {
        Register<LoraConfig>("LORA", (c, g) => new LoraLayerBuilder(c, g));
        Register<ResLoraConfig>("RESLORA", (c, g) => new ResLoraLayerBuilder(c, g));
        Register<RefLoraConfig>("REFLORA", (c, g) => new RefLoraLayerBuilder(c, g));
        Register<RoLoraConfig>("ROLORA", (c, g) => new RoLoraLayerBuilder(c, g));
        Register<LoHaConfig>("LOHA", (c, g) => new LoHaLayerBuilder(c, g));
        Register<LoKrConfig>("LOKR", (c, g) => new LoKrLayerBuilder(c, g));
        Register<AdaLoraConfig>("ADALORA", (c, g) => new AdaLoraLayerBuilder(c, g));
    }

    /// <summary>Registers (or replaces) a method. <paramref name="builder"/> gets the validated config and an optional init generator.</summary>
    public static void Register<TConfig>(string peftType, Func<TConfig, Generator?, IAdapterLayerBuilder> builder) where TConfig : AdapterConfigBase
    {
        lock (Gate) Entries[peftType] = new Entry(typeof(TConfig), (c, g) => builder((TConfig)c, g));
    }

    public static IReadOnlyCollection<string> PeftTypes { get { lock (Gate) return Entries.Keys.ToArray(); } }

    public static Type ConfigType(string peftType) => Get(peftType).ConfigType;

    public static IAdapterLayerBuilder CreateBuilder(AdapterConfigBase config, Generator? generator = null)
    {
        config.Validate();
        var e = Get(config.PeftType);
        if (!e.ConfigType.IsInstanceOfType(config))
            throw new ArgumentException($"peft_type '{config.PeftType}' is registered for {e.ConfigType.Name}, but the config is a {config.GetType().Name}.");
        return e.Builder(config, generator);
    }

    private static Entry Get(string peftType)
    {
        lock (Gate)
        {
            if (Entries.TryGetValue(peftType, out var e)) return e;
            throw new NotSupportedException($"adapter config field 'peft_type' = \"{peftType}\" is not supported; known types: {string.Join(", ", Entries.Keys.OrderBy(k => k, StringComparer.Ordinal))}.");
        }
    }
}

/// <summary>Reads and writes adapter_config.json (peft-format.md §2.2): dispatch on peft_type, unknown fields become warnings.</summary>
public static class AdapterConfigJson
{
    private static readonly JsonSerializerOptions Options = new()
    {
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        TypeInfoResolver = new DefaultJsonTypeInfoResolver(),
    };

    /// <summary>Parses a config; fields unknown to the config record are dropped and reported in <c>warnings</c> (PEFT PR #2038 behaviour).</summary>
    public static (AdapterConfigBase Config, IReadOnlyList<string> Warnings) Parse(string json, string source = "adapter_config.json")
    {
        JsonObject obj;
        try
        {
            obj = JsonNode.Parse(json) as JsonObject ?? throw new InvalidDataException($"{source}: the top level must be a JSON object.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: not valid JSON ({e.Message}).", e);
        }
        if (!obj.TryGetPropertyValue("peft_type", out var pt) || pt is not JsonValue ptv || !ptv.TryGetValue<string>(out var peftType))
            throw new InvalidDataException($"{source}: field 'peft_type' is missing or not a string; it is the one key PEFT requires (e.g. \"LORA\").");
        Type type;
        try { type = AdapterRegistry.ConfigType(peftType); }
        catch (NotSupportedException e) { throw new InvalidDataException($"{source}: {e.Message}", e); }

        var known = KnownFields(type);
        var warnings = new List<string>();
        foreach (var name in obj.Select(p => p.Key).ToList())
        {
            if (known.Contains(name)) continue;
            warnings.Add($"{source}: field '{name}' (= {obj[name]?.ToJsonString() ?? "null"}) is not used by {type.Name} and was ignored.");
            obj.Remove(name);
        }
        obj.Remove("peft_type"); // read-only, fixed by the record type
        // PEFT may write null for fields we hold as non-nullable (e.g. "rank_pattern": null): keep our default instead.
        var nullability = new NullabilityInfoContext();
        foreach (var prop in type.GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            string? name = prop.GetCustomAttribute<JsonPropertyNameAttribute>()?.Name;
            if (name is null || !obj.TryGetPropertyValue(name, out var v) || v is not null) continue;
            if (nullability.Create(prop).WriteState == NullabilityState.NotNull) obj.Remove(name);
        }
        AdapterConfigBase config;
        try
        {
            config = (AdapterConfigBase)(obj.Deserialize(type, Options) ?? throw new InvalidDataException($"{source}: empty config."));
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: {e.Message}{(e.Path is { } p ? $" (at {p})" : "")}", e);
        }
        try { config.Validate(); }
        catch (ArgumentException e) { throw new InvalidDataException($"{source}: {e.Message}", e); }
        return (config, warnings);
    }

    /// <summary>Serializes with PEFT's conventions: every field present, keys sorted, indent 2.</summary>
    public static string Serialize(AdapterConfigBase config)
    {
        var node = JsonSerializer.SerializeToNode(config, config.GetType(), Options)!.AsObject();
        var sorted = new JsonObject();
        foreach (var (k, v) in node.OrderBy(p => p.Key, StringComparer.Ordinal).ToList())
        {
            node.Remove(k);
            sorted[k] = v;
        }
        return sorted.ToJsonString(new JsonSerializerOptions { WriteIndented = true, IndentSize = 2 });
    }

    private static HashSet<string> KnownFields(Type type) =>
        type.GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Select(p => p.GetCustomAttribute<JsonPropertyNameAttribute>()?.Name)
            .Where(n => n is not null)
            .Select(n => n!)
            .ToHashSet(StringComparer.Ordinal);
}
