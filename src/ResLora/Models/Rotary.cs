namespace ResLora.Models;

/// <summary>
/// Rotary position embeddings in Hugging Face's convention (rotate-half: the two halves of the rotated dims are the
/// rotated pairs, not interleaved even/odd entries), with the "default", "linear", "llama3" and "longrope" rope_scaling
/// kinds (transformers' modeling_rope_utils.py). Partial rotary (Phi-4-mini's <c>partial_rotary_factor</c>): the table
/// covers only the first <see cref="Dim"/> dims of each head and <see cref="Apply"/> passes the rest through.
/// Frequencies are computed in float32 exactly as transformers does, so logits match a Hugging Face reference bit for bit
/// in float32.
/// </summary>
public sealed class Rotary : IDisposable
{
    private readonly Tensor _invFreq;      // (dim/2,) float32: the table, or LongRoPE's short-context table
    private readonly Tensor? _longInvFreq; // (dim/2,) float32: LongRoPE's long-context table, else null
    private readonly long _originalMax;    // LongRoPE: a forward reaching past this many positions uses the long table
    private readonly float _scale;         // LongRoPE's attention factor on cos and sin; 1 otherwise

    /// <summary>The rotated dims of each head (head_dim, or int(head_dim · partial_rotary_factor)).</summary>
    public int Dim { get; }

    public Rotary(ModelConfig config, Device device) : this(config, device, config.HeadDim)
    {
    }

    /// <summary>A table over the first <paramref name="rotaryDim"/> dims of each head (even, at most head_dim).</summary>
    public Rotary(ModelConfig config, Device device, int rotaryDim)
    {
        if (rotaryDim <= 0 || rotaryDim % 2 != 0 || rotaryDim > config.HeadDim)
            throw new UserInputException($"config.json: the rotary dimension {rotaryDim} must be even, positive and at most head_dim ({config.HeadDim}); check 'partial_rotary_factor'.");
        Dim = rotaryDim;
        _scale = 1f;
        if (config.RopeScaling?.Kind == "longrope")
        {
            var p = LongRopeParameters(config, rotaryDim);
            _invFreq = LongRopeInverseFrequencies(config, rotaryDim, p.ShortFactor).to(device).DetachFromDisposeScope();
            _longInvFreq = LongRopeInverseFrequencies(config, rotaryDim, p.LongFactor).to(device).DetachFromDisposeScope();
            _originalMax = p.OriginalMaxPositions;
            _scale = (float)p.AttentionFactor;
        }
        else _invFreq = InverseFrequencies(config, rotaryDim).to(device).DetachFromDisposeScope();
    }

    /// <summary>inv_freq (dim/2,) float32 after rope scaling, for a table over <paramref name="rotaryDim"/> rotated dims (default head_dim).</summary>
    public static Tensor InverseFrequencies(ModelConfig config, int? rotaryDim = null)
    {
        using var scope = torch.NewDisposeScope();
        int dim = rotaryDim ?? config.HeadDim;
        // transformers: 1 / base ** (arange(0, dim, 2, int64).float() / dim)
        var invFreq = 1.0f / BasePowers(config, dim);
        var rs = config.RopeScaling;
        switch (rs?.Kind ?? "default")
        {
            case "default":
                break;
            case "linear":
                // Linear scaling divides positions by the factor; dividing the frequencies is the same product.
                invFreq = invFreq / (float)rs!.Factor;
                break;
            case "llama3":
                {
                    // _compute_llama3_parameters: long wavelengths are scaled by 1/factor, short ones kept, and the
                    // band in between interpolated smoothly.
                    double factor = rs!.Factor, low = rs.LowFreqFactor, high = rs.HighFreqFactor;
                    double oldLen = rs.OriginalMaxPositionEmbeddings;
                    double lowFreqWavelen = oldLen / low, highFreqWavelen = oldLen / high;
                    var wavelen = 2 * Math.PI / invFreq;
                    var scaled = torch.where(wavelen > lowFreqWavelen, invFreq / factor, invFreq);
                    var smooth = (oldLen / wavelen - low) / (high - low);
                    var smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
                    var isMedium = (wavelen >= highFreqWavelen).logical_and(wavelen <= lowFreqWavelen);
                    invFreq = torch.where(isMedium, smoothed, scaled).to_type(ScalarType.Float32);
                    break;
                }
            case "longrope":
                invFreq = LongRopeInverseFrequencies(config, dim, LongRopeParameters(config, dim).ShortFactor);
                break;
            default:
                throw new UserInputException($"config.json: rope_scaling kind '{rs!.Kind}' is not supported; supported: default, linear, llama3, longrope.");
        }
        return scope.MoveToOuter(invFreq);
    }

    /// <summary>base^(arange(0, dim, 2)/dim) (dim/2,) float32, as transformers computes it.</summary>
    private static Tensor BasePowers(ModelConfig config, int dim)
    {
        using var scope = torch.NewDisposeScope();
        var exponent = torch.arange(0, dim, 2, dtype: ScalarType.Int64).to_type(ScalarType.Float32) / dim;
        return scope.MoveToOuter(torch.pow(torch.tensor((float)config.RopeTheta), exponent));
    }

    /// <summary>_compute_longrope_parameters: inv_freq = 1 / (ext · base^(arange(0, dim, 2)/dim)), ext the short or long factors.</summary>
    private static Tensor LongRopeInverseFrequencies(ModelConfig config, int dim, IReadOnlyList<double> ext)
    {
        using var scope = torch.NewDisposeScope();
        var e = torch.tensor(ext.Select(x => (float)x).ToArray());
        return scope.MoveToOuter(1.0f / (e * BasePowers(config, dim)));
    }

    /// <summary>LongRoPE's settings of a config (Phi-3 128k, Phi-4-mini), checked.</summary>
    /// <param name="ShortFactor">Per-frequency divisors (dim/2) within the original context.</param>
    /// <param name="LongFactor">Per-frequency divisors (dim/2) beyond it.</param>
    /// <param name="OriginalMaxPositions">The pretraining context: <c>original_max_position_embeddings</c>.</param>
    /// <param name="AttentionFactor">The scale of cos and sin.</param>
    public sealed record LongRope(IReadOnlyList<double> ShortFactor, IReadOnlyList<double> LongFactor, int OriginalMaxPositions, double AttentionFactor);

    /// <summary>
    /// transformers' _compute_longrope_parameters: original_max_position_embeddings from the config root (Phi-3), else from
    /// rope_scaling, else max_position_embeddings; with one given, factor = max_position_embeddings / original, else
    /// rope_scaling.factor; attention_factor as given, else sqrt(1 + ln(factor) / ln(original)) (1 when factor ≤ 1).
    /// Errors name <paramref name="source"/> and the field.
    /// </summary>
    public static LongRope LongRopeParameters(ModelConfig config, int dim, string source = "config.json")
    {
        var rs = config.RopeScaling ?? throw new InvalidOperationException("no rope_scaling");
        int half = dim / 2;
        IReadOnlyList<double> Factors(IReadOnlyList<double>? f, string field)
        {
            if (f is null)
                throw new UserInputException($"{source}: rope_scaling kind longrope needs '{field}' (a list of {half} numbers: one per rotary frequency, rotary dim {dim}).");
            if (f.Count != half)
                throw new UserInputException($"{source}: 'rope_scaling.{field}' has {f.Count} entries; the rotary dimension is {dim}, so it needs {half} (one per frequency).");
            if (f.Any(x => !(x > 0) || double.IsInfinity(x)))
                throw new UserInputException($"{source}: 'rope_scaling.{field}' must hold positive finite numbers.");
            return f;
        }
        var shortF = Factors(rs.ShortFactor, "short_factor");
        var longF = Factors(rs.LongFactor, "long_factor");
        int? root = config.Extra<int?>("original_max_position_embeddings", source);
        int? original = root ?? rs.OriginalMaxPositionEmbeddingsRaw;
        if (original is int o && o <= 0)
            throw new UserInputException($"{source}: 'original_max_position_embeddings' must be a positive number of positions, got {o}.");
        double factor = original is int om ? (double)config.MaxPositionEmbeddings / om : rs.Factor;
        int orig = original ?? config.MaxPositionEmbeddings;
        double attention = rs.AttentionFactor ?? (factor <= 1.0 ? 1.0 : Math.Sqrt(1 + Math.Log(factor) / Math.Log(orig)));
        if (!(attention > 0) || double.IsInfinity(attention))
            throw new UserInputException($"{source}: 'rope_scaling.attention_factor' must be a positive number, got {attention}.");
        return new LongRope(shortF, longF, orig, attention);
    }

    /// <summary>
    /// cos and sin (batch, seq, dim) for the given positions (batch, seq), in <paramref name="dtype"/>. LongRoPE takes the long
    /// table when the forward's sequence (max position + 1) exceeds the original context, as transformers' dynamic
    /// longrope update does per forward (so a KV cache that grows past it mixes short-table keys with long-table ones, as
    /// there), and scales cos and sin by the attention factor.
    /// </summary>
    public (Tensor Cos, Tensor Sin) CosSin(Tensor positionIds, ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        var inv = _invFreq;
        if (_longInvFreq is not null && positionIds.numel() > 0 && positionIds.max().item<long>() + 1 > _originalMax) inv = _longInvFreq;
        // freqs (batch, seq, dim/2) = positions ⊗ inv_freq, in float32 as transformers does.
        var freqs = positionIds.to_type(ScalarType.Float32).unsqueeze(-1) * inv;
        var emb = torch.cat(new[] { freqs, freqs }, -1);
        var cos = emb.cos();
        var sin = emb.sin();
        if (_scale != 1f)
        {
            cos = cos * _scale;
            sin = sin * _scale;
        }
        return (scope.MoveToOuter(cos.to_type(dtype)), scope.MoveToOuter(sin.to_type(dtype)));
    }

    /// <summary>
    /// x (batch, heads, seq, headDim) rotated: x·cos + rotate_half(x)·sin over the first dims cos covers (batch, seq, dim),
    /// the remaining headDim − dim passed through unchanged (transformers' partial rotary in Phi-3's apply_rotary_pos_emb).
    /// </summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = torch.NewDisposeScope();
        long dim = cos.shape[^1], headDim = x.shape[^1];
        var xr = dim == headDim ? x : x.narrow(-1, 0, dim);
        long half = dim / 2;
        var x1 = xr.narrow(-1, 0, half);
        var x2 = xr.narrow(-1, half, half);
        var rotated = torch.cat(new[] { -x2, x1 }, -1);
        var c = cos.unsqueeze(1);
        var s = sin.unsqueeze(1);
        var y = xr * c + rotated * s;
        if (dim != headDim) y = torch.cat(new[] { y, x.narrow(-1, dim, headDim - dim) }, -1);
        return scope.MoveToOuter(y);
    }

    public void Dispose()
    {
        _invFreq.Dispose();
        _longInvFreq?.Dispose();
    }
}
