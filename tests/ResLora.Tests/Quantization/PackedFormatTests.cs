using ResLora.Models;
using ResLora.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Quantization;

/// <summary>The packed base formats of --base-bits: NF4 against hand-computed values, int8/int4 error bounds, the blockwise matmul.</summary>
public sealed class PackedFormatTests
{
    private static readonly float[] Nf4 = Nf4Weight.CodeBook;

    /// <summary>bitsandbytes' dynamic map entry for exponent i (scale 10^(i−6)) and fraction k: the midpoint of linspace(0.1, 1, 2^i + 1).</summary>
    private static double Dyn(int i, int k, int sign = 1)
    {
        double step = 0.9 / (1 << i);
        return sign * Math.Pow(10, i - 6) * (0.1 + step * (k + 0.5));
    }

    [Fact]
    public void Nf4_DynamicMap_IsBitsandbytesSigned8BitMap()
    {
        using var map = Nf4Weight.DynamicMap();
        var v = map.data<float>().ToArray();
        Assert.Equal(256, v.Length);
        Assert.Equal(v.OrderBy(x => x), v);
        Assert.Equal(256, v.Distinct().Count());
        Assert.Contains(0f, v);
        Assert.Equal(1f, v[^1]);
        Assert.Equal(-Dyn(6, 63), v[0], 6);              // −0.99296875
        Assert.Contains(v, x => Math.Abs(x - 0.55e-6) < 1e-12); // i = 0: the one midpoint of [0.1, 1], times 1e-6
        Assert.Equal(127, v.Count(x => x < 0));
    }

    [Fact]
    public void Nf4_QuantizeDequantize_MatchesTheCodeBookByHand()
    {
        // Four rows of 64 = four NF4 blocks with absmax 1, 2, 3, 6.
        var w = new float[4, 64];
        for (int j = 0; j < 64; j++) { w[0, j] = Nf4[j % 16]; w[1, j] = 2 * Nf4[j % 16]; }
        float[] row2 = { 3.0f, 0.45f, -0.9f, 0.15f };  // normalised 1, 0.15, −0.3, 0.05 → levels 15, 9, 4, 8; the rest 0 → 7
        float[] row3 = { -6.0f, -3.6f, 4.0f, 1.2f };   // normalised −1, −0.6, 0.667, 0.2 → levels 0, 2, 14, 9
        for (int j = 0; j < 4; j++) { w[2, j] = row2[j]; w[3, j] = row3[j]; }
        int[][] levels =
        {
            Enumerable.Range(0, 64).Select(j => j % 16).ToArray(),
            Enumerable.Range(0, 64).Select(j => j % 16).ToArray(),
            new[] { 15, 9, 4, 8 }.Concat(Enumerable.Repeat(7, 60)).ToArray(),
            new[] { 0, 2, 14, 9 }.Concat(Enumerable.Repeat(7, 60)).ToArray(),
        };

        using var p = new Nf4Weight(4, 64, CPU);
        using var wt = torch.tensor(w);
        p.Pack(wt);

        // Two indices per byte, the first in the high nibble: row 0 starts 0x01, 0x23, 0x45, ...
        var bytes = p.Codes.data<byte>().ToArray();
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < 64; j += 2)
                Assert.Equal((byte)(levels[r][j] * 16 + levels[r][j + 1]), bytes[(r * 64 + j) / 2]);
        Assert.Equal(0x01, bytes[0]);
        Assert.Equal(0x23, bytes[1]);

        // Double quantization of the absmaxes [1, 2, 3, 6]: mean 3 is subtracted → [−2, −1, 0, 3]; one block of 256 with
        // absmax₂ = 3 → [−2/3, −1/3, 0, 1] → nearest dynamic-map entries −0.66953125 (i = 6, k = 40), −0.33203125
        // (k = 16), 0 and 1 → absmax = entry · 3 + 3.
        Assert.Equal(3f, p.Offset.item<float>(), 6);
        Assert.Equal(3f, p.NestedAbsmax[0].item<float>(), 6);
        double[] absmax = { -Dyn(6, 40) * 3 + 3, -Dyn(6, 16) * 3 + 3, 3, 6 };
        Assert.Equal(0.99140625, absmax[0], 12);
        Assert.Equal(2.00390625, absmax[1], 12);
        using var deqAbsmax = p.BlockAbsmax(0, 4);
        for (int r = 0; r < 4; r++) Assert.Equal(absmax[r], deqAbsmax[r].item<float>(), 5);

        // W = NF4[level] · absmax (dequantized), element by element.
        using var deq = p.Dequantize(ScalarType.Float32);
        var d = deq.data<float>().ToArray();
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < 64; j++)
                Assert.True(Math.Abs(d[r * 64 + j] - Nf4[levels[r][j]] * absmax[r]) < 2e-6, $"row {r} col {j}: {d[r * 64 + j]} vs {Nf4[levels[r][j]] * absmax[r]}");
        Assert.Equal(-6.0, d[3 * 64], 5);                // level 0 (−1) times absmax 6 (map entry 1: 1 · 3 + 3)
        Assert.Equal(-0.6961928 * 0.99140625, d[1], 6);  // level 1 of block 0
    }

    [Fact]
    public void Nf4_RowBlocksAndPadding_GiveTheSameWeightAsOneBlock()
    {
        // in = 40 (not a multiple of 64): blocks straddle rows and the last one is padded; row blocks start at multiples of 8 rows.
        using var g = new Generator(3);
        using var w = torch.randn(new long[] { 37, 40 }, generator: g);
        using var whole = new Nf4Weight(37, 40, CPU);
        whole.Pack(w);
        using var blocked = new Nf4Weight(37, 40, CPU) { BlockElements = 8 * 40 };
        blocked.Pack(w);
        Assert.True(blocked.RowBlocks().Count > 1);
        Assert.True(blocked.RowBlocks().All(b => b.Start % 8 == 0));
        Assert.True(whole.Codes.eq(blocked.Codes).all().item<bool>());
        using var a = whole.Dequantize(ScalarType.Float32);
        using var b = blocked.Dequantize(ScalarType.Float32);
        Assert.True(a.eq(b).all().item<bool>());
        // NF4's error is at most half the widest gap between levels (0.1519 between 0.5626 and 0.7230... and −1 ↔ −0.6962:
        // 0.3038 / 2) times the block absmax, plus the double-quantization error of that absmax.
        using var err = (a - w).abs().max();
        using var amax = w.abs().max();
        Assert.True(err.item<float>() <= 0.16 * amax.item<float>(), $"NF4 max error {err.item<float>()} vs absmax {amax.item<float>()}");
    }

    [Fact]
    public void Int8_RoundTrip_ErrorIsAtMostHalfAStepPerRow()
    {
        using var g = new Generator(5);
        using var w = torch.randn(new long[] { 40, 96 }, generator: g) * 0.3;
        using var p = new Int8Weight(40, 96, CPU);
        p.Pack(w);
        using var deq = p.Dequantize(ScalarType.Float32);
        using var rowMax = w.abs().amax(new long[] { 1 }, keepdim: true); // (40, 1)
        using var step = rowMax / 127;
        Assert.True((p.Scales.unsqueeze(1) - step).abs().max().item<float>() < 1e-7, "scale = absmax / 127 per output row");
        using var ratio = (deq - w).abs() / step;
        double worst = ratio.max().item<float>();
        Assert.True(worst <= 0.5 + 1e-4, $"int8 error {worst} steps; must be at most half a step");
        Assert.Equal(127, p.Codes.abs().max().item<sbyte>());
    }

    [Fact]
    public void Int4_RoundTrip_ErrorIsAtMostHalfAStepPerGroupOf64()
    {
        using var g = new Generator(6);
        using var w = torch.randn(new long[] { 12, 128 }, generator: g);
        using var p = new Int4Weight(12, 128, CPU);
        p.Pack(w);
        using var deq = p.Dequantize(ScalarType.Float32);
        using var step = w.reshape(-1, 64).abs().amax(new long[] { 1 }, keepdim: true) / 7; // (24, 1)
        using var ratio = (deq - w).reshape(-1, 64).abs() / step;
        double worst = ratio.max().item<float>();
        Assert.True(worst <= 0.5 + 1e-4, $"int4 error {worst} steps; must be at most half a step");
        Assert.Equal(24, p.Scales.shape[0]);
    }

    public static TheoryData<string> Formats() => new() { "int8", "nf4", "int4" };

    private static IPackedWeightFormat FormatOf(string name) =>
        PackedFormats.For(RuntimeOptions.ParseBaseBits(name))!;

    [Theory, MemberData(nameof(Formats))]
    public void PackedLinear_ForwardAndInputGradient_MatchTheDequantizedWeight(string format)
    {
        using var g = new Generator(8);
        using var w = torch.randn(new long[] { 24, 64 }, generator: g) * 0.2;
        using var p = FormatOf(format).Create(24, 64, CPU);
        p.Pack(w);
        p.BlockElements = 8 * 64; // three row blocks
        Assert.Equal(3, p.RowBlocks().Count);
        using var wd = p.Dequantize(ScalarType.Float32);

        using var x = torch.randn(new long[] { 2, 5, 64 }, generator: g).requires_grad_(true);
        using var y = p.Linear(x);
        using var yRef = nn.functional.linear(x.detach(), wd);
        Assert.True((y - yRef).abs().max().item<float>() < 1e-5);
        using var gy = torch.randn(y.shape, generator: g);
        y.backward(new[] { gy });
        using var gxRef = gy.matmul(wd);
        using var gx = x.grad!;
        Assert.True((gx - gxRef).abs().max().item<float>() < 1e-5, $"{format}: input gradient");
    }

    [Fact]
    public void BaseBits_Unsupported_IsRefusedNamingTheChoices()
    {
        var e = Assert.Throws<UserInputException>(() => new RuntimeOptions { BaseBits = "3" }.BaseStorage);
        Assert.Contains("--base-bits 3 is not supported", e.Message);
        Assert.Contains("nf4", e.Message);
        Assert.Contains("int8", e.Message);
        Assert.Equal(BaseWeightStorage.Nf4, RuntimeOptions.ParseBaseBits("4"));
        Assert.Equal(BaseWeightStorage.Int8, RuntimeOptions.ParseBaseBits("8"));
        Assert.Equal(BaseWeightStorage.Int4, RuntimeOptions.ParseBaseBits("int4"));
        Assert.Equal(BaseWeightStorage.Full, RuntimeOptions.ParseBaseBits("16"));
    }
}
