using ResLora.Cli;
using TorchSharp;

namespace ResLora.Tests.Cli;

/// <summary>Bad input is one line and exit 2; anything else is reported as a bug with its trace in a file (exit 70).</summary>
[Collection("console")]
public sealed class CliErrorsTests
{
    private static (int Code, string Err) Capture(Exception e)
    {
        var old = Console.Error;
        using var sw = new StringWriter();
        Console.SetError(sw);
        try { return (CliErrors.Report(e), sw.ToString()); }
        finally { Console.SetError(old); }
    }

    [Fact]
    public void Report_UserInput_IsOneLineWithExitCode2()
    {
        var (code, err) = Capture(new UserInputException("--rank 0: must be a positive rank, e.g. 8."));
        Assert.Equal(2, code);
        Assert.Equal("error: --rank 0: must be a positive rank, e.g. 8." + Environment.NewLine, err);
    }

    [Fact]
    public void Report_MissingFile_IsAUserError()
    {
        Assert.Equal(2, Capture(new FileNotFoundException("data.jsonl: not found")).Code);
    }

    [Theory]
    [InlineData(typeof(InvalidOperationException))]
    [InlineData(typeof(KeyNotFoundException))]
    [InlineData(typeof(ArgumentException))]
    [InlineData(typeof(NullReferenceException))]
    public void Report_AnythingElse_IsABugWithTheTraceInAFile(Type type)
    {
        Exception thrown;
        try { throw (Exception)Activator.CreateInstance(type, "something broke")!; }
        catch (Exception e) { thrown = e; }
        var (code, err) = Capture(thrown);
        Assert.Equal(70, code);
        Assert.Contains($"internal error: {type.Name}: something broke", err);
        Assert.Contains("This is a bug in reslora", err);
        var path = err.Split(" The full trace is in ")[1].Split(';')[0];
        Assert.True(File.Exists(path), path);
        string trace = File.ReadAllText(path);
        Assert.Contains(nameof(Report_AnythingElse_IsABugWithTheTraceInAFile), trace); // the stack, not just the message
        File.Delete(path);
    }

    [Fact]
    public void Report_NativeAllocationFailure_IsOneLineNamingTheLikelyCause()
    {
        Exception thrown;
        try { torch.empty(1L << 44, dtype: torch.ScalarType.Float32).Dispose(); throw new InvalidOperationException("the allocation unexpectedly succeeded"); }
        catch (Exception e) { thrown = e; }
        Assert.NotNull(CliErrors.NativeAllocationFailure(thrown));
        var (code, err) = Capture(thrown);
        Assert.Equal(2, code);
        Assert.StartsWith("error: the tensors this needs do not fit in memory", err);
        Assert.Contains("--batch-size", err);
        Assert.Single(err.Trim().Split('\n'));
    }
}
