using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;

namespace ResLora.Adapters;

/// <summary>
/// Reads and writes adapter_config.json (peft-format.md §2.2): dispatch on peft_type through <see cref="AdapterMethods"/>,
/// unknown fields become warnings, PEFT fields this library does not implement are accepted only at their default.
/// </summary>
public static class AdapterConfigJson
{
    private static readonly JsonSerializerOptions Options = new()
    {
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        TypeInfoResolver = new DefaultJsonTypeInfoResolver(),
    };

    /// <summary>
    /// PEFT fields every saved config carries that select features not implemented here: accepted (and dropped
    /// silently) at the value PEFT writes by default, refused otherwise; written back with that value.
    /// </summary>
    private static readonly (string Field, JsonNode? Default, Func<JsonNode?, bool> IsDefault, string Fix)[] DefaultOnlyFields =
    {
        ("bias", JsonValue.Create("none"), v => v is null || (v is JsonValue s && s.TryGetValue<string>(out var b) && b == "none"),
            "only \"none\" is supported (base biases stay frozen); \"all\"/\"lora_only\" are not implemented"),
        ("fan_in_fan_out", JsonValue.Create(false), v => v is null || (v is JsonValue s && s.TryGetValue<bool>(out var b) && !b),
            "LLaMA projections are nn.Linear with (out, in) weights; set it to false"),
        ("lora_bias", JsonValue.Create(false), v => v is null || (v is JsonValue s && s.TryGetValue<bool>(out var b) && !b),
            "a bias on lora_B is not supported; set it to false"),
    };

    /// <summary>Default-only fields that only the low-rank configs have (PEFT's IA3Config has fan_in_fan_out, not these).</summary>
    private static readonly HashSet<string> LowRankOnlyFields = new(StringComparer.Ordinal) { "bias", "lora_bias" };

    /// <summary>Parses a config; fields unknown to the config record are dropped and reported in <c>warnings</c> (PEFT PR #2038 behaviour).</summary>
    public static (AdapterConfigBase Config, IReadOnlyList<string> Warnings) Parse(string json, string source = "adapter_config.json")
    {
        JsonObject obj;
        try
        {
            obj = JsonNode.Parse(json) as JsonObject ?? throw new UserInputException($"{source}: the top level must be a JSON object.");
        }
        catch (JsonException e)
        {
            throw new UserInputException($"{source}: not valid JSON ({e.Message}).", e);
        }
        if (!obj.TryGetPropertyValue("peft_type", out var pt) || pt is not JsonValue ptv || !ptv.TryGetValue<string>(out var peftType))
            throw new UserInputException($"{source}: field 'peft_type' is missing or not a string; it is the one key PEFT requires (e.g. \"LORA\").");
        Type type;
        try { type = AdapterMethods.ForPeftType(peftType).ConfigType; }
        catch (UserInputException e) { throw new UserInputException($"{source}: {e.Message}", e); }

        var known = KnownFields(type);
        foreach (var (field, _, isDefault, fix) in DefaultOnlyFields)
        {
            if (known.Contains(field) || !obj.TryGetPropertyValue(field, out var v)) continue;
            if (!isDefault(v)) throw new UserInputException($"{source}: adapter config field '{field}' = {v?.ToJsonString() ?? "null"}: {fix}.");
            obj.Remove(field);
        }
        var warnings = new List<string>();
        foreach (var name in obj.Select(p => p.Key).ToList())
        {
            if (known.Contains(name)) continue;
            // A rank-free config (IA3) written before the low-rank fields had their own base carries r, lora_alpha, ...: ignored.
            if (!type.IsAssignableTo(typeof(LowRankConfigBase)) && LowRankConfigBase.LowRankFields.Contains(name)) { obj.Remove(name); continue; }
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
            config = (AdapterConfigBase)(obj.Deserialize(type, Options) ?? throw new UserInputException($"{source}: empty config."));
        }
        catch (JsonException e)
        {
            throw new UserInputException($"{source}: {e.Message}{(e.Path is { } p ? $" (at {p})" : "")}", e);
        }
        try { config.Validate(); }
        catch (UserInputException e) { throw new UserInputException($"{source}: {e.Message}", e); }
        return (config, warnings);
    }

    /// <summary>Serializes with PEFT's conventions: every field present (the default-only ones at their default), keys sorted, indent 2.</summary>
    public static string Serialize(AdapterConfigBase config)
    {
        var node = JsonSerializer.SerializeToNode(config, config.GetType(), Options)!.AsObject();
        foreach (var (field, value, _, _) in DefaultOnlyFields)
            if (!node.ContainsKey(field) && (config is LowRankConfigBase || !LowRankOnlyFields.Contains(field))) node[field] = value?.DeepClone();
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
