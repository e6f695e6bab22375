namespace ResLora.Tests;

/// <summary>Training defaults to a bf16 frozen base above 100 M parameters where bf16 is fast, and says so either way.</summary>
public sealed class RuntimeOptionsDefaultTests
{
    [Fact]
    public void DefaultForModelSize_LargeModelOnFastBf16Cpu_ChoosesBfloat16AndSaysSo()
    {
        var notes = new List<string>();
        var o = new RuntimeOptions().DefaultForModelSize(1_100_000_000, notes.Add, () => true);
        Assert.Equal("bfloat16", o.Dtype);
        Assert.Contains("--dtype float32", Assert.Single(notes), StringComparison.Ordinal);
    }

    [Fact]
    public void DefaultForModelSize_LargeModelOnCpuWithoutFastBf16_KeepsFloat32AndNamesTheCost()
    {
        var notes = new List<string>();
        var o = new RuntimeOptions().DefaultForModelSize(1_100_000_000, notes.Add, () => false);
        Assert.Equal("float32", o.Dtype);
        string n = Assert.Single(notes);
        Assert.Contains("keeping float32", n, StringComparison.Ordinal);
        Assert.Contains("--base-bits", n, StringComparison.Ordinal);
    }

    [Fact]
    public void DefaultForModelSize_SmallModel_StaysFloat32Silently()
    {
        var notes = new List<string>();
        var o = new RuntimeOptions().DefaultForModelSize(3_400_000, notes.Add, () => true);
        Assert.Equal("float32", o.Dtype);
        Assert.Empty(notes);
    }
}
