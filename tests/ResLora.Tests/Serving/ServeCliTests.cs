using System.Text.Json;
using ResLora.Tests.Infrastructure;

namespace ResLora.Tests.Serving;

/// <summary>The serve verb's flags are checked before anything loads; bench serve --quick answers every request.</summary>
[Collection("console")]
public sealed class ServeCliTests : IClassFixture<ServingFixture>
{
    private readonly ServingFixture _f;

    public ServeCliTests(ServingFixture fixture) => _f = fixture;

    [Theory]
    [InlineData("--adapter", "=lora", "--adapter '=lora': give NAME=DIR")]
    [InlineData("--adapter", "lora=/no/such/folder", "adapter 'lora': /no/such/folder: no such folder")]
    [InlineData("--port", "70000", "--port must be between 0 and 65535")]
    [InlineData("--host", "example.org", "--host 'example.org': give an IP address")]
    [InlineData("--max-queue", "0", "--max-queue must be at least 1")]
    [InlineData("--name", "a:b", "--name 'a:b'")]
    public void BadFlags_AreOneLineErrors(string flag, string value, string expected)
    {
        var (rc, _, err) = CliHarness.Run("serve", "--model", _f.ModelDir, flag, value);
        Assert.Equal(2, rc);
        Assert.StartsWith("error: " + expected, err);
    }

    [Fact]
    public void Help_DescribesTheApiAndTheFlags()
    {
        var (rc, output, _) = CliHarness.Run("serve", "--help");
        Assert.Equal(0, rc);
        foreach (var s in new[] { "/v1/chat/completions", "--adapter", "--max-batch", "--max-queue", "--max-tokens-limit", "--max-request-bytes", "--api-key", "RESLORA_API_KEY", "--shutdown-timeout", "--threads" })
            Assert.Contains(s, output);
    }

    [Fact]
    public void BenchServeQuick_AnswersEveryRequest_AndWritesResults()
    {
        string dir = Path.Combine(_f.Root, "bench-serve");
        var (rc, output, err) = CliHarness.Run("bench", "serve", "--quick", "--out", dir);
        Assert.True(rc == 0, err);
        Assert.Contains("batched / sequential", output);
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "serve.json")));
        var results = doc.RootElement.GetProperty("results");
        Assert.Equal(2, results.GetArrayLength());
        foreach (var r in results.EnumerateArray())
        {
            Assert.Equal(8, r.GetProperty("Requests").GetInt32()); // 2 clients × 4 requests, none lost
            Assert.Equal(4, r.GetProperty("Streamed").GetInt32());
        }
    }
}
