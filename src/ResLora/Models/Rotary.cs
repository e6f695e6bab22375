namespace ResLora.Models;

/// <summary>
/// Rotary position embeddings in Hugging Face's convention (rotate-half: the two halves of each head are the
/// rotated pairs, not interleaved even/odd entries), with the "default", "linear" and "llama3" rope_scaling kinds
/// (transformers' modeling_rope_utils.py). Frequencies are computed in float32 exactly as transformers does, so
/// logits match a Hugging Face reference bit for bit in float32.
/// </summary>
public sealed class Rotary : IDisposable
{
    private readonly Tensor _invFreq; // (headDim/2,) float32

    public Rotary(ModelConfig config, Device device)
    {
        _invFreq = InverseFrequencies(config).to(device).DetachFromDisposeScope();
    }

    /// <summary>inv_freq (headDim/2,) float32 after rope scaling.</summary>
    public static Tensor InverseFrequencies(ModelConfig config)
    {
        using var scope = torch.NewDisposeScope();
        int dim = config.HeadDim;
        // transformers: 1 / base ** (arange(0, dim, 2, int64).float() / dim)
        var exponent = torch.arange(0, dim, 2, dtype: ScalarType.Int64).to_type(ScalarType.Float32) / dim;
        var invFreq = 1.0f / torch.pow(torch.tensor((float)config.RopeTheta), exponent);
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
            default:
                throw new UserInputException($"config.json: rope_scaling kind '{rs!.Kind}' is not supported; supported: default, linear, llama3.");
        }
        return scope.MoveToOuter(invFreq);
    }

    /// <summary>cos and sin (batch, seq, headDim) for the given positions (batch, seq), in <paramref name="dtype"/>.</summary>
    public (Tensor Cos, Tensor Sin) CosSin(Tensor positionIds, ScalarType dtype)
    {
        using var scope = torch.NewDisposeScope();
        // freqs (batch, seq, headDim/2) = positions ⊗ inv_freq, in float32 as transformers does.
        var freqs = positionIds.to_type(ScalarType.Float32).unsqueeze(-1) * _invFreq;
        var emb = torch.cat(new[] { freqs, freqs }, -1);
        var cos = emb.cos().to_type(dtype);
        var sin = emb.sin().to_type(dtype);
        return (scope.MoveToOuter(cos), scope.MoveToOuter(sin));
    }

    /// <summary>x (batch, heads, seq, headDim) rotated: x·cos + rotate_half(x)·sin; cos/sin are (batch, seq, headDim).</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        using var scope = torch.NewDisposeScope();
        long half = x.shape[^1] / 2;
        var x1 = x.narrow(-1, 0, half);
        var x2 = x.narrow(-1, half, half);
        var rotated = torch.cat(new[] { -x2, x1 }, -1);
        var c = cos.unsqueeze(1);
        var s = sin.unsqueeze(1);
        return scope.MoveToOuter(x * c + rotated * s);
    }

    public void Dispose() => _invFreq.Dispose();
}
