namespace ResLora.IO.Gguf;

/// <summary>
/// Encoding and decoding of the ggml types written here, element for element as ggml's reference code
/// (ggml-quants.c <c>quantize_row_q8_0_ref</c>, <c>quantize_row_q4_0_ref</c> and their dequantize twins; ggml.c's
/// fp16 and bf16 conversions): block 32 with an fp16 scale.
/// </summary>
public static class GgmlQuant
{
    /// <summary>Encodes <paramref name="x"/> (a whole number of blocks) as <paramref name="t"/> into <paramref name="dst"/>.</summary>
    public static void Encode(GgmlType t, ReadOnlySpan<float> x, Span<byte> dst)
    {
        switch (t)
        {
            case GgmlType.F32:
                System.Runtime.InteropServices.MemoryMarshal.AsBytes(x).CopyTo(dst);
                break;
            case GgmlType.F16:
                for (int i = 0; i < x.Length; i++) WriteHalf(dst, 2 * i, (Half)x[i]);
                break;
            case GgmlType.BF16:
                for (int i = 0; i < x.Length; i++) System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(dst[(2 * i)..], ToBf16(x[i]));
                break;
            case GgmlType.Q8_0:
                for (int b = 0; b < x.Length / 32; b++) Q8_0Block(x.Slice(32 * b, 32), dst.Slice(34 * b, 34));
                break;
            case GgmlType.Q4_0:
                for (int b = 0; b < x.Length / 32; b++) Q4_0Block(x.Slice(32 * b, 32), dst.Slice(18 * b, 18));
                break;
            default:
                throw new NotSupportedException($"writing {t} is not supported; write F32, F16, BF16, Q8_0 or Q4_0.");
        }
    }

    /// <summary>Decodes <paramref name="src"/> of type <paramref name="t"/> into <paramref name="y"/> (float32).</summary>
    public static void Decode(GgmlType t, ReadOnlySpan<byte> src, Span<float> y)
    {
        switch (t)
        {
            case GgmlType.F32:
                System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(src)[..y.Length].CopyTo(y);
                break;
            case GgmlType.F16:
                for (int i = 0; i < y.Length; i++) y[i] = (float)ReadHalf(src, 2 * i);
                break;
            case GgmlType.BF16:
                for (int i = 0; i < y.Length; i++) y[i] = FromBf16(System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(src[(2 * i)..]));
                break;
            case GgmlType.Q8_0:
                for (int b = 0; b < y.Length / 32; b++)
                {
                    var blk = src.Slice(34 * b, 34);
                    float d = (float)ReadHalf(blk, 0);
                    for (int j = 0; j < 32; j++) y[32 * b + j] = (sbyte)blk[2 + j] * d;
                }
                break;
            case GgmlType.Q4_0:
                for (int b = 0; b < y.Length / 32; b++)
                {
                    var blk = src.Slice(18 * b, 18);
                    float d = (float)ReadHalf(blk, 0);
                    for (int j = 0; j < 16; j++)
                    {
                        y[32 * b + j] = ((blk[2 + j] & 0x0F) - 8) * d;
                        y[32 * b + j + 16] = ((blk[2 + j] >> 4) - 8) * d;
                    }
                }
                break;
            default:
                GgmlKQuants.Decode(t, src, y);
                break;
        }
    }

    /// <summary>Q8_0: d = max|x| / 127 (stored as fp16), q = round(x / d) as int8.</summary>
    private static void Q8_0Block(ReadOnlySpan<float> x, Span<byte> blk)
    {
        float amax = 0;
        foreach (float v in x) amax = Math.Max(amax, Math.Abs(v));
        float d = amax / 127f, id = d != 0 ? 1f / d : 0f;
        WriteHalf(blk, 0, (Half)d);
        for (int j = 0; j < 32; j++) blk[2 + j] = (byte)(sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
    }

    /// <summary>Q4_0: the value of largest magnitude m gives d = m / −8; q = min(15, (int)(x / d + 8.5)), two per byte (j, j + 16).</summary>
    private static void Q4_0Block(ReadOnlySpan<float> x, Span<byte> blk)
    {
        float amax = 0, max = 0;
        foreach (float v in x)
            if (Math.Abs(v) > amax) { amax = Math.Abs(v); max = v; }
        float d = max / -8f, id = d != 0 ? 1f / d : 0f;
        WriteHalf(blk, 0, (Half)d);
        for (int j = 0; j < 16; j++)
        {
            int q0 = Math.Min(15, (int)(sbyte)(x[j] * id + 8.5f));
            int q1 = Math.Min(15, (int)(sbyte)(x[j + 16] * id + 8.5f));
            blk[2 + j] = (byte)(q0 | (q1 << 4));
        }
    }

    internal static Half ReadHalf(ReadOnlySpan<byte> s, int at) => BitConverter.UInt16BitsToHalf(System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(s[at..]));

    private static void WriteHalf(Span<byte> s, int at, Half h) => System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(s[at..], BitConverter.HalfToUInt16Bits(h));

    /// <summary>float32 → bf16 with round-to-nearest-even, NaN kept quiet (ggml's <c>ggml_compute_fp32_to_bf16</c>).</summary>
    internal static ushort ToBf16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7fffffff) > 0x7f800000) return (ushort)((u >> 16) | 64);
        return (ushort)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
    }

    internal static float FromBf16(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);
}
