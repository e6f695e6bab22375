using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using ResLora.Cli.Serve;
using ResLora.Pipelines.Serving;
using ResLora.Tests.Infrastructure;
using static ResLora.Tests.Serving.ServingFixture;

namespace ResLora.Tests.Serving;

/// <summary>
/// Issue 30: one request cannot fail another (sampling settings libtorch cannot honour, huge prompts), client errors are
/// 4xx without traces, a shutdown answers what it cancels, and a server reachable from other machines without a key warns.
/// </summary>
[Collection("console")]
public sealed class ServeHardeningTests : IClassFixture<ServingFixture>
{
    private const int Tokens = 6;
    private const string InvalidUtf8Prompt = "{\"model\":\"tiny-chat\",\"prompt\":\"\xFF\xFE\",\"max_tokens\":4}";
    private readonly ServingFixture _f;

    public ServeHardeningTests(ServingFixture fixture) => _f = fixture;

    private static string Completion(string model, string prompt, string extra = "") =>
        new JsonObject { ["model"] = model, ["prompt"] = prompt, ["max_tokens"] = Tokens, ["temperature"] = 0 }.ToJsonString().TrimEnd('}') + extra + "}";

    /// <summary>A body whose bytes are Latin-1 chars of <paramref name="text"/>: \xFF in it is the byte 0xFF, not UTF-8.</summary>
    private static Task<HttpResponseMessage> PostBytes(HttpClient client, string path, string text)
    {
        var content = new ByteArrayContent(Encoding.Latin1.GetBytes(text));
        content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
        return client.PostAsync(path, content);
    }

    private static async Task<string> Ok(HttpResponseMessage r)
    {
        string body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.OK, $"{(int)r.StatusCode}: {body}");
        return (string)JsonNode.Parse(body)!["choices"]![0]!["text"]!;
    }

    private static async Task<JsonNode> Refused(HttpResponseMessage r, HttpStatusCode status, string code, string? param = null)
    {
        string body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == status, $"expected {(int)status}, got {(int)r.StatusCode}: {body}");
        Assert.Single(body.TrimEnd('\n').Split('\n'));
        var e = JsonNode.Parse(body)!["error"]!;
        Assert.Equal(code, (string?)e["code"]);
        if (param is not null) Assert.Equal(param, (string?)e["param"]);
        return e;
    }

    [Fact]
    public async Task TinyTemperatureTopPAndPenalty_DoNotFailTheBatch()
    {
        string greedy;
        await using (var alone = await _f.Start())
        {
            using var c1 = Client(alone);
            greedy = await Ok(await Post(c1, "/v1/completions", Completion(_f.Name, "The sky is")));
        }
        using var gate = new ServeTests.Gate();
        await using var server = await _f.Start(new ServingOptions { ModelDir = _f.ModelDir, MaxBatch = 8, BeforeBatch = gate.BeforeBatch });
        using var client = Client(server);
        var first = Post(client, "/v1/completions", Completion(_f.Name, "The sky is"));
        Assert.True(await gate.Entered.WaitAsync(TimeSpan.FromMinutes(1)));
        // Inside the documented ranges ([0, 2] and (0, 1]), but beyond float32: these failed the whole batch with 500.
        var tinyT = Post(client, "/v1/completions", Completion(_f.Name, "The sky is").Replace("\"temperature\":0", "\"temperature\":1e-40", StringComparison.Ordinal));
        var tinyP = Post(client, "/v1/completions", Completion(_f.Name, "The sky is", ",\"top_p\":1e-46,\"seed\":3").Replace("\"temperature\":0", "\"temperature\":1", StringComparison.Ordinal));
        // Valid (> 0), but divides positive logits into +inf.
        var tinyPenalty = Post(client, "/v1/completions", Completion(_f.Name, "The sky is", ",\"repetition_penalty\":1e-300,\"seed\":4").Replace("\"temperature\":0", "\"temperature\":1", StringComparison.Ordinal));
        var normal = Post(client, "/v1/completions", Completion(_f.Name + ":lora", "The sky is"));
        await ServeTests.Until(() => server.Model.Scheduler.Queued == 4);
        gate.Open();
        Assert.Equal(greedy, await Ok(await first));
        Assert.Equal(greedy, await Ok(await tinyT)); // below 1e-5 is greedy
        Assert.Equal(greedy, await Ok(await tinyP)); // the most likely token is always kept
        Assert.NotEmpty(await Ok(await tinyPenalty));
        Assert.NotEmpty(await Ok(await normal));
        Assert.Equal(new[] { 1, 5 }, gate.Sizes.Take(2)); // continuous batching: the 4 queued join the first, still running
    }

    [Fact]
    public void Generate_WithTinyTemperature_IsGreedy_NotACrash()
    {
        var (rc0, greedy, err0) = CliHarness.Run("generate", "--model", _f.ModelDir, "--prompt", "The sky is", "--max-new-tokens", "6");
        Assert.True(rc0 == 0, err0);
        var (rc, output, err) = CliHarness.Run("generate", "--model", _f.ModelDir, "--prompt", "The sky is", "--max-new-tokens", "6", "--temperature", "1e-40");
        Assert.True(rc == 0, err);
        Assert.Equal(greedy, output);
        (rc, output, err) = CliHarness.Run("generate", "--model", _f.ModelDir, "--prompt", "The sky is", "--max-new-tokens", "6", "--temperature", "1", "--top-p", "1e-46");
        Assert.True(rc == 0, err);
        Assert.Equal(greedy, output);
    }

    [Fact]
    public async Task ClientErrors_Are4xx_NamingTheField()
    {
        await using var server = await _f.Start(settings: new ServeSettings { MaxRequestBytes = 4 << 20 });
        using var client = Client(server);

        var e = await Refused(await PostBytes(client, "/v1/completions", InvalidUtf8Prompt), HttpStatusCode.BadRequest, "invalid_json");
        Assert.Contains("UTF-8", (string)e["message"]!);

        await Refused(await Post(client, "/v1/completions", "{\"model\":\"tiny-chat\",\"prompt\":\"a\\ud800b\"}"), HttpStatusCode.BadRequest, "invalid_value", "prompt");
        await Refused(await Post(client, "/v1/completions", "{\"model\":\"tiny-chat\",\"prompt\":\"a\",\"stop\":[\"\\udc00\"]}"), HttpStatusCode.BadRequest, "invalid_value", "stop");
        await Refused(await Post(client, "/v1/completions", "{\"model\":\"tiny-\\ud800\",\"prompt\":\"a\"}"), HttpStatusCode.BadRequest, "invalid_value", "model");
        await Refused(await Post(client, "/v1/chat/completions", "{\"model\":\"tiny-chat\",\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}"), HttpStatusCode.BadRequest, "invalid_value", "messages[0].content");
        await Refused(await Post(client, "/v1/chat/completions", "{\"model\":\"tiny-chat\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"\\ud800\"}]}]}"), HttpStatusCode.BadRequest, "invalid_value", "messages[0].content[0].text");
        await Refused(await Post(client, "/v1/chat/completions", "{\"model\":\"tiny-chat\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":5,\"text\":\"hi\"}]}]}"), HttpStatusCode.BadRequest, "invalid_value", "messages[0].content");

        // A prompt that cannot fit is refused by its length, before it is tokenized.
        e = await Refused(await Post(client, "/v1/completions", Completion(_f.Name, new string('x', 1 << 20))), HttpStatusCode.BadRequest, "invalid_value", "prompt");
        Assert.Contains("characters", (string)e["message"]!);
        e = await Refused(await Post(client, "/v1/chat/completions", new JsonObject { ["model"] = _f.Name, ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = new string('x', 1 << 20) }) }.ToJsonString()), HttpStatusCode.BadRequest, "invalid_value", "messages");
        Assert.Contains("characters", (string)e["message"]!);
        Assert.Equal(0, server.Model.Scheduler.Queued);
    }

    [Fact]
    public async Task SlowBody_Is408()
    {
        await using var server = await _f.Start();
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(server.Address.Host, server.Address.Port);
        var stream = tcp.GetStream();
        // Headers promise 1000 bytes; 8 arrive and then nothing: Kestrel's minimum body rate (240 B/s after 5 s) ends it.
        byte[] head = Encoding.ASCII.GetBytes("POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\"");
        await stream.WriteAsync(head);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        var read = reader.ReadToEndAsync();
        Assert.True(await Task.WhenAny(read, Task.Delay(TimeSpan.FromMinutes(1))) == read, "no answer within a minute");
        string response = await read;
        Assert.StartsWith("HTTP/1.1 408", response);
        Assert.Contains("\"code\":\"request_timeout\"", response);
    }

    [Fact]
    public void Scrub_KeepsTheFirstLine_WithoutPathsOrAddresses()
    {
        const string libtorch = "probability tensor contains either `inf`, `nan` or element < 0\nException raised from multinomial at /home/runner/work/libtorch/aten/src/ATen/native/Distributions.cpp:618 (most recent call first):\nframe #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x6b (0x7f5a1c2d3e4b in /opt/app/runtimes/linux-x64/native/libc10.so)";
        Assert.Equal("probability tensor contains either `inf`, `nan` or element < 0", ServeServer.Scrub(libtorch));
        string s = ServeServer.Scrub("failed at /usr/lib/x86_64-linux-gnu/libtorch_cpu.so:12 near 0x7ffd2a3b4c5d");
        Assert.DoesNotContain("/usr", s);
        Assert.DoesNotContain("0x7ffd", s);
    }

    [Fact]
    public async Task ShutdownTimeout_Answers503_NotAReset_AndNewClientsGet503WhileDraining()
    {
        using var gate = new ServeTests.Gate();
        await using var server = await _f.Start(new ServingOptions { ModelDir = _f.ModelDir, MaxBatch = 1, BeforeBatch = gate.BeforeBatch }, new ServeSettings { ShutdownTimeout = TimeSpan.Zero });
        using var client = Client(server);
        var running = Post(client, "/v1/completions", Completion(_f.Name, "first"));
        Assert.True(await gate.Entered.WaitAsync(TimeSpan.FromMinutes(1)));
        var queued = Post(client, "/v1/completions", Completion(_f.Name + ":lora", "second", ",\"stream\":true"));
        await ServeTests.Until(() => server.Model.Scheduler.Queued == 1);

        var stopping = server.StopAsync();
        // The worker is still held in its batch: the server drains, and a new client is answered 503 over HTTP.
        using (var late = Client(server))
            await Refused(await Post(late, "/v1/completions", Completion(_f.Name, "late")), HttpStatusCode.ServiceUnavailable, "shutting_down");
        gate.Open();
        // The timeout (0) has passed: both are cancelled, and answered.
        await Refused(await running, HttpStatusCode.ServiceUnavailable, "shutting_down");
        var r = await queued;
        string body = await r.Content.ReadAsStringAsync();
        if (r.StatusCode == HttpStatusCode.OK)
        {
            string last = body.Split("\n\n", StringSplitOptions.RemoveEmptyEntries)[^1];
            Assert.StartsWith("data: {\"error\"", last);
            Assert.Equal("shutting_down", (string?)JsonNode.Parse(last["data: ".Length..])!["error"]!["code"]);
        }
        else Assert.Equal(HttpStatusCode.ServiceUnavailable, r.StatusCode);
        await stopping.WaitAsync(TimeSpan.FromMinutes(1));
    }

    [Theory]
    [InlineData("0.0.0.0", null, true)]
    [InlineData("::", null, true)]
    [InlineData("192.168.1.20", null, true)]
    [InlineData("0.0.0.0", "key", false)]
    [InlineData("127.0.0.1", null, false)]
    [InlineData("::1", null, false)]
    [InlineData("localhost", null, false)]
    public void NonLoopbackHost_WithoutApiKey_Warns(string host, string? key, bool warns)
    {
        string? warning = new ServeSettings { Host = host, ApiKey = key }.ExposureWarning();
        Assert.Equal(warns, warning is not null);
        if (warns) Assert.Contains("--api-key", warning);
    }

    [Fact]
    public async Task ListenAddress_IsWhatIsBound_WithTheChosenPort()
    {
        var served = ServedModel.Load(new ServingOptions { ModelDir = _f.ModelDir }, new RuntimeOptions());
        await using var server = await ServeServer.StartAsync(served, new ServeSettings { Host = "0.0.0.0", Port = 0, ApiKey = "k" });
        Assert.Matches(@"^http://0\.0\.0\.0:[1-9][0-9]*$", server.ListenAddress);
        Assert.Equal(new Uri(server.ListenAddress).Port, server.Address.Port);
        Assert.Equal("127.0.0.1", server.Address.Host); // where a client on this machine connects
    }

    [Fact]
    public async Task HostileClient_DoesNotChangeWhatOtherClientsGet()
    {
        var normal = Enumerable.Range(0, 6).Select(i => Completion(i % 3 == 0 ? _f.Name : i % 3 == 1 ? _f.Name + ":lora" : _f.Name + ":dora", $"question {i}")).ToList();
        var alone = new List<string>();
        await using (var one = await _f.Start(new ServingOptions { ModelDir = _f.ModelDir, MaxBatch = 1 }))
        {
            using var c1 = Client(one);
            foreach (var body in normal) alone.Add(await Ok(await Post(c1, "/v1/completions", body)));
        }

        using var gate = new ServeTests.Gate();
        await using var server = await _f.Start(new ServingOptions { ModelDir = _f.ModelDir, MaxBatch = 8, BeforeBatch = gate.BeforeBatch }, new ServeSettings { MaxRequestBytes = 4 << 20 });
        using var good = Client(server);
        using var bad = Client(server);
        var first = Post(good, "/v1/completions", normal[0]);
        Assert.True(await gate.Entered.WaitAsync(TimeSpan.FromMinutes(1)));
        var hostile = new List<(Task<HttpResponseMessage> Response, HttpStatusCode Status)>
        {
            (Post(bad, "/v1/completions", Completion(_f.Name, "x", ",\"top_p\":1e-46").Replace("\"temperature\":0", "\"temperature\":1e-40", StringComparison.Ordinal)), HttpStatusCode.OK),
            (Post(bad, "/v1/completions", Completion(_f.Name, new string('x', 1 << 20))), HttpStatusCode.BadRequest),
            (PostBytes(bad, "/v1/completions", InvalidUtf8Prompt), HttpStatusCode.BadRequest),
            (Post(bad, "/v1/completions", "{\"model\":\"tiny-chat\",\"prompt\":\"\\ud800\"}"), HttpStatusCode.BadRequest),
        };
        var rest = normal.Skip(1).Select(b => Post(good, "/v1/completions", b)).ToList();
        await ServeTests.Until(() => server.Model.Scheduler.Queued == rest.Count + 1); // the tiny-temperature request shares the batch
        gate.Open();
        var answers = new List<string> { await Ok(await first) };
        foreach (var t in rest) answers.Add(await Ok(await t));
        Assert.Equal(alone, answers);
        foreach (var (response, status) in hostile)
        {
            var r = await response;
            string body = await r.Content.ReadAsStringAsync();
            Assert.True(r.StatusCode == status, $"expected {(int)status}, got {(int)r.StatusCode}: {body}");
        }
        Assert.Equal(new[] { 1, 7 }, gate.Sizes.Take(2)); // the first, then it and (continuous batching) 5 normal + the tiny-temperature one
    }
}
