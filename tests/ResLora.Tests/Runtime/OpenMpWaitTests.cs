namespace ResLora.Tests.Runtime;

/// <summary>Passive OpenMP waiting is set unless the user chose a wait policy, and then the user's value stays.</summary>
public sealed class OpenMpWaitTests
{
    [Fact]
    public void ShouldSet_NothingChosen_SetsPassive() => Assert.True(OpenMpWait.ShouldSet(_ => null));

    [Theory]
    [InlineData("OMP_WAIT_POLICY", "active")]
    [InlineData("GOMP_SPINCOUNT", "300000")]
    [InlineData("KMP_BLOCKTIME", "200")]
    [InlineData("KMP_LIBRARY", "turnaround")]
    public void ShouldSet_UserChoseAWaitPolicy_KeepsIt(string name, string value) =>
        Assert.False(OpenMpWait.ShouldSet(v => v == name ? value : null));

    [Fact]
    public void Apply_ReachesTheNativeEnvironment_WithoutReplacingTheUsers()
    {
        if (OperatingSystem.IsWindows()) return;
        string? user = Environment.GetEnvironmentVariable("OMP_WAIT_POLICY");
        bool userChose = !OpenMpWait.ShouldSet(Environment.GetEnvironmentVariable);
        bool set = OpenMpWait.Apply();
        Assert.Equal(!userChose, set);
        // What libgomp reads at load: PASSIVE, or exactly what the user had.
        Assert.Equal(userChose ? user : "PASSIVE", OpenMpWait.NativeValue("OMP_WAIT_POLICY"));
    }
}
