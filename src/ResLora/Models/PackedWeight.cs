namespace ResLora.Models;

/// <summary>
/// How a projection's frozen base weight is packed (<c>--base-bits</c>): the Quantization layer implements the formats
/// (int8 per output channel, NF4, int4); the model and the adapter layers only see <see cref="PackedWeight"/>.
/// </summary>
public interface IPackedWeightFormat
{
    /// <summary>Short name for messages and reports: <c>int8</c>, <c>nf4</c>, <c>int4</c>.</summary>
    string Name { get; }

    /// <summary>An empty packed (out, in) weight on <paramref name="device"/>; <see cref="PackedWeight.Pack"/> fills it.</summary>
    PackedWeight Create(long outFeatures, long inFeatures, Device device);
}

/// <summary>
/// A frozen base weight W (out, in) stored packed and dequantized row block by row block for every matmul, so that no
/// full-precision copy of the model's weights exists: a forward holds at most one block of one layer's rows in full
/// precision at a time. It is registered as the projection's submodule <c>weight</c>, so its buffers appear under
/// <c>&lt;module&gt;.weight.*</c> (as bitsandbytes serialises <c>weight.absmax</c>, <c>weight.quant_map</c>, ...), and the
/// Hugging Face name <c>&lt;module&gt;.weight</c> is where the loader packs the checkpoint tensor.
/// </summary>
public abstract class PackedWeight : nn.Module
{
    /// <summary>Largest dequantized row block in elements (16 MB in float32).</summary>
    public const long DefaultBlockElements = 1L << 22;

    /// <summary>Creates the module; subclasses register their buffers.</summary>
    protected PackedWeight(string name, long outFeatures, long inFeatures) : base(name)
    {
        if (outFeatures <= 0 || inFeatures <= 0) throw new ArgumentException($"packed weight shape ({outFeatures}, {inFeatures}) must be positive.");
        OutFeatures = outFeatures;
        InFeatures = inFeatures;
    }

    /// <summary>Rows of W.</summary>
    public long OutFeatures { get; }

    /// <summary>Columns of W.</summary>
    public long InFeatures { get; }

    /// <summary>The format's short name (int8, nf4, int4).</summary>
    public abstract string Format { get; }

    /// <summary>Row blocks must start at a multiple of this many rows (a quantization block must not straddle two row blocks).</summary>
    protected virtual long RowMultiple => 1;

    /// <summary>Largest row block in elements; tests lower it to exercise several blocks on tiny layers.</summary>
    internal long BlockElements { get; set; } = DefaultBlockElements;

    /// <summary>Bytes of the packed storage (every buffer).</summary>
    public long StoredBytes => buffers().Sum(b => b.NumberOfElements * b.ElementSize);

    /// <summary>
    /// Replaces the full-precision W (out, in) before it is packed, returning a new tensor: an adapter init that reads W and
    /// leaves a residual in the base (PiSSA, OLoRA, LoftQ) must see W itself, not its quantized copy. Null = pack W as given.
    /// </summary>
    internal Func<Tensor, Tensor>? BeforePack { get; set; }

    /// <summary>Quantizes <paramref name="w"/> (out, in), any float dtype, into this storage, row block by row block.</summary>
    public void Pack(Tensor w)
    {
        if (w.ndim != 2 || w.shape[0] != OutFeatures || w.shape[1] != InFeatures)
            throw new UserInputException($"cannot pack a tensor of shape [{string.Join(", ", w.shape)}] into a ({OutFeatures}, {InFeatures}) {Format} weight.");
        using var _ = torch.no_grad();
        using var replaced = BeforePack?.Invoke(w);
        if (replaced is not null) w = replaced;
        foreach (var (start, count) in RowBlocks())
        {
            using var scope = torch.NewDisposeScope();
            PackRows(start, w.narrow(0, start, count).to(ScalarType.Float32, StorageDevice));
        }
        FinishPack();
    }

    /// <summary>The device the packed buffers live on.</summary>
    private Device StorageDevice => buffers().First().device;

    /// <summary>Quantizes rows [start, start + rows.shape[0]) given in float32 on the storage's device.</summary>
    protected abstract void PackRows(long start, Tensor rows);

    /// <summary>After every row is packed (NF4: the double quantization of the block scales, which needs them all).</summary>
    protected virtual void FinishPack()
    {
    }

    /// <summary>Rows [start, start + count) of W in float32, (count, in); start is a multiple of <see cref="RowMultiple"/>.</summary>
    protected abstract Tensor DequantizeRows32(long start, long count);

    /// <summary>Rows [start, start + count) of W dequantized to <paramref name="dtype"/>, (count, in).</summary>
    public Tensor DequantizeRows(long start, long count, ScalarType dtype)
    {
        if (start % RowMultiple != 0) throw new ArgumentException($"a {Format} row block must start at a multiple of {RowMultiple} rows, not {start}.");
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var w = DequantizeRows32(start, count);
        return scope.MoveToOuter(w.dtype == dtype ? w : w.to_type(dtype));
    }

    /// <summary>The whole W (out, in) in <paramref name="dtype"/>: one layer in full precision (merging, saving, DoRA's ΔW).</summary>
    public Tensor Dequantize(ScalarType dtype) => DequantizeRows(0, OutFeatures, dtype);

    /// <summary>The row blocks a matmul walks: at most <see cref="BlockElements"/> elements each, aligned to <see cref="RowMultiple"/>.</summary>
    public IReadOnlyList<(long Start, long Count)> RowBlocks()
    {
        long rows = Math.Max(1, BlockElements / InFeatures);
        rows = Math.Max(RowMultiple, rows / RowMultiple * RowMultiple);
        var blocks = new List<(long, long)>();
        for (long s = 0; s < OutFeatures; s += rows) blocks.Add((s, Math.Min(rows, OutFeatures - s)));
        return blocks;
    }

    /// <summary>
    /// x Wᵀ (no bias), (..., in) → (..., out), in x's dtype. Gradients flow to x only (W is frozen); the backward pass
    /// dequantizes W again instead of keeping it, which is what keeps a training step from holding every layer's full
    /// weight (bitsandbytes' MatMul4Bit does the same).
    /// </summary>
    public Tensor Linear(Tensor x) =>
        torch.is_grad_enabled() && x.requires_grad ? PackedMatmul.apply(x, this) : MatmulT(x);

    /// <summary>x Wᵀ block by block into one output (..., out).</summary>
    internal Tensor MatmulT(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var blocks = RowBlocks();
        if (blocks.Count == 1) return scope.MoveToOuter(nn.functional.linear(x, DequantizeRows(0, OutFeatures, x.dtype)));
        var shape = x.shape.ToArray();
        shape[^1] = OutFeatures;
        var y = torch.empty(shape, dtype: x.dtype, device: x.device);
        foreach (var (start, count) in blocks)
        {
            using var inner = torch.NewDisposeScope();
            y.narrow(-1, start, count).copy_(nn.functional.linear(x, DequantizeRows(start, count, x.dtype)));
        }
        return scope.MoveToOuter(y);
    }

    /// <summary>gy W = Σ over row blocks gy[..., block] · W[block], (..., out) → (..., in): the input gradient of <see cref="MatmulT"/>.</summary>
    internal Tensor MatmulGrad(Tensor gy)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        Tensor? gx = null;
        foreach (var (start, count) in RowBlocks())
        {
            var part = gy.narrow(-1, start, count).matmul(DequantizeRows(start, count, gy.dtype));
            gx = gx is null ? part : gx.add_(part);
        }
        return scope.MoveToOuter(gx!);
    }

    /// <summary>
    /// Row norms ‖W_r + E_r‖₂ (out) in <paramref name="dtype"/>, block by block: DoRA's weight norm on a packed base.
    /// <paramref name="extraRows"/>(start, count) gives rows of E (count, in) in <paramref name="dtype"/>, or is null.
    /// </summary>
    public Tensor RowNorms(ScalarType dtype, Func<long, long, Tensor>? extraRows)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var parts = new List<Tensor>();
        foreach (var (start, count) in RowBlocks())
        {
            var w = DequantizeRows(start, count, dtype);
            if (extraRows is not null) w = w.add(extraRows(start, count));
            parts.Add(torch.linalg.norm(w, dims: new long[] { 1 }));
        }
        return scope.MoveToOuter(parts.Count == 1 ? parts[0] : torch.cat(parts.ToArray(), 0));
    }
}

/// <summary>
/// The custom autograd function behind <see cref="PackedWeight.Linear"/> (TorchSharp 0.102+'s
/// <c>torch.autograd.SingleTensorFunction</c>): forward y = x Wᵀ and backward gx = gy W, each dequantizing W block by
/// block; nothing but the packed weight's reference is saved for backward.
/// </summary>
internal sealed class PackedMatmul : torch.autograd.SingleTensorFunction<PackedMatmul>
{
    public override string Name => nameof(PackedMatmul);

    public override Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var x = (Tensor)vars[0];
        var w = (PackedWeight)vars[1];
        ctx.save_data("w", w);
        return w.MatmulT(x);
    }

    public override List<Tensor> backward(torch.autograd.AutogradContext ctx, Tensor grad_output)
    {
        var w = (PackedWeight)ctx.get_data("w");
        // One gradient per forward argument: the packed weight is not a tensor and gets none.
        return CustomGradients.Return(grad_output, new List<Tensor> { w.MatmulGrad(grad_output), null! });
    }
}
