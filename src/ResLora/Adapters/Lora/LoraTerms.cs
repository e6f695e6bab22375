namespace ResLora.Adapters;

/// <summary>
/// The LoRA and DoRA arithmetic of one projection (peft-format.md §3.1, §3.2), shared by the trainable layers
/// (<see cref="LoraLinear"/>, <see cref="DoraLinear"/>) and the inference-only mixed-batch layer
/// (<see cref="MultiLoraLinear"/>), so the two forwards cannot drift apart. Shapes: x (..., in), A (r, in), B (out, r).
/// </summary>
internal static class LoraTerms
{
    /// <summary>A x, (..., r).</summary>
    public static Tensor Down(Tensor x, Tensor a) => nn.functional.linear(x, a);

    /// <summary>B h for h = A x, (..., out); the scaling s is applied by the caller (as a factor or as an add's alpha).</summary>
    public static Tensor Up(Tensor h, Tensor b) => nn.functional.linear(h, b);

    /// <summary>DoRA's per-row factor c = m / n, n = ‖W₀ + s·BA‖ per output row (detached by the caller), (out).</summary>
    public static Tensor DoraScale(Tensor magnitude, Tensor norms) => magnitude.div(norms);

    /// <summary>
    /// DoRA's term added to W₀x + b: (c − 1) ⊙ W₀x + c ⊙ s·B A x, (..., out); the bias is never rescaled.
    /// </summary>
    /// <param name="c">The per-row factor (out).</param>
    /// <param name="baseOut">W₀x without the bias (..., out), in the adapter dtype.</param>
    /// <param name="up">B A x (..., out), unscaled.</param>
    /// <param name="scaling">s.</param>
    public static Tensor DoraDelta(Tensor c, Tensor baseOut, Tensor up, double scaling) => c.sub(1).mul(baseOut).add(c.mul(up).mul(scaling));
}
