namespace ResLora.Models.Gemma3;

/// <summary>
/// The Gemma 3 fields of config.json that <see cref="ModelConfig"/> does not model, read and checked once
/// (transformers' Gemma3TextConfig): the attention scale <c>query_pre_attn_scalar</c>, the local rotary base
/// <c>rope_local_base_freq</c> of sliding layers, which layers slide (<c>layer_types</c>, else every layer but each
/// <c>sliding_window_pattern</c>-th), and the MLP activation (<c>hidden_activation</c>).
/// </summary>
internal sealed record Gemma3Settings(double QueryPreAttnScalar, double RopeLocalBase, int SlidingWindowPattern, IReadOnlyList<bool> Sliding, int Window)
{
    public const string SlidingType = "sliding_attention", FullType = "full_attention";

    /// <summary>The activation Gemma 3's MLP runs (transformers' gelu_pytorch_tanh: GELU with the tanh approximation).</summary>
    public const string Activation = "gelu_pytorch_tanh";

    /// <summary>Whether layer <paramref name="layer"/> attends within <see cref="Window"/> (and takes the local rotary base).</summary>
    public bool IsSliding(int layer) => Sliding[layer];

    /// <summary>Reads and checks the Gemma 3 fields of <paramref name="c"/>; every error names <paramref name="source"/> and the field.</summary>
    public static Gemma3Settings Read(ModelConfig c, string source = "config.json")
    {
        UserInputException Bad(string msg) => new($"{source}: {msg}");
        foreach (var field in new[] { "attn_logit_softcapping", "final_logit_softcapping" })
            if (c.Extra<double?>(field, source) is double cap)
                throw Bad($"'{field}' is {cap}; Gemma 3 has no logit soft-capping (that is Gemma 2), so only null is supported. Check that this config.json belongs to a Gemma 3 model.");
        if (c.Extra<bool>("use_bidirectional_attention", source))
            throw Bad("'use_bidirectional_attention' is true (an EmbeddingGemma-style encoder); only the causal Gemma 3 text model is supported.");
        if (c.OtherFields?.ContainsKey("rope_parameters") == true)
            throw Bad("'rope_parameters' (the transformers 5 layout of rope settings) is not read for Gemma 3; write 'rope_theta', 'rope_local_base_freq' and 'rope_scaling' as the published gemma-3 config.json files do.");
        string act = c.Extra<string>("hidden_activation", source)
            ?? (string.Equals(c.HiddenAct, "silu", StringComparison.OrdinalIgnoreCase) ? Activation : c.HiddenAct); // hidden_act absent reads as silu: Gemma's default then
        if (!string.Equals(act, Activation, StringComparison.OrdinalIgnoreCase))
            throw Bad($"'hidden_activation' is '{act}'; Gemma 3's MLP is supported with '{Activation}' only.");
        if (c.MlpBias) throw Bad("'mlp_bias' is true; Gemma 3's MLP projections have no biases.");
        c.RequireRopeKinds(source, "default", "linear");
        if (c.HeadDimRaw is null)
            throw Bad("'head_dim' is missing; Gemma 3 configs give it explicitly (256 for the published models), and it need not be hidden_size / num_attention_heads.");
        if (c.NumKeyValueHeadsRaw is null)
            throw Bad("'num_key_value_heads' is missing; Gemma 3 configs give it explicitly (1 for gemma-3-1b and -270m).");
        if (c.SlidingWindow is not int window)
            throw Bad("'sliding_window' is missing; Gemma 3's local layers attend within it (512 for gemma-3-1b and -270m, 1024 for 4B and up).");
        if (window <= 0) throw Bad($"'sliding_window' must be a positive number of tokens, got {window}.");
        double scalar = c.Extra<double>("query_pre_attn_scalar", source, 256.0);
        if (!(scalar > 0)) throw Bad($"'query_pre_attn_scalar' must be > 0, got {scalar}.");
        double local = c.Extra<double>("rope_local_base_freq", source, 10000.0);
        if (!(local > 0)) throw Bad($"'rope_local_base_freq' must be > 0, got {local}.");
        int pattern = c.Extra<int>("sliding_window_pattern", source, 6);
        if (pattern <= 0) throw Bad($"'sliding_window_pattern' must be a positive integer, got {pattern}.");

        var sliding = new bool[c.NumHiddenLayers];
        var types = c.Extra<string[]>("layer_types", source);
        if (types is not null)
        {
            if (types.Length != c.NumHiddenLayers)
                throw Bad($"'layer_types' has {types.Length} entries but 'num_hidden_layers' is {c.NumHiddenLayers}; give one per layer.");
            for (int i = 0; i < types.Length; i++)
                sliding[i] = types[i] switch
                {
                    SlidingType => true,
                    FullType => false,
                    _ => throw Bad($"'layer_types'[{i}] is '{types[i]}'; each entry must be '{SlidingType}' or '{FullType}'."),
                };
        }
        else
        {
            // transformers (Gemma3TextConfig): layer i is global when (i + 1) is a multiple of the pattern.
            for (int i = 0; i < sliding.Length; i++) sliding[i] = (i + 1) % pattern != 0;
        }
        return new Gemma3Settings(scalar, local, pattern, sliding, window);
    }
}
