namespace ResLora.IO.Gguf;

/// <summary>
/// Decoding of the k-quants that Q4_K_M files hold (Q4_K for most matrices, Q6_K for the output and some value
/// projections), as ggml's <c>dequantize_row_q4_K</c> / <c>dequantize_row_q6_K</c>: super-blocks of 256 values.
/// </summary>
internal static class GgmlKQuants
{
    public static void Decode(GgmlType t, ReadOnlySpan<byte> src, Span<float> y)
    {
        switch (t)
        {
            case GgmlType.Q4_K:
                for (int b = 0; b < y.Length / 256; b++) Q4K(src.Slice(144 * b, 144), y.Slice(256 * b, 256));
                break;
            case GgmlType.Q6_K:
                for (int b = 0; b < y.Length / 256; b++) Q6K(src.Slice(210 * b, 210), y.Slice(256 * b, 256));
                break;
            default:
                throw new UserInputException($"ggml type {t} cannot be read yet (readable: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K); convert the file with llama.cpp's llama-quantize to one of them, or use an F16 GGUF.");
        }
    }

    /// <summary>Q4_K: fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins for 8 sub-blocks of 32, 128 bytes of 4-bit values.</summary>
    private static void Q4K(ReadOnlySpan<byte> blk, Span<float> y)
    {
        float d = (float)GgmlQuant.ReadHalf(blk, 0), dmin = (float)GgmlQuant.ReadHalf(blk, 2);
        var scales = blk.Slice(4, 12);
        var q = blk.Slice(16, 128);
        int o = 0, isub = 0;
        for (int j = 0; j < 256; j += 64)
        {
            var (sc1, m1) = ScaleMin(isub, scales);
            var (sc2, m2) = ScaleMin(isub + 1, scales);
            float d1 = d * sc1, mm1 = dmin * m1, d2 = d * sc2, mm2 = dmin * m2;
            for (int l = 0; l < 32; l++) y[o++] = d1 * (q[l] & 0xF) - mm1;
            for (int l = 0; l < 32; l++) y[o++] = d2 * (q[l] >> 4) - mm2;
            q = q[32..];
            isub += 2;
        }
    }

    /// <summary>ggml's get_scale_min_k4: sub-block j's 6-bit scale and min, packed into 12 bytes.</summary>
    private static (int Scale, int Min) ScaleMin(int j, ReadOnlySpan<byte> q) => j < 4
        ? (q[j] & 63, q[j + 4] & 63)
        : ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4));

    /// <summary>Q6_K: 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 int8 scales (one per 16 values), fp16 d.</summary>
    private static void Q6K(ReadOnlySpan<byte> blk, Span<float> y)
    {
        var ql = blk[..128];
        var qh = blk.Slice(128, 64);
        var sc = blk.Slice(192, 16);
        float d = (float)GgmlQuant.ReadHalf(blk, 208);
        for (int n = 0; n < 256; n += 128)
        {
            for (int l = 0; l < 32; l++)
            {
                int isc = l / 16;
                int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[n + l] = d * (sbyte)sc[isc] * q1;
                y[n + l + 32] = d * (sbyte)sc[isc + 2] * q2;
                y[n + l + 64] = d * (sbyte)sc[isc + 4] * q3;
                y[n + l + 96] = d * (sbyte)sc[isc + 6] * q4;
            }
            ql = ql[64..];
            qh = qh[32..];
            sc = sc[8..];
        }
    }
}
