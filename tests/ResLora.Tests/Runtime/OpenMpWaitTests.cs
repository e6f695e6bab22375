namespace ResLora.Tests.Runtime;

/// <summary>Passive OpenMP waiting is set only when asked (RESLORA_PASSIVE_WAIT=1) and the user chose no wait policy; the user's value stays.</summary>
public sealed class OpenMpWaitTests
{
    [Fact]
    public void ShouldSet_OnlyWhenAsked()
    {
        Assert.False(OpenMpWait.ShouldSet(_ => null));
        Assert.True(OpenMpWait.ShouldSet(v => v == OpenMpWait.OptIn ? "1" : null));
    }

    [Theory]
    [InlineData("OMP_WAIT_POLICY", "active")]
    [InlineData("GOMP_SPINCOUNT", "300000")]
    [InlineData("KMP_BLOCKTIME", "200")]
    [InlineData("KMP_LIBRARY", "turnaround")]
    public void ShouldSet_UserChoseAWaitPolicy_KeepsIt(string name, string value) =>
        Assert.False(OpenMpWait.ShouldSet(v => v == name ? value : v == OpenMpWait.OptIn ? "1" : null));

    [Fact]
    public void Apply_ReachesTheNativeEnvironment_WithoutReplacingTheUsers()
    {
        if (OperatingSystem.IsWindows()) return;
        string? user = Environment.GetEnvironmentVariable("OMP_WAIT_POLICY");
        bool asked = OpenMpWait.ShouldSet(Environment.GetEnvironmentVariable);
        bool set = OpenMpWait.Apply();
        Assert.Equal(asked, set);
        // What libgomp reads at load: PASSIVE when asked, else exactly what the user had (nothing, in a plain test run).
        Assert.Equal(set ? "PASSIVE" : user, OpenMpWait.NativeValue("OMP_WAIT_POLICY"));
    }
}
