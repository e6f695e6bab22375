using ResLora.Models;

namespace ResLora.Quantization;

/// <summary>
/// The packed frozen-base formats of <c>--base-bits</c>: int8 with one absmax scale per output channel, NF4 as QLoRA
/// and bitsandbytes define it (blocks of 64, double-quantized block scales), and 4-bit round-to-nearest in groups of 64.
/// </summary>
public static class PackedFormats
{
    /// <summary>int8, one scale per output row (absmax/127).</summary>
    public static readonly IPackedWeightFormat Int8 = new NamedPackedFormat("int8", (o, i, d) => new Int8Weight(o, i, d));

    /// <summary>NF4 with double quantization (bitsandbytes' <c>quant_type="nf4"</c>, <c>compress_statistics=True</c>).</summary>
    public static readonly IPackedWeightFormat Nf4 = new NamedPackedFormat("nf4", (o, i, d) => new Nf4Weight(o, i, d));

    /// <summary>Symmetric 4-bit round-to-nearest, one absmax/7 scale per group of 64.</summary>
    public static readonly IPackedWeightFormat Int4 = new NamedPackedFormat("int4", (o, i, d) => new Int4Weight(o, i, d));

    /// <summary>The format of a runtime's <c>--base-bits</c>, or null for a full-precision base.</summary>
    public static IPackedWeightFormat? For(BaseWeightStorage storage) => storage switch
    {
        BaseWeightStorage.Int8 => Int8,
        BaseWeightStorage.Nf4 => Nf4,
        BaseWeightStorage.Int4 => Int4,
        _ => null,
    };

    private sealed class NamedPackedFormat(string name, Func<long, long, Device, PackedWeight> create) : IPackedWeightFormat
    {
        public string Name => name;
        public PackedWeight Create(long outFeatures, long inFeatures, Device device) => create(outFeatures, inFeatures, device);
        public override string ToString() => name;
    }
}

/// <summary>int8 per output channel: q = round(w/s) ∈ [−127, 127], s = max|w_row|/127 (<see cref="Quantizers.WeightScales"/> without clip search).</summary>
public sealed class Int8Weight : PackedWeight
{
#pragma warning disable IDE1006 // buffer names are state-dict keys
    private readonly Tensor codes;  // int8 (out, in)
    private readonly Tensor scales; // float32 (out)
#pragma warning restore IDE1006

    /// <summary>Zero storage for an (out, in) weight.</summary>
    public Int8Weight(long outFeatures, long inFeatures, Device device) : base("Int8Weight", outFeatures, inFeatures)
    {
        codes = torch.zeros(new[] { outFeatures, inFeatures }, dtype: ScalarType.Int8, device: device);
        scales = torch.zeros(outFeatures, dtype: ScalarType.Float32, device: device);
        RegisterComponents();
    }

    /// <inheritdoc/>
    public override string Format => "int8";

    /// <summary>The integer codes (out, in), a view.</summary>
    public Tensor Codes => codes;

    /// <summary>One scale per output row, a view.</summary>
    public Tensor Scales => scales;

    protected override void PackRows(long start, Tensor rows)
    {
        var s = Quantizers.WeightScales(rows, 8, clipSearch: false); // (count, 1)
        codes.narrow(0, start, rows.shape[0]).copy_(Quantizers.Codes(rows, s, Quantizers.MaxQ(8)).to_type(ScalarType.Int8));
        scales.narrow(0, start, rows.shape[0]).copy_(s.squeeze(1));
    }

    protected override Tensor DequantizeRows32(long start, long count) =>
        codes.narrow(0, start, count).to_type(ScalarType.Float32).mul(scales.narrow(0, start, count).unsqueeze(1));
}

/// <summary>
/// Storage shared by the 4-bit formats: W flattened row-major, padded with zeros to whole blocks of 64, two 4-bit codes
/// per byte with the first in the high nibble (bitsandbytes' <c>packed = q[::2] &lt;&lt; 4 | q[1::2]</c>).
/// </summary>
public abstract class FourBitWeight : PackedWeight
{
    /// <summary>Elements per quantization block.</summary>
    public const int BlockSize = 64;

    /// <summary>Zero storage; the subclass registers the buffers.</summary>
    protected FourBitWeight(string name, long outFeatures, long inFeatures) : base(name, outFeatures, inFeatures)
    {
        Blocks = (outFeatures * inFeatures + BlockSize - 1) / BlockSize;
    }

    /// <summary>Blocks of 64 (the last one zero-padded).</summary>
    public long Blocks { get; }

    /// <summary>Row blocks start on a quantization-block boundary: rows · in must be a multiple of 64.</summary>
    protected override long RowMultiple => BlockSize / Gcd(InFeatures, BlockSize);

    /// <summary>(first block, blocks) covering rows [start, start + count).</summary>
    protected (long First, long Count) BlockRange(long start, long count)
    {
        long e0 = start * InFeatures, e1 = (start + count) * InFeatures;
        return (e0 / BlockSize, (e1 + BlockSize - 1) / BlockSize - e0 / BlockSize);
    }

    /// <summary>rows (count, in) float32 flattened and zero-padded to whole blocks: (blocks, 64).</summary>
    protected static Tensor AsBlocks(Tensor rows)
    {
        var flat = rows.reshape(-1);
        long pad = (BlockSize - flat.shape[0] % BlockSize) % BlockSize;
        if (pad > 0) flat = torch.cat(new[] { flat, torch.zeros(pad, dtype: flat.dtype, device: flat.device) }, 0);
        return flat.view(-1, BlockSize);
    }

    /// <summary>Codes 0..15 (blocks, 64), integer-valued → bytes (blocks·32), high nibble first.</summary>
    protected static Tensor PackNibbles(Tensor q)
    {
        var pairs = q.to_type(ScalarType.Int64).view(-1, 2);
        return pairs.select(1, 0).mul(16).add(pairs.select(1, 1)).to_type(ScalarType.Byte);
    }

    /// <summary>Bytes → codes 0..15 as int64 (blocks, 64).</summary>
    protected static Tensor UnpackNibbles(Tensor bytes)
    {
        var b = bytes.to_type(ScalarType.Int64);
        return torch.stack(new[] { b.div(16, RoundingMode.floor), b.remainder(16) }, 1).view(-1, BlockSize);
    }

    /// <summary>Dequantized blocks (blocks, 64) → rows (count, in), dropping the padding.</summary>
    protected Tensor ToRows(Tensor blocks, long start, long count)
    {
        long e0 = start * InFeatures;
        long skip = e0 - e0 / BlockSize * BlockSize;
        return blocks.reshape(-1).narrow(0, skip, count * InFeatures).view(count, InFeatures);
    }

    private static long Gcd(long a, long b) => b == 0 ? a : Gcd(b, a % b);
}

/// <summary>
/// NF4 as QLoRA (Dettmers et al. 2023, §3) and bitsandbytes define it: each block of 64 is scaled by its absmax into
/// [−1, 1] and every value replaced by the nearest of the 16 NF4 levels (4-bit index); the block absmaxes are then
/// double-quantized (bitsandbytes' <c>quantize_4bit(compress_statistics=True)</c>): their mean is subtracted and the
/// rest quantized blockwise (256 per block) to 8-bit indices into bitsandbytes' signed dynamic map, with one float32
/// absmax per 256. Dequantization: W = NF4[q] · (dynamic[qa] · absmax₂ + mean).
/// </summary>
public sealed class Nf4Weight : FourBitWeight
{
    /// <summary>Block absmaxes per double-quantization block.</summary>
    public const int NestedBlockSize = 256;

    /// <summary>The 16 NF4 levels (bitsandbytes' <c>get_4bit_type("nf4")</c>), float32.</summary>
    public static readonly float[] CodeBook =
    {
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
        -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
        0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
    };

#pragma warning disable IDE1006 // buffer names are state-dict keys (bitsandbytes' names where it has one)
    private readonly Tensor codes;            // uint8 (blocks·32): two NF4 indices per byte
    private readonly Tensor absmax;           // uint8 (blocks): double-quantized block absmax
    private readonly Tensor nested_absmax;    // float32 (⌈blocks/256⌉)
    private readonly Tensor offset;           // float32 (1): mean of the block absmaxes
    private readonly Tensor quant_map;        // float32 (16): the NF4 levels
    private readonly Tensor nested_quant_map; // float32 (256): the signed dynamic map
#pragma warning restore IDE1006
    private readonly List<Tensor> _exactAbsmax = new(); // while packing: float32 block absmaxes, in row-block order

    /// <summary>Zero storage for an (out, in) weight.</summary>
    public Nf4Weight(long outFeatures, long inFeatures, Device device) : base("Nf4Weight", outFeatures, inFeatures)
    {
        codes = torch.zeros(Blocks * BlockSize / 2, dtype: ScalarType.Byte, device: device);
        absmax = torch.zeros(Blocks, dtype: ScalarType.Byte, device: device);
        nested_absmax = torch.zeros((Blocks + NestedBlockSize - 1) / NestedBlockSize, dtype: ScalarType.Float32, device: device);
        offset = torch.zeros(1, dtype: ScalarType.Float32, device: device);
        quant_map = torch.tensor(CodeBook, device: device);
        nested_quant_map = DynamicMap().to(device);
        RegisterComponents();
    }

    /// <inheritdoc/>
    public override string Format => "nf4";

    /// <summary>The packed 4-bit indices, a view.</summary>
    public Tensor Codes => codes;

    /// <summary>The 8-bit indices of the block absmaxes, a view.</summary>
    public Tensor QuantizedAbsmax => absmax;

    /// <summary>float32 absmax of each group of 256 block absmaxes (after the mean is subtracted), a view.</summary>
    public Tensor NestedAbsmax => nested_absmax;

    /// <summary>The mean subtracted from the block absmaxes, a view (1).</summary>
    public Tensor Offset => offset;

    /// <summary>
    /// bitsandbytes' <c>create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)</c>: for i = 0..6, the 2^i
    /// midpoints of linspace(0.1, 1, 2^i + 1) (float32) times ±10^(i−6), plus 0 and 1; 256 values, sorted.
    /// </summary>
    public static Tensor DynamicMap()
    {
        using var scope = torch.NewDisposeScope();
        var values = new List<float> { 0f, 1f };
        for (int i = 0; i < 7; i++)
        {
            var b = torch.linspace(0.1, 1, (1L << i) + 1, dtype: ScalarType.Float32);
            var means = (b[..^1] + b[1..]) / 2.0;
            double scale = Math.Pow(10, i - 6);
            values.AddRange((means * scale).data<float>().ToArray());
            values.AddRange((means * -scale).data<float>().ToArray());
        }
        values.Sort();
        return scope.MoveToOuter(torch.tensor(values.ToArray()));
    }

    /// <summary>The block absmaxes as dequantization uses them: dynamic[qa] · absmax₂ + mean, float32 (count) from block <paramref name="first"/>.</summary>
    public Tensor BlockAbsmax(long first, long count)
    {
        using var scope = torch.NewDisposeScope();
        var idx = absmax.narrow(0, first, count).to_type(ScalarType.Int64);
        var group = torch.arange(first, first + count, dtype: ScalarType.Int64, device: absmax.device).div(NestedBlockSize, RoundingMode.floor);
        return scope.MoveToOuter(nested_quant_map.index_select(0, idx).mul(nested_absmax.index_select(0, group)).add(offset));
    }

    protected override void PackRows(long start, Tensor rows)
    {
        var (first, _) = BlockRange(start, rows.shape[0]);
        var blocks = AsBlocks(rows);
        var (q, amax) = NearestInBlocks(blocks, quant_map);
        codes.narrow(0, first * BlockSize / 2, blocks.shape[0] * BlockSize / 2).copy_(PackNibbles(q));
        _exactAbsmax.Add(amax.DetachFromDisposeScope());
    }

    protected override void FinishPack()
    {
        using var scope = torch.NewDisposeScope();
        var a = torch.cat(_exactAbsmax.ToArray(), 0); // (blocks)
        foreach (var t in _exactAbsmax) t.Dispose();
        _exactAbsmax.Clear();
        // bitsandbytes: offset = absmax.mean(); quantize_blockwise(absmax − offset, blocksize=256) with the dynamic map.
        var mean = a.mean();
        var centred = a.sub(mean);
        long pad = (NestedBlockSize - Blocks % NestedBlockSize) % NestedBlockSize;
        if (pad > 0) centred = torch.cat(new[] { centred, torch.zeros(pad, dtype: ScalarType.Float32, device: a.device) }, 0);
        var (q2, amax2) = NearestInBlocks(centred.view(-1, NestedBlockSize), nested_quant_map);
        absmax.copy_(q2.reshape(-1).narrow(0, 0, Blocks).to_type(ScalarType.Byte));
        nested_absmax.copy_(amax2);
        offset.copy_(mean.reshape(1));
    }

    protected override Tensor DequantizeRows32(long start, long count)
    {
        var (first, n) = BlockRange(start, count);
        var values = quant_map.index_select(0, UnpackNibbles(codes.narrow(0, first * BlockSize / 2, n * BlockSize / 2)).reshape(-1)).view(n, BlockSize);
        return ToRows(values.mul(BlockAbsmax(first, n).unsqueeze(1)), start, count);
    }

    /// <summary>
    /// Blockwise absmax quantization against a sorted code book, as bitsandbytes' reference kernels: s = clamp(x·(1/absmax),
    /// −1, 1), index = the nearest code value (ties to the lower one); an all-zero block gets scale 0 and maps to 0.
    /// Returns the indices (blocks, size) as int64 and the absmaxes (blocks).
    /// </summary>
    internal static (Tensor Indices, Tensor Absmax) NearestInBlocks(Tensor blocks, Tensor code)
    {
        using var scope = torch.NewDisposeScope();
        var amax = blocks.abs().amax(new long[] { 1 });
        var inv = torch.where(amax.gt(0), amax.reciprocal(), torch.zeros_like(amax));
        var scaled = blocks.mul(inv.unsqueeze(1)).clamp(-1, 1);
        var mid = code[..^1].add(code[1..]).div(2.0); // decision boundaries between neighbouring levels
        var idx = torch.bucketize(scaled, mid);
        return (scope.MoveToOuter(idx), scope.MoveToOuter(amax));
    }
}

/// <summary>
/// Symmetric 4-bit round-to-nearest in groups of 64 consecutive weights (within a row when in is a multiple of 64):
/// q = clamp(round(w/s), −8, 7), s = max|w_group|/7 (<see cref="Quantizers.WeightScales"/> and <see cref="Quantizers.Codes"/>
/// on the (groups, 64) view), stored as q + 8.
/// </summary>
public sealed class Int4Weight : FourBitWeight
{
#pragma warning disable IDE1006 // buffer names are state-dict keys
    private readonly Tensor codes;  // uint8 (groups·32): two (q + 8) per byte
    private readonly Tensor scales; // float32 (groups)
#pragma warning restore IDE1006

    /// <summary>Zero storage for an (out, in) weight.</summary>
    public Int4Weight(long outFeatures, long inFeatures, Device device) : base("Int4Weight", outFeatures, inFeatures)
    {
        codes = torch.zeros(Blocks * BlockSize / 2, dtype: ScalarType.Byte, device: device);
        scales = torch.zeros(Blocks, dtype: ScalarType.Float32, device: device);
        RegisterComponents();
    }

    /// <inheritdoc/>
    public override string Format => "int4";

    /// <summary>One scale per group of 64, a view.</summary>
    public Tensor Scales => scales;

    protected override void PackRows(long start, Tensor rows)
    {
        var (first, _) = BlockRange(start, rows.shape[0]);
        var groups = AsBlocks(rows);
        int maxq = Quantizers.MaxQ(4);
        var s = Quantizers.WeightScales(groups, 4, clipSearch: false); // (groups, 1)
        var q = Quantizers.Codes(groups, s, maxq).add(maxq + 1);     // 0..15
        codes.narrow(0, first * BlockSize / 2, groups.shape[0] * BlockSize / 2).copy_(PackNibbles(q));
        scales.narrow(0, first, groups.shape[0]).copy_(s.squeeze(1));
    }

    protected override Tensor DequantizeRows32(long start, long count)
    {
        var (first, n) = BlockRange(start, count);
        var q = UnpackNibbles(codes.narrow(0, first * BlockSize / 2, n * BlockSize / 2)).to_type(ScalarType.Float32).sub(Quantizers.MaxQ(4) + 1);
        return ToRows(q.mul(scales.narrow(0, first, n).unsqueeze(1)), start, count);
    }
}
