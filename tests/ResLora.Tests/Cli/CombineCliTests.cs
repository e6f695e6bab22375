using ResLora.Cli;
using ResLora.Pipelines;
using ResLora.Tests.Pipelines;

namespace ResLora.Tests.Cli;

/// <summary><c>reslora combine</c> from the command line: a folder that loads, and one-line errors.</summary>
[Collection("console")]
public sealed class CombineCliTests : IClassFixture<MultiAdapterFixture>
{
    private readonly MultiAdapterFixture _f;

    public CombineCliTests(MultiAdapterFixture fixture) => _f = fixture;

    private static (int Rc, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        var (so, se) = (Console.Out, Console.Error);
        Console.SetOut(o);
        Console.SetError(e);
        try
        {
            return (CliApp.Run(args), o.ToString(), e.ToString());
        }
        finally
        {
            Console.SetOut(so);
            Console.SetError(se);
        }
    }

    private string Out() => Path.Combine(_f.Root, "cli-" + Guid.NewGuid().ToString("N"));

    [Fact]
    public void Combine_Cat_WritesAnAdapterThatLoads()
    {
        string outDir = Out();
        var (rc, output, err) = Run("combine", "--model", _f.ModelDir, "--adapter", $"math={_f.Dir("lora")}:0.5", "--adapter", $"{_f.Dir("lora8")}", "--how", "cat", "--out", outDir);
        Assert.True(rc == 0, err);
        Assert.Contains("combined 2 adapter(s) (math ×0.5, lora8 ×1) by cat", output);
        Assert.Contains("r = 12", output);
        using var m = ModelSessions.LoadWithAdapter(_f.ModelDir, outDir, new RuntimeOptions());
    }

    [Theory]
    [InlineData("linear", "lora8", "same rank")]
    [InlineData("cat", "loha", "loha adapter (peft_type LOHA)")]
    [InlineData("ties", "lora", "needs --density")]
    [InlineData("mean", "lora", "--how 'mean' is not a combination type")]
    public void Combine_BadInput_IsOneLineAndExitCode2(string how, string second, string expected)
    {
        var (rc, _, err) = Run("combine", "--model", _f.ModelDir, "--adapter", $"a={_f.Dir("lora")}", "--adapter", $"b={_f.Dir(second)}", "--how", how, "--out", Out());
        Assert.Equal(CliErrors.UserErrorExit, rc);
        Assert.StartsWith("error: ", err);
        Assert.Contains(expected, err);
        Assert.Single(err.TrimEnd().Split('\n'));
    }

    [Theory]
    [InlineData("math=/a/b:0.7", "math", "/a/b", 0.7)]
    [InlineData("math=/a/b", "math", "/a/b", 1.0)]
    [InlineData("/a/b/code:-1", "code", "/a/b/code", -1.0)]
    [InlineData(@"w=C:\x\y:2", "w", @"C:\x\y", 2.0)]
    [InlineData(@"w=C:\x\y", "w", @"C:\x\y", 1.0)]
    public void ParseAdapter_NameDirWeight(string spec, string name, string dir, double weight) =>
        Assert.Equal(new CombineInput(name, dir, weight), CombineVerb.ParseAdapter(spec));
}
