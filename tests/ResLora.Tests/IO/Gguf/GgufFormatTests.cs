using ResLora.IO.Gguf;

namespace ResLora.Tests.IO.Gguf;

public sealed class GgufFormatTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-gguf-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static float[] Ramp(int n, float scale = 0.01f) => Enumerable.Range(0, n).Select(i => (i % 7 - 3) * scale * (1 + i / 64f)).ToArray();

    private string WriteSample()
    {
        var w = new GgufWriter();
        w.Set("general.architecture", "llama");
        w.Set("llama.block_count", 2u);
        w.Set("llama.rope.freq_base", 10000f);
        w.Set("tokenizer.ggml.add_bos_token", true);
        w.Set("some.int", -5);
        w.SetStrings("tokenizer.ggml.tokens", new[] { "<s>", "é", "▁hi" });
        w.SetFloats("tokenizer.ggml.scores", new[] { 0f, -1.5f, -2f });
        w.SetInts("tokenizer.ggml.token_type", new[] { 3, 6, 1 });
        w.AddTensor("f32", new long[] { 3, 64 }, GgmlType.F32, () => Ramp(192));
        w.AddTensor("f16", new long[] { 5 }, GgmlType.F16, () => new[] { 1f, -2.5f, 65504f, 1e-8f, 0.1f });
        w.AddTensor("bf16", new long[] { 2, 2 }, GgmlType.BF16, () => new[] { 1f, 1.00390625f, 3.14159f, -0f });
        w.AddTensor("q8", new long[] { 2, 64 }, GgmlType.Q8_0, () => Ramp(128));
        w.AddTensor("q4", new long[] { 64 }, GgmlType.Q4_0, () => Ramp(64));
        string path = Path.Combine(_dir, "m.gguf");
        w.Write(path);
        return path;
    }

    [Fact]
    public void Written_File_ReadsBack_MetadataTensorsAndValues()
    {
        using var f = GgufFile.Open(WriteSample());
        Assert.Equal(3u, f.Version);
        Assert.Equal("llama", f.GetString("general.architecture"));
        Assert.Equal(2L, f.GetInteger("llama.block_count"));
        Assert.Equal(-5L, f.GetInteger("some.int"));
        Assert.Equal(10000.0, f.GetNumber("llama.rope.freq_base"));
        Assert.Equal(true, f.Metadata["tokenizer.ggml.add_bos_token"]);
        Assert.Equal(new object[] { "<s>", "é", "▁hi" }, f.GetArray("tokenizer.ggml.tokens")!.Items);
        Assert.Equal(new object[] { 3, 6, 1 }, f.GetArray("tokenizer.ggml.token_type")!.Items);
        Assert.Equal(0, f.DataOffset % 32);
        Assert.All(f.Tensors, t => Assert.Equal(0, t.Offset % 32));
        var t32 = f.Tensor("f32");
        Assert.Equal(new long[] { 64, 3 }, t32.Dims); // ggml order: contiguous dimension first
        Assert.Equal(new long[] { 3, 64 }, t32.Shape);
        Assert.Equal(Ramp(192), f.ReadFloats(t32));
        Assert.Equal(new[] { 1f, -2.5f, 65504f, (float)(Half)1e-8f, (float)(Half)0.1f }, f.ReadFloats(f.Tensor("f16")));
        // bf16 rounds to nearest even on the 16 high bits: 1.00390625 = 1 + 2^-8 is a tie and goes to 1.
        Assert.Equal(new[] { 1f, 1f, 3.140625f, -0f }, f.ReadFloats(f.Tensor("bf16")));
        var q8 = f.ReadFloats(f.Tensor("q8"));
        var x = Ramp(128);
        for (int b = 0; b < 4; b++)
        {
            float amax = x.Skip(32 * b).Take(32).Max(Math.Abs), step = (float)(Half)(amax / 127);
            for (int j = 0; j < 32; j++) Assert.True(Math.Abs(q8[32 * b + j] - x[32 * b + j]) <= step / 2 + 1e-4f * amax, $"q8 [{32 * b + j}]");
        }
        var q4 = f.ReadFloats(f.Tensor("q4"));
        for (int b = 0; b < 2; b++)
        {
            float amax = x.Skip(32 * b).Take(32).Max(Math.Abs);
            // Step d = amax / 8; values are within d / 2, except the top of the other sign, clamped at 7d (within d).
            for (int j = 0; j < 32; j++)
            {
                float err = Math.Abs(q4[32 * b + j] - x[32 * b + j]), bound = x[32 * b + j] > 7 * amax / 8 ? amax / 8 : amax / 16;
                Assert.True(err <= bound + 1e-3f * amax, $"q4 [{32 * b + j}]: {q4[32 * b + j]} vs {x[32 * b + j]}");
            }
        }
    }

    [Fact]
    public void Q4_0_Block_IsGgmlsReferenceEncoding()
    {
        // Block: x[j] = j - 16 (−16 … 15). Largest magnitude is −16 → d = −16 / −8 = 2; q = min(15, (int)(x/2 + 8.5)).
        var x = Enumerable.Range(0, 32).Select(j => (float)(j - 16)).ToArray();
        var blk = new byte[18];
        GgmlQuant.Encode(GgmlType.Q4_0, x, blk);
        Assert.Equal((Half)2f, BitConverter.UInt16BitsToHalf(BitConverter.ToUInt16(blk, 0)));
        for (int j = 0; j < 16; j++)
        {
            int q0 = Math.Min(15, (int)((j - 16) / 2f + 8.5f)), q1 = Math.Min(15, (int)((j + 16 - 16) / 2f + 8.5f));
            Assert.Equal((byte)(q0 | (q1 << 4)), blk[2 + j]);
        }
        var y = new float[32];
        GgmlQuant.Decode(GgmlType.Q4_0, blk, y);
        Assert.Equal(-16f, y[0]);
        Assert.Equal(14f, y[31]); // 15 → q = min(15, 16) = 15 → (15 − 8)·2
    }

    [Fact]
    public void Q4_K_And_Q6_K_Blocks_DecodeAsGgmlDoes()
    {
        // Q4_K: d = 0.5, dmin = 0.25; sub-block 0 scale 3, min 2 (bytes 0 and 4); 4-bit value 5 everywhere in it.
        var q4k = new byte[144];
        BitConverter.TryWriteBytes(q4k.AsSpan(0), BitConverter.HalfToUInt16Bits((Half)0.5f));
        BitConverter.TryWriteBytes(q4k.AsSpan(2), BitConverter.HalfToUInt16Bits((Half)0.25f));
        q4k[4 + 0] = 3;
        q4k[4 + 4] = 2;
        for (int l = 0; l < 32; l++) q4k[16 + l] = 0x05; // low nibble 5 (sub-block 0), high nibble 0 (sub-block 1)
        // Sub-block 4 uses the packed form: scale = (q[8] & 0xF) | ((q[0] >> 6) << 4), min = (q[8] >> 4) | ((q[4] >> 6) << 4).
        q4k[4 + 8] = 0x21; // scale 1, min 2
        q4k[4 + 0] |= 0x40; // + 16 to sub-block 4's scale → 17 (sub-block 0 keeps scale 3: & 63)
        for (int l = 0; l < 32; l++) q4k[16 + 64 + l] = 0x07; // sub-block 4: value 7
        var y = new float[256];
        GgmlQuant.Decode(GgmlType.Q4_K, q4k, y);
        Assert.Equal(0.5f * 3 * 5 - 0.25f * 2, y[0]);
        Assert.Equal(0.5f * 3 * 5 - 0.25f * 2, y[31]);
        Assert.Equal(0f, y[32]); // sub-block 1: scale 0, min 0
        Assert.Equal(0.5f * 17 * 7 - 0.25f * 2, y[128]);

        // Q6_K: d = 0.125; scale[0] = 4, scale[2] = −2; value 6 bits: low 4 from ql, high 2 from qh; stored q − 32.
        var q6k = new byte[210];
        BitConverter.TryWriteBytes(q6k.AsSpan(208), BitConverter.HalfToUInt16Bits((Half)0.125f));
        q6k[192 + 0] = 4;
        q6k[192 + 2] = unchecked((byte)(sbyte)-2);
        q6k[0] = 0x0A;            // y[0]: low 4 bits 10
        q6k[128] = 0b0000_0010;   // y[0]: high 2 bits 2 → q = 10 + 32 − 32 = 10; y[32] high bits 0
        q6k[32] = 0x03;           // y[32]: low 4 bits 3 → q = 3 − 32 = −29
        GgmlQuant.Decode(GgmlType.Q6_K, q6k, y);
        Assert.Equal(0.125f * 4 * 10, y[0]);
        Assert.Equal(0.125f * -2 * -29, y[32]);
        Assert.Equal(0.125f * 4 * -32, y[1]);
    }

    [Fact]
    public void EveryTruncation_AndCorruptHeaders_AreOneClearError()
    {
        string path = WriteSample();
        var bytes = File.ReadAllBytes(path);
        string cut = Path.Combine(_dir, "cut.gguf");
        // Every cut before the last tensor's last byte (the file may end in alignment padding after it).
        long end;
        using (var whole = GgufFile.Open(path)) end = whole.DataOffset + whole.Tensors.Max(t => t.Offset + t.Bytes);
        int[] lengths = Enumerable.Range(0, 400).Concat(new[] { (int)end - 1, (int)end - 20 }).Where(n => n < end).ToArray();
        foreach (int n in lengths)
        {
            File.WriteAllBytes(cut, bytes[..n]);
            var e = Assert.Throws<UserInputException>(() => GgufFile.Open(cut).Dispose());
            Assert.Contains("cut.gguf", e.Message);
        }
        var rng = new Random(7);
        for (int i = 0; i < 300; i++)
        {
            var b = (byte[])bytes.Clone();
            int at = rng.Next(0, 420);
            b[at] = (byte)rng.Next(256);
            File.WriteAllBytes(cut, b);
            try
            {
                using var f = GgufFile.Open(cut);
                foreach (var t in f.Tensors) f.ReadFloats(t);
            }
            catch (UserInputException)
            {
            }
        }
        File.WriteAllBytes(cut, "GGML0000"u8.ToArray());
        Assert.Contains("not a GGUF file", Assert.Throws<UserInputException>(() => GgufFile.Open(cut)).Message);
    }

    [Fact]
    public void ARowNotWholeBlocks_IsRefusedNamingTheTensor()
    {
        var w = new GgufWriter();
        var e = Assert.Throws<UserInputException>(() => w.AddTensor("blk.0.ffn_down.weight", new long[] { 4, 48 }, GgmlType.Q8_0, () => new float[192]));
        Assert.Contains("blk.0.ffn_down.weight", e.Message);
        Assert.Contains("--gguf-type", e.Message);
        Assert.Equal(GgmlType.Q4_0, GgmlTypes.Parse("Q4_0"));
        Assert.Null(GgmlTypes.Parse("q5_k"));
    }
}
