using System.Net;
using System.Text.Json.Nodes;
using ResLora.Cli.Serve;
using ResLora.Pipelines.Serving;
using ResLora.Tests.Infrastructure;
using static ResLora.Tests.Serving.ServingFixture;

namespace ResLora.Tests.Serving;

/// <summary>
/// <c>reslora serve</c> through a real HttpClient against the server on 127.0.0.1, port 0: answers equal
/// <c>reslora generate</c>'s, streams concatenate to the whole answer, each refusal has its status and message, concurrent
/// clients get what sequential ones get, and a shutdown finishes requests in flight.
/// </summary>
[Collection("console")]
public sealed class ServeTests : IClassFixture<ServingFixture>
{
    private const int Tokens = 6;
    private readonly ServingFixture _f;

    public ServeTests(ServingFixture fixture) => _f = fixture;

    private static string Completion(string model, string prompt, int maxTokens = Tokens, bool stream = false, string extra = "") =>
        new JsonObject { ["model"] = model, ["prompt"] = prompt, ["max_tokens"] = maxTokens, ["temperature"] = 0, ["stream"] = stream }.ToJsonString().TrimEnd('}') + extra + "}";

    private static string Chat(string model, string user, int maxTokens = Tokens, bool stream = false) =>
        new JsonObject { ["model"] = model, ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = user }), ["max_tokens"] = maxTokens, ["temperature"] = 0, ["stream"] = stream }.ToJsonString();

    private static async Task<JsonNode> Ok(HttpResponseMessage r)
    {
        string body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.OK, $"{(int)r.StatusCode}: {body}");
        return JsonNode.Parse(body)!;
    }

    /// <summary>The status and the one-line OpenAI error body.</summary>
    private static async Task<JsonNode> Refused(HttpResponseMessage r, HttpStatusCode status, string type, string code)
    {
        string body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == status, $"expected {(int)status}, got {(int)r.StatusCode}: {body}");
        Assert.Equal("application/json", r.Content.Headers.ContentType?.MediaType);
        Assert.Single(body.TrimEnd('\n').Split('\n'));
        var e = JsonNode.Parse(body)!["error"]!;
        Assert.Equal(type, (string?)e["type"]);
        Assert.Equal(code, (string?)e["code"]);
        Assert.True(e.AsObject().ContainsKey("param"));
        return e;
    }

    private static string Text(JsonNode response, bool chat) =>
        chat ? (string)response["choices"]![0]!["message"]!["content"]! : (string)response["choices"]![0]!["text"]!;

    /// <summary>What <c>reslora generate</c> prints for the prompt (without its final newline).</summary>
    private string Generate(string? adapter, string prompt, bool chat, string? stop = null)
    {
        var args = new List<string> { "generate", "--model", _f.ModelDir, "--prompt", prompt, "--max-new-tokens", Tokens.ToString(System.Globalization.CultureInfo.InvariantCulture) };
        if (adapter is not null) args.AddRange(new[] { "--adapter", _f.Dir(adapter) });
        if (chat) args.Add("--chat");
        if (stop is not null) args.AddRange(new[] { "--stop", stop });
        var (rc, output, err) = CliHarness.Run(args.ToArray());
        Assert.True(rc == 0, err);
        Assert.EndsWith(Environment.NewLine, output);
        return output[..^Environment.NewLine.Length];
    }

    /// <summary>The data lines of a Server-Sent Events body; the last must be [DONE].</summary>
    private static List<JsonNode> Events(string body)
    {
        var lines = body.Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.All(lines, l => Assert.StartsWith("data: ", l));
        Assert.Equal("data: [DONE]", lines[^1]);
        return lines[..^1].Select(l => JsonNode.Parse(l["data: ".Length..])!).ToList();
    }

    [Fact]
    public async Task CompletionsAndChat_WithAndWithoutAdapters_EqualGenerate()
    {
        await using var server = await _f.Start();
        using var client = Client(server);
        var models = await Ok(await client.GetAsync("/v1/models"));
        Assert.Equal(new[] { "tiny-chat", "tiny-chat:lora", "tiny-chat:dora" }, models["data"]!.AsArray().Select(m => (string)m!["id"]!));

        var answers = new List<string>();
        foreach (var adapter in new[] { null, "lora", "dora" })
        {
            string model = adapter is null ? _f.Name : $"{_f.Name}:{adapter}";
            var completion = await Ok(await Post(client, "/v1/completions", Completion(model, "The sky is")));
            Assert.Equal(Generate(adapter, "The sky is", chat: false), Text(completion, chat: false));
            Assert.Equal("text_completion", (string)completion["object"]!);
            Assert.Equal(model, (string)completion["model"]!);
            Assert.Equal(Tokens, (int)completion["usage"]!["completion_tokens"]!);
            answers.Add(Text(completion, chat: false));

            var chat = await Ok(await Post(client, "/v1/chat/completions", Chat(model, "What colour is snow?")));
            Assert.Equal(Generate(adapter, "What colour is snow?", chat: true), Text(chat, chat: true));
            Assert.Equal("chat.completion", (string)chat["object"]!);
            Assert.Equal("assistant", (string)chat["choices"]![0]!["message"]!["role"]!);
            answers.Add(Text(chat, chat: true));
        }
        Assert.Equal(6, answers.Distinct().Count()); // each adapter changes the answers
        Assert.All(answers, a => Assert.NotEmpty(a));
    }

    [Fact]
    public async Task Streaming_ChunksConcatenateToTheWholeAnswer()
    {
        await using var server = await _f.Start();
        using var client = Client(server);
        foreach (bool chat in new[] { false, true })
            foreach (var model in new[] { _f.Name, _f.Name + ":lora" })
            {
                string path = chat ? "/v1/chat/completions" : "/v1/completions";
                string whole = Text(await Ok(await Post(client, path, chat ? Chat(model, "hello", 12) : Completion(model, "hello", 12))), chat);
                var r = await Post(client, path, chat ? Chat(model, "hello", 12, stream: true) : Completion(model, "hello", 12, stream: true, extra: ",\"stream_options\":{\"include_usage\":true}"));
                Assert.Equal(HttpStatusCode.OK, r.StatusCode);
                Assert.Equal("text/event-stream", r.Content.Headers.ContentType?.MediaType);
                var events = Events(await r.Content.ReadAsStringAsync());
                var choices = events.Where(e => e["choices"]!.AsArray().Count == 1).Select(e => e["choices"]![0]!).ToList();
                string joined = string.Concat(choices.Select(c => chat ? (string?)c["delta"]!["content"] ?? "" : (string)c["text"]!));
                Assert.Equal(whole, joined);
                Assert.Equal("length", (string)choices[^1]["finish_reason"]!);
                Assert.All(choices.SkipLast(1), c => Assert.Null(c["finish_reason"]));
                Assert.All(events, e => Assert.Equal(chat ? "chat.completion.chunk" : "text_completion", (string)e["object"]!));
                if (chat) Assert.Equal("assistant", (string)choices[0]["delta"]!["role"]!);
                else Assert.Equal(12, (int)events[^1]["usage"]!["completion_tokens"]!); // include_usage: a last chunk without choices
            }
    }

    [Fact]
    public async Task StopStrings_EndTheReplyBeforeThem()
    {
        await using var server = await _f.Start();
        using var client = Client(server);
        string whole = Text(await Ok(await Post(client, "/v1/completions", Completion(_f.Name, "abc", 12))), chat: false);
        Assert.True(whole.Length >= 4, whole);
        string stop = whole.Substring(2, 2);
        var cut = await Ok(await Post(client, "/v1/completions", Completion(_f.Name, "abc", 12, extra: $",\"stop\":[{JsonValue.Create(stop).ToJsonString()}]")));
        Assert.Equal(whole[..whole.IndexOf(stop, StringComparison.Ordinal)], Text(cut, chat: false));
        Assert.Equal("stop", (string)cut["choices"]![0]!["finish_reason"]!);
    }

    /// <summary>
    /// One decode engine, one prompt-to-reply path and one set of sampling rules: the same greedy request with an adapter
    /// gives the same text from serve and generate, also with a stop string taken from the middle of the answer.
    /// </summary>
    [Theory]
    [InlineData("lora", false)]
    [InlineData("dora", false)]
    [InlineData("lora", true)]
    public async Task GreedyTextWithAnAdapter_IsGenerates_WithAndWithoutAStopString(string adapter, bool chat)
    {
        await using var server = await _f.Start();
        using var client = Client(server);
        string model = $"{_f.Name}:{adapter}", prompt = "The sky is", path = chat ? "/v1/chat/completions" : "/v1/completions";
        string Body(string extra) => (chat ? Chat(model, prompt) : Completion(model, prompt)).TrimEnd('}') + extra + "}";
        string whole = Generate(adapter, prompt, chat);
        Assert.Equal(whole, Text(await Ok(await Post(client, path, Body(""))), chat));
        Assert.True(whole.Length >= 2, $"the answer '{whole}' is too short to hold a stop string");
        string stop = whole.Substring(whole.Length / 2, 1);
        string cut = whole[..whole.IndexOf(stop, StringComparison.Ordinal)];
        Assert.Equal(cut, Generate(adapter, prompt, chat, stop));
        Assert.Equal(cut, Text(await Ok(await Post(client, path, Body(",\"stop\":[" + JsonValue.Create(stop).ToJsonString() + "]"))), chat));
    }

    [Fact]
    public async Task RepetitionPenalty_EqualsGenerateWithTheFlag_AndBadValuesAre400()
    {
        await using var server = await _f.Start();
        using var client = Client(server);
        var penalized = await Ok(await Post(client, "/v1/completions", Completion(_f.Name + ":lora", "The sky is", extra: ",\"repetition_penalty\":0.2")));
        var (rc, output, err) = CliHarness.Run("generate", "--model", _f.ModelDir, "--adapter", _f.Dir("lora"), "--prompt", "The sky is", "--max-new-tokens", Tokens.ToString(System.Globalization.CultureInfo.InvariantCulture), "--repetition-penalty", "0.2");
        Assert.True(rc == 0, err);
        Assert.Equal(output[..^Environment.NewLine.Length], Text(penalized, chat: false));
        Assert.NotEqual(Generate("lora", "The sky is", chat: false), Text(penalized, chat: false));
        var e = await Refused(await Post(client, "/v1/completions", Completion(_f.Name, "hi", extra: ",\"repetition_penalty\":0")), HttpStatusCode.BadRequest, "invalid_request_error", "invalid_value");
        Assert.Equal("repetition_penalty", (string?)e["param"]);
    }

    [Fact]
    public async Task BadRequests_GetTheDocumentedStatusAndMessage()
    {
        await using var server = await _f.Start(new ServingOptions { ModelDir = _f.ModelDir, MaxTokensLimit = 20 }, new ServeSettings { MaxRequestBytes = 2000 });
        using var client = Client(server);

        var e = await Refused(await Post(client, "/v1/completions", "{\"model\": \"tiny-chat\", \"prompt\": "), HttpStatusCode.BadRequest, "invalid_request_error", "invalid_json");
        Assert.Contains("not valid JSON", (string)e["message"]!);

        e = await Refused(await Post(client, "/v1/completions", Completion("tiny-chat:nope", "hi")), HttpStatusCode.NotFound, "invalid_request_error", "model_not_found");
        Assert.Equal("the model 'tiny-chat:nope' is not served; served models: tiny-chat, tiny-chat:lora, tiny-chat:dora.", (string)e["message"]!);
        Assert.Equal("model", (string?)e["param"]);

        e = await Refused(await Post(client, "/v1/completions", Completion("tiny-chat", new string('x', 3000))), HttpStatusCode.RequestEntityTooLarge, "invalid_request_error", "request_too_large");
        Assert.Contains("limit of 2000 bytes (--max-request-bytes)", (string)e["message"]!);

        e = await Refused(await Post(client, "/v1/chat/completions", Chat("tiny-chat", "hi", maxTokens: 21)), HttpStatusCode.BadRequest, "invalid_request_error", "invalid_value");
        Assert.Equal("max_tokens is 21, over this server's limit of 20 (--max-tokens-limit).", (string)e["message"]!);
        Assert.Equal("max_tokens", (string?)e["param"]);

        e = await Refused(await Post(client, "/v1/completions", "{\"model\":\"tiny-chat\",\"prompt\":\"hi\",\"temperature\":\"hot\"}"), HttpStatusCode.BadRequest, "invalid_request_error", "invalid_value");
        Assert.Equal("temperature must be a number.", (string)e["message"]!);
        Assert.Equal("temperature", (string?)e["param"]);

        e = await Refused(await Post(client, "/v1/chat/completions", "{\"model\":\"tiny-chat\",\"messages\":[{\"role\":\"wizard\",\"content\":\"hi\"}]}"), HttpStatusCode.BadRequest, "invalid_request_error", "invalid_value");
        Assert.Equal("messages[0].role", (string?)e["param"]);

        e = await Refused(await Post(client, "/v1/completions", "{\"model\":\"tiny-chat\",\"prompt\":\"hi\",\"n\":2}"), HttpStatusCode.BadRequest, "invalid_request_error", "invalid_value");
        Assert.Contains("only n = 1", (string)e["message"]!);

        await Refused(await client.GetAsync("/v2/nothing"), HttpStatusCode.NotFound, "invalid_request_error", "not_found");
        // Refusals cost the queue nothing.
        Assert.Equal(0, server.Model.Scheduler.Queued);
    }

    [Fact]
    public async Task ApiKey_MissingOrWrong_Is401_Right_Is200()
    {
        await using var server = await _f.Start(settings: new ServeSettings { ApiKey = "sesame" });
        using var client = Client(server);
        var e = await Refused(await client.GetAsync("/v1/models"), HttpStatusCode.Unauthorized, "authentication_error", "invalid_api_key");
        Assert.Contains("Authorization: Bearer", (string)e["message"]!);
        client.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", "open");
        e = await Refused(await Post(client, "/v1/completions", Completion(_f.Name, "hi")), HttpStatusCode.Unauthorized, "authentication_error", "invalid_api_key");
        Assert.Equal("the API key is not valid.", (string)e["message"]!);
        client.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", "sesame");
        await Ok(await Post(client, "/v1/completions", Completion(_f.Name, "hi")));
    }

    /// <summary>A worker that stops before each batch until the test lets it go; <see cref="Entered"/> counts batches begun.</summary>
    internal sealed class Gate : IDisposable
    {
        private readonly ManualResetEventSlim _open = new(false);
        public SemaphoreSlim Entered { get; } = new(0);
        public List<int> Sizes { get; } = new();

        public void BeforeBatch(int size)
        {
            lock (Sizes) Sizes.Add(size);
            Entered.Release();
            _open.Wait(TimeSpan.FromMinutes(2));
        }

        public void Open() => _open.Set();

        public void Dispose()
        {
            _open.Set();
            _open.Dispose();
            Entered.Dispose();
        }
    }

    internal static async Task Until(Func<bool> condition)
    {
        for (int i = 0; i < 6000 && !condition(); i++) await Task.Delay(10);
        Assert.True(condition(), "the condition did not hold within a minute");
    }

    [Fact]
    public async Task FullQueue_Is429WithRetryAfter_AndTheQueuedRequestsStillComplete()
    {
        using var gate = new Gate();
        await using var server = await _f.Start(new ServingOptions { ModelDir = _f.ModelDir, MaxBatch = 1, MaxQueue = 1, BeforeBatch = gate.BeforeBatch });
        using var client = Client(server);
        var running = Post(client, "/v1/completions", Completion(_f.Name, "one"));
        Assert.True(await gate.Entered.WaitAsync(TimeSpan.FromMinutes(1))); // the worker holds "one"
        var queued = Post(client, "/v1/completions", Completion(_f.Name + ":lora", "two"));
        await Until(() => server.Model.Scheduler.Queued == 1);

        var full = await Post(client, "/v1/chat/completions", Chat(_f.Name, "three"));
        var e = await Refused(full, HttpStatusCode.TooManyRequests, "rate_limit_error", "queue_full");
        Assert.Equal("the queue is full (1 requests wait for a batch); retry shortly.", (string)e["message"]!);
        Assert.Equal(TimeSpan.FromSeconds(1), full.Headers.RetryAfter?.Delta);
        var fullStream = await Post(client, "/v1/completions", Completion(_f.Name, "four", stream: true));
        await Refused(fullStream, HttpStatusCode.TooManyRequests, "rate_limit_error", "queue_full");

        gate.Open();
        Assert.Equal(Generate(null, "one", chat: false), Text(await Ok(await running), chat: false));
        Assert.Equal(Generate("lora", "two", chat: false), Text(await Ok(await queued), chat: false));
    }

    [Fact]
    public async Task ConcurrentRequests_WithDifferentAdapters_GetTheSequentialAnswers()
    {
        var cases = new List<(string Path, string Body, bool Chat)>();
        string[] models = { _f.Name, _f.Name + ":lora", _f.Name + ":dora" };
        for (int i = 0; i < 9; i++)
        {
            string m = models[i % 3];
            string prompt = $"question {i}";
            cases.Add(i % 2 == 0
                ? ("/v1/completions", Completion(m, prompt, maxTokens: 3 + i % 4), false)
                : ("/v1/chat/completions", new JsonObject
                {
                    ["model"] = m,
                    ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = prompt }),
                    ["max_tokens"] = 4 + i % 3,
                    ["temperature"] = 0.8,
                    ["top_p"] = 0.9,
                    ["seed"] = 100 + i,
                }.ToJsonString(), true));
        }

        var sequential = new List<string>();
        await using (var one = await _f.Start(new ServingOptions { ModelDir = _f.ModelDir, MaxBatch = 1 }))
        {
            using var client = Client(one);
            foreach (var (path, body, chat) in cases) sequential.Add(Text(await Ok(await Post(client, path, body)), chat));
        }

        using var gate = new Gate();
        await using var server = await _f.Start(new ServingOptions { ModelDir = _f.ModelDir, MaxBatch = 8, BeforeBatch = gate.BeforeBatch });
        using var c = Client(server);
        // Hold the worker on a first request so the others queue up and share the next batch.
        var first = Post(c, cases[0].Path, cases[0].Body);
        Assert.True(await gate.Entered.WaitAsync(TimeSpan.FromMinutes(1)));
        var rest = cases.Skip(1).Select(x => Post(c, x.Path, x.Body)).ToList();
        await Until(() => server.Model.Scheduler.Queued == cases.Count - 1);
        gate.Open();
        var answers = new List<string> { Text(await Ok(await first), cases[0].Chat) };
        for (int i = 0; i < rest.Count; i++) answers.Add(Text(await Ok(await rest[i]), cases[i + 1].Chat));
        Assert.Equal(sequential, answers);
        Assert.Equal(new[] { 1, 8 }, gate.Sizes.Take(2)); // the queued requests were batched, mixing adapters and settings
    }

    [Fact]
    public async Task Shutdown_FinishesRequestsInFlight_AndRefusesNewOnes()
    {
        using var gate = new Gate();
        var server = await _f.Start(new ServingOptions { ModelDir = _f.ModelDir, MaxBatch = 1, BeforeBatch = gate.BeforeBatch });
        using var client = Client(server);
        var running = Post(client, "/v1/completions", Completion(_f.Name + ":dora", "first"));
        Assert.True(await gate.Entered.WaitAsync(TimeSpan.FromMinutes(1)));
        var queued = Post(client, "/v1/chat/completions", Chat(_f.Name + ":lora", "second", stream: true));
        await Until(() => server.Model.Scheduler.Queued == 1);

        var stopping = server.StopAsync();
        // New requests are refused with 503 (here through the library; over HTTP in ServeHardeningTests).
        var refused = await Assert.ThrowsAsync<ServingException>(() => server.Model.CompleteAsync(new CompletionRequest { Model = _f.Name, Prompt = "late" }));
        Assert.Equal(ServingErrorKind.ShuttingDown, refused.Kind);
        Assert.False(stopping.IsCompleted);

        gate.Open();
        Assert.Equal(Generate("dora", "first", chat: false), Text(await Ok(await running), chat: false));
        var r = await queued;
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        var events = Events(await r.Content.ReadAsStringAsync());
        Assert.Equal(Generate("lora", "second", chat: true), string.Concat(events.Select(e => (string?)e["choices"]![0]!["delta"]!["content"] ?? "")));
        await stopping.WaitAsync(TimeSpan.FromMinutes(1));
    }

    [Fact]
    public async Task ShuttingDown_Is503()
    {
        await using var server = await _f.Start();
        using var client = Client(server);
        server.Model.Scheduler.StopAccepting();
        var e = await Refused(await Post(client, "/v1/completions", Completion(_f.Name, "hi")), HttpStatusCode.ServiceUnavailable, "server_error", "shutting_down");
        Assert.Equal("the server is shutting down and takes no new requests.", (string)e["message"]!);
    }
}
