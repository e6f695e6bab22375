using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using ResLora.Models.Encoders;

namespace ResLora.Models.Deberta;

/// <summary>
/// The DeBERTa-v2/v3 fields of config.json beyond the common encoder ones (transformers' DebertaV2Config, with its
/// defaults), read from <see cref="EncoderConfig.Raw"/> and checked against each other.
/// </summary>
public sealed record DebertaSettings
{
    public bool RelativeAttention { get; init; }

    /// <summary><c>max_relative_positions</c> as used: below 1 it is <c>max_position_embeddings</c>.</summary>
    public int MaxRelativePositions { get; init; }

    /// <summary><c>position_buckets</c>; ≤ 0 means no log buckets (relative positions used as they are).</summary>
    public int PositionBuckets { get; init; }

    public bool C2P { get; init; }
    public bool P2C { get; init; }
    public bool NormRelEmbeddings { get; init; }
    public bool ShareAttKey { get; init; }
    public bool PositionBiasedInput { get; init; } = true;
    public int EmbeddingSize { get; init; }
    public int PoolerHiddenSize { get; init; }
    public string PoolerHiddenAct { get; init; } = "gelu";
    public double PoolerDropout { get; init; }

    /// <summary>Half the rows of <c>rel_embeddings</c>: position_buckets when set, else max_relative_positions.</summary>
    public int AttSpan => PositionBuckets > 0 ? PositionBuckets : MaxRelativePositions;

    /// <summary>1 + the number of relative terms: scores are divided by √(head_dim · this) (DisentangledSelfAttention).</summary>
    public int ScaleFactor => 1 + (C2P ? 1 : 0) + (P2C ? 1 : 0);

    /// <summary>Reads and checks the fields; errors name <paramref name="source"/> and the field.</summary>
    public static DebertaSettings From(EncoderConfig c, string source = "config.json")
    {
        var raw = c.Raw;
        int conv = Int(raw, "conv_kernel_size", source) ?? 0;
        if (conv > 0)
            throw new UserInputException($"{source}: 'conv_kernel_size' is {conv}; the convolution layer of DeBERTa-v2-xlarge/xxlarge is not supported (DeBERTa-v3 models have none).");
        var types = PosAttTypes(raw, source);
        foreach (var t in types)
            if (t is not ("c2p" or "p2c"))
                throw new UserInputException($"{source}: 'pos_att_type' has '{t}'; DeBERTa-v2 knows c2p and p2c (e.g. \"p2c|c2p\").");
        int maxPos = c.MaxPositionEmbeddings;
        int maxRel = Int(raw, "max_relative_positions", source) ?? -1;
        var s = new DebertaSettings
        {
            RelativeAttention = Bool(raw, "relative_attention", source) ?? false,
            MaxRelativePositions = maxRel < 1 ? maxPos : maxRel,
            PositionBuckets = Int(raw, "position_buckets", source) ?? -1,
            C2P = types.Contains("c2p"),
            P2C = types.Contains("p2c"),
            NormRelEmbeddings = (Str(raw, "norm_rel_ebd", source) ?? "none").ToLowerInvariant().Split('|').Select(x => x.Trim()).Contains("layer_norm"),
            ShareAttKey = Bool(raw, "share_att_key", source) ?? false,
            PositionBiasedInput = Bool(raw, "position_biased_input", source) ?? true,
            EmbeddingSize = Int(raw, "embedding_size", source) ?? c.HiddenSize,
            PoolerHiddenSize = Int(raw, "pooler_hidden_size", source) ?? c.HiddenSize,
            PoolerHiddenAct = (Str(raw, "pooler_hidden_act", source) ?? "gelu").ToLowerInvariant(),
            PoolerDropout = Dbl(raw, "pooler_dropout", source) ?? 0,
        };
        if (s.EmbeddingSize <= 0) throw new UserInputException($"{source}: 'embedding_size' must be a positive integer, got {s.EmbeddingSize}.");
        if (s.PoolerHiddenSize != c.HiddenSize)
            throw new UserInputException($"{source}: 'pooler_hidden_size' ({s.PoolerHiddenSize}) differs from 'hidden_size' ({c.HiddenSize}); the classifier reads the pooler's output as hidden_size wide, so they must agree.");
        if (Int(raw, "attention_head_size", source) is { } ahs && ahs * c.NumAttentionHeads != c.HiddenSize)
            throw new UserInputException($"{source}: 'attention_head_size' {ahs} × 'num_attention_heads' {c.NumAttentionHeads} is not 'hidden_size' {c.HiddenSize}; only heads that split hidden_size are supported.");
        if (s.PoolerHiddenAct is not ("gelu" or "gelu_new" or "gelu_pytorch_tanh" or "tanh" or "relu"))
            throw new UserInputException($"{source}: 'pooler_hidden_act' is '{s.PoolerHiddenAct}'; supported: gelu, gelu_new, gelu_pytorch_tanh, tanh, relu.");
        if (!(s.PoolerDropout >= 0 && s.PoolerDropout < 1)) throw new UserInputException($"{source}: 'pooler_dropout' must be in [0, 1), got {s.PoolerDropout}.");
        if (s.RelativeAttention)
        {
            if (s.PositionBuckets > 0 && s.MaxRelativePositions - 1 <= s.PositionBuckets / 2)
                throw new UserInputException($"{source}: 'position_buckets' {s.PositionBuckets} needs 'max_relative_positions' (or max_position_embeddings when it is < 1) above {s.PositionBuckets / 2 + 1}, got {s.MaxRelativePositions}; the log buckets divide by log((max_relative_positions − 1) / (position_buckets / 2)).");
            if (s.PositionBuckets is 1)
                throw new UserInputException($"{source}: 'position_buckets' must be ≥ 2 (or ≤ 0 for none), got 1.");
        }
        if (!s.RelativeAttention && !s.PositionBiasedInput)
            throw new UserInputException($"{source}: 'relative_attention' is false and 'position_biased_input' is false: the model would see no positions at all; set one of them true.");
        return s;
    }

    private static List<string> PosAttTypes(JsonObject raw, string source) => raw["pos_att_type"] switch
    {
        null => new List<string>(),
        JsonValue v when v.TryGetValue<string>(out var str) => str.ToLowerInvariant().Split('|').Select(x => x.Trim()).Where(x => x.Length > 0).ToList(),
        JsonArray a => a.Select(x => x is JsonValue xv && xv.TryGetValue<string>(out var xs) ? xs.Trim().ToLowerInvariant()
            : throw new UserInputException($"{source}: 'pos_att_type' entries must be strings, got {x?.ToJsonString()}.")).ToList(),
        var n => throw new UserInputException($"{source}: 'pos_att_type' must be a string like \"p2c|c2p\" or a list, got {n.ToJsonString()}."),
    };

    private static string? Str(JsonObject o, string field, string source) => o[field] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        var n => throw new UserInputException($"{source}: '{field}' must be a string, got {n.ToJsonString()}."),
    };

    private static bool? Bool(JsonObject o, string field, string source) => o[field] switch
    {
        null => null,
        var n when n.GetValueKind() is JsonValueKind.True or JsonValueKind.False => n.GetValue<bool>(),
        var n => throw new UserInputException($"{source}: '{field}' must be true or false, got {n.ToJsonString()}."),
    };

    private static double? Dbl(JsonObject o, string field, string source) => o[field] switch
    {
        null => null,
        var n when n.GetValueKind() == JsonValueKind.Number => double.Parse(n.ToJsonString(), CultureInfo.InvariantCulture),
        var n => throw new UserInputException($"{source}: '{field}' must be a number, got {n.ToJsonString()}."),
    };

    private static int? Int(JsonObject o, string field, string source) => Dbl(o, field, source) switch
    {
        null => null,
        double d when d == Math.Floor(d) && d >= int.MinValue && d <= int.MaxValue => (int)d,
        _ => throw new UserInputException($"{source}: '{field}' must be an integer, got {o[field]!.ToJsonString()}."),
    };
}
