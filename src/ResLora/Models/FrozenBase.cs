namespace ResLora.Models;

/// <summary>A projection module that holds a frozen base (<see cref="PlainLinear"/> and every adapter layer).</summary>
public interface IFrozenBaseOwner
{
    /// <summary>The frozen base W (out, in) and b of this projection.</summary>
    FrozenBase Base { get; }
}

/// <summary>
/// The frozen base of one projection, as the plain and the adapter linears call it: W is either a full-precision
/// parameter (<c>weight</c>) or a <see cref="PackedWeight"/> (<c>--base-bits</c>) that is dequantized per matmul; b is a
/// full-precision parameter either way. The owning module keeps the same objects in its fields (they are its state-dict
/// keys); this is the one place that knows both storages, so adapter code asks it for x·Wᵀ, W's row norms or W itself.
/// </summary>
public sealed class FrozenBase
{
    private Tensor? _merged;

    /// <summary>A base of exactly one of <paramref name="weight"/> and <paramref name="packed"/>.</summary>
    public FrozenBase(LinearSpec spec, ScalarType dtype, Parameter? weight, PackedWeight? packed, Parameter? bias)
    {
        if ((weight is null) == (packed is null)) throw new ArgumentException($"{spec.Name}: a frozen base has either a weight parameter or a packed weight.");
        Spec = spec;
        Dtype = dtype;
        Weight = weight;
        Packed = packed;
        Bias = bias;
    }

    /// <summary>The projection.</summary>
    public LinearSpec Spec { get; }

    /// <summary>The model's dtype: what a packed W is dequantized to for the model's own matmuls and merges.</summary>
    public ScalarType Dtype { get; }

    /// <summary>The full-precision W (out, in), or null when packed.</summary>
    public Parameter? Weight { get; }

    /// <summary>The packed W, or null when full precision.</summary>
    public PackedWeight? Packed { get; }

    /// <summary>b (out) or null.</summary>
    public Parameter? Bias { get; }

    /// <summary>True when W is stored packed.</summary>
    public bool IsPacked => Packed is not null;

    /// <summary>The full-precision parameter, or an error naming the projection and <c>--base-bits</c>.</summary>
    public Parameter RequireWeight(string what) => Weight ??
        throw new UserInputException($"{Spec.Name}: {what} needs the full-precision base weight, but it is packed ({Packed!.Format}, --base-bits); run without --base-bits.");

    /// <summary>
    /// x Wᵀ (+ b), in x's dtype: the parameter (converted when x has another dtype, e.g. an adapter's float32 input on a
    /// bf16 base), the packed weight block by block, or, for a packed base that an adapter is merged into, the merged weight.
    /// </summary>
    public Tensor Linear(Tensor x, bool withBias = true)
    {
        using var scope = torch.NewDisposeScope();
        Tensor? b = withBias ? Bias : null;
        if (b is not null && b.dtype != x.dtype) b = b.to_type(x.dtype);
        Tensor y;
        if (Weight is { } w) y = nn.functional.linear(x, w.dtype == x.dtype ? w : w.to_type(x.dtype), b);
        else if (_merged is { } m) y = nn.functional.linear(x, m.dtype == x.dtype ? m : m.to_type(x.dtype), b);
        else
        {
            y = Packed!.Linear(x);
            if (b is not null) y = y.add(b);
        }
        return scope.MoveToOuter(y);
    }

    /// <summary>The live W in float32 (out, in), a new detached tensor; a packed W is dequantized (one layer, transiently).</summary>
    public Tensor Weight32() => Weight is { } w ? w.detach().to_type(ScalarType.Float32) : Packed!.Dequantize(ScalarType.Float32);

    /// <summary>
    /// ‖W_r + E_r‖₂ per row (out) in <paramref name="dtype"/>, where <paramref name="extraRows"/>(start, count) gives rows of
    /// E; a packed W is dequantized block by block. For a full-precision W this is one norm over the whole matrix.
    /// </summary>
    public Tensor RowNorms(ScalarType dtype, Func<long, long, Tensor>? extraRows)
    {
        if (Packed is { } p) return p.RowNorms(dtype, extraRows);
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        Tensor w = Weight!.detach().to_type(dtype);
        if (extraRows is not null) w = w.add(extraRows(0, Spec.OutFeatures));
        return scope.MoveToOuter(torch.linalg.norm(w, dims: new long[] { 1 }));
    }

    /// <summary>W as a checkpoint stores it, in the model's dtype: the parameter, or the packed W dequantized (or merged).</summary>
    public Tensor FullPrecisionWeight() => Weight is { } w ? w : _merged is { } m ? m.alias() : Packed!.Dequantize(Dtype);

    /// <summary>True while a merged full-precision weight stands in for a packed W.</summary>
    public bool HasMergedWeight => _merged is not null;

    /// <summary>A packed base's merge: <paramref name="merged"/> (out, in), owned from now on, replaces W in <see cref="Linear"/>.</summary>
    internal void SetMergedWeight(Tensor merged)
    {
        if (Packed is null) throw new InvalidOperationException($"{Spec.Name}: only a packed base keeps a separate merged weight.");
        _merged?.Dispose();
        _merged = merged;
    }

    /// <summary>Drops the merged weight: the packed W is used again, unchanged (so unmerging is exact).</summary>
    internal void ClearMergedWeight()
    {
        _merged?.Dispose();
        _merged = null;
    }
}
