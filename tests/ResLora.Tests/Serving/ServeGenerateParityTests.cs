using System.Globalization;
using System.Net;
using System.Text.Json.Nodes;
using ResLora.Tests.Infrastructure;
using static ResLora.Tests.Serving.ServingFixture;

namespace ResLora.Tests.Serving;

/// <summary>
/// <c>serve</c> and <c>generate</c> run one decode engine, one prompt-to-reply path and one set of sampling rules: the same
/// greedy request on a tiny model with an adapter gives the same text from both, with and without a stop string.
/// </summary>
[Collection("console")]
public sealed class ServeGenerateParityTests : IClassFixture<ServingFixture>
{
    private const int Tokens = 8;
    private readonly ServingFixture _f;

    public ServeGenerateParityTests(ServingFixture fixture) => _f = fixture;

    private string Generate(string adapter, string prompt, bool chat, string? stop)
    {
        var args = new List<string> { "generate", "--model", _f.ModelDir, "--adapter", _f.Dir(adapter), "--prompt", prompt, "--max-new-tokens", Tokens.ToString(CultureInfo.InvariantCulture) };
        if (chat) args.Add("--chat");
        if (stop is not null) args.AddRange(new[] { "--stop", stop });
        var (rc, output, err) = CliHarness.Run(args.ToArray());
        Assert.True(rc == 0, err);
        Assert.EndsWith(Environment.NewLine, output);
        return output[..^Environment.NewLine.Length];
    }

    private async Task<string> Serve(HttpClient client, string adapter, string prompt, bool chat, string? stop)
    {
        var body = new JsonObject { ["model"] = $"{_f.Name}:{adapter}", ["max_tokens"] = Tokens, ["temperature"] = 0 };
        if (chat) body["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = prompt });
        else body["prompt"] = prompt;
        if (stop is not null) body["stop"] = new JsonArray(stop);
        var r = await Post(client, chat ? "/v1/chat/completions" : "/v1/completions", body.ToJsonString());
        string text = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.OK, text);
        var choice = JsonNode.Parse(text)!["choices"]![0]!;
        return chat ? (string)choice["message"]!["content"]! : (string)choice["text"]!;
    }

    [Theory]
    [InlineData("lora", false)]
    [InlineData("dora", false)]
    [InlineData("lora", true)]
    public async Task GreedyText_IsTheSame_WithAndWithoutAStopString(string adapter, bool chat)
    {
        await using var server = await _f.Start();
        using var client = Client(server);
        const string prompt = "The sky is";
        string whole = Generate(adapter, prompt, chat, stop: null);
        Assert.Equal(whole, await Serve(client, adapter, prompt, chat, stop: null));
        Assert.True(whole.Length >= 2, $"the answer '{whole}' is too short to hold a stop string");

        // A stop string taken from the middle of the answer: both cut the answer before its first occurrence.
        string stop = whole.Substring(whole.Length / 2, 1);
        string cut = whole[..whole.IndexOf(stop, StringComparison.Ordinal)];
        Assert.Equal(cut, Generate(adapter, prompt, chat, stop));
        Assert.Equal(cut, await Serve(client, adapter, prompt, chat, stop));
    }
}
