using System.Net;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;
using ResLora.Extensions.AI;
using ResLora.Pipelines.Serving;
using ResLora.Tests.Serving;

namespace ResLora.Tests.ExtensionsAI;

/// <summary>
/// <see cref="ResLoraChatClient"/> driven as a Microsoft.Extensions.AI consumer drives any <see cref="IChatClient"/>, over
/// the serve tests' tiny ChatML model and its two adapters: the same request gives serve's text (greedy and seeded
/// sampling, each adapter chosen per call), streamed updates concatenate to the whole answer, options map to serve's
/// fields, cancellation stops a stream and leaves the client usable, and what it cannot do is refused.
/// </summary>
public sealed class ChatClientTests : IClassFixture<ServingFixture>
{
    private const int Tokens = 12;
    private static readonly ChatMessage[] Hello = { new(ChatRole.User, "Hello, who are you?") };
    private readonly ServingFixture _f;

    public ChatClientTests(ServingFixture fixture) => _f = fixture;

    private ResLoraChatClient Load() => ResLoraChatClient.Load(new ServingOptions
    {
        ModelDir = _f.ModelDir,
        Adapters = new[] { new KeyValuePair<string, string>("lora", _f.Dir("lora")), new KeyValuePair<string, string>("dora", _f.Dir("dora")) },
    }, new RuntimeOptions { Threads = 1 });

    private static ChatOptions Greedy(string? model = null, int tokens = Tokens) => new() { ModelId = model, Temperature = 0, MaxOutputTokens = tokens };

    /// <summary>serve's answer (text, finish reason, prompt and completion tokens) to the same chat request over HTTP.</summary>
    private async Task<(string Text, string Finish, int Prompt, int Completion)> Serve(string model, JsonObject extra)
    {
        await using var server = await _f.Start();
        using var client = ServingFixture.Client(server);
        var body = new JsonObject { ["model"] = model, ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = Hello[0].Text }) };
        foreach (var (k, v) in extra) body[k] = v?.DeepClone();
        var r = await ServingFixture.Post(client, "/v1/chat/completions", body.ToJsonString());
        string json = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.OK, json);
        var answer = JsonNode.Parse(json)!;
        var choice = answer["choices"]![0]!;
        return ((string)choice["message"]!["content"]!, (string)choice["finish_reason"]!, (int)answer["usage"]!["prompt_tokens"]!, (int)answer["usage"]!["completion_tokens"]!);
    }

    [Fact]
    public async Task Chat_WithAdapterChosenPerCall_EqualsServe()
    {
        using var chat = Load();
        var texts = new List<string>();
        foreach (var (modelId, served) in new[] { ((string?)null, "tiny-chat"), ("lora", "tiny-chat:lora"), ("tiny-chat:dora", "tiny-chat:dora") })
        {
            var response = await chat.GetResponseAsync(Hello, Greedy(modelId));
            var expected = await Serve(served, new JsonObject { ["temperature"] = 0, ["max_tokens"] = Tokens });
            Assert.Equal(expected.Text, response.Text);
            Assert.Equal(served, response.ModelId);
            Assert.Equal(expected.Finish == "stop" ? ChatFinishReason.Stop : ChatFinishReason.Length, response.FinishReason);
            Assert.Equal(expected.Prompt, response.Usage!.InputTokenCount);
            Assert.Equal(expected.Completion, response.Usage.OutputTokenCount);
            Assert.Equal(expected.Prompt + expected.Completion, response.Usage.TotalTokenCount);
            Assert.Equal(ChatRole.Assistant, Assert.Single(response.Messages).Role);
            texts.Add(response.Text);
        }
        Assert.Equal(3, texts.Distinct().Count()); // each adapter really changed the answer
    }

    [Fact]
    public async Task SeededSampling_MapsTemperatureTopPSeed_AsServeDoes()
    {
        using var chat = Load();
        var options = new ChatOptions { ModelId = "lora", Temperature = 0.9f, TopP = 0.8f, Seed = 5, MaxOutputTokens = Tokens };
        var first = await chat.GetResponseAsync(Hello, options);
        var expected = await Serve("tiny-chat:lora", new JsonObject { ["temperature"] = 0.9f, ["top_p"] = 0.8f, ["seed"] = 5, ["max_tokens"] = Tokens });
        Assert.Equal(expected.Text, first.Text);
        Assert.Equal(first.Text, (await chat.GetResponseAsync(Hello, options)).Text);
        var greedy = await chat.GetResponseAsync(Hello, Greedy("lora"));
        Assert.NotEqual(greedy.Text, first.Text); // sampling is on, not greedy
        Assert.NotEqual(first.Text, (await chat.GetResponseAsync(Hello, new ChatOptions { ModelId = "lora", Temperature = 0.9f, TopP = 0.8f, Seed = 6, MaxOutputTokens = Tokens })).Text);
    }

    [Fact]
    public async Task Streaming_UpdatesConcatenate_ToTheResponse()
    {
        using var chat = Load();
        foreach (var model in new[] { "tiny-chat", "dora" })
        {
            var whole = await chat.GetResponseAsync(Hello, Greedy(model));
            var updates = new List<ChatResponseUpdate>();
            await foreach (var u in chat.GetStreamingResponseAsync(Hello, Greedy(model))) updates.Add(u);
            Assert.True(updates.Count(u => u.Text.Length > 0) >= 2, $"one piece only: '{whole.Text}'");
            Assert.Equal(whole.Text, string.Concat(updates.Select(u => u.Text)));
            Assert.All(updates, u => Assert.Equal(ChatRole.Assistant, u.Role));
            Assert.Single(updates.Select(u => u.ResponseId).Distinct());
            Assert.Equal(whole.FinishReason, updates[^1].FinishReason);
            Assert.All(updates[..^1], u => Assert.Null(u.FinishReason));
            var merged = updates.ToChatResponse();
            Assert.Equal(whole.Text, merged.Text);
            Assert.Equal(whole.Usage!.InputTokenCount, merged.Usage!.InputTokenCount);
            Assert.Equal(whole.Usage.OutputTokenCount, merged.Usage.OutputTokenCount);
            Assert.Equal(whole.ModelId, merged.ModelId);
        }
    }

    [Fact]
    public async Task MaxOutputTokens_AndStopSequences_AreHonoured()
    {
        using var chat = Load();
        var full = await chat.GetResponseAsync(Hello, Greedy("lora"));
        Assert.Equal(Tokens, full.Usage!.OutputTokenCount);
        Assert.Equal(ChatFinishReason.Length, full.FinishReason);

        var three = await chat.GetResponseAsync(Hello, Greedy("lora", 3));
        Assert.Equal(3, three.Usage!.OutputTokenCount);
        Assert.Equal(ChatFinishReason.Length, three.FinishReason);
        Assert.Equal((await Serve("tiny-chat:lora", new JsonObject { ["temperature"] = 0, ["max_tokens"] = 3 })).Text, three.Text);

        // A stop sequence from the middle of the full answer: the reply ends just before its first occurrence.
        string text = full.Text;
        int at = Enumerable.Range(2, text.Length - 4).First(i => !char.IsSurrogate(text[i]) && !char.IsSurrogate(text[i + 1]) && text[i] != '\uFFFD' && text[i + 1] != '\uFFFD');
        string stop = text.Substring(at, 2);
        var options = Greedy("lora");
        options.StopSequences = new List<string> { stop };
        var cut = await chat.GetResponseAsync(Hello, options);
        Assert.Equal(text[..text.IndexOf(stop, StringComparison.Ordinal)], cut.Text);
        Assert.Equal(ChatFinishReason.Stop, cut.FinishReason);
        Assert.True(cut.Usage!.OutputTokenCount < Tokens);
        var streamed = new List<ChatResponseUpdate>();
        await foreach (var u in chat.GetStreamingResponseAsync(Hello, options)) streamed.Add(u);
        Assert.Equal(cut.Text, string.Concat(streamed.Select(u => u.Text))); // no piece of the stop text was streamed
    }

    [Fact]
    public async Task Cancellation_MidStream_Throws_AndTheClientStillWorks()
    {
        using var chat = Load();
        var model = (ServedModel)chat.GetService(typeof(ServedModel))!;
        var long_ = Greedy("dora", 80);
        var before = await chat.GetResponseAsync(Hello, long_);
        Assert.True(before.Usage!.OutputTokenCount > 10, $"a short reply ({before.Usage.OutputTokenCount} tokens) cannot be cancelled mid-stream");

        using var cts = new CancellationTokenSource();
        int seen = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var u in chat.GetStreamingResponseAsync(Hello, long_, cts.Token))
            {
                seen++;
                cts.Cancel();
            }
        });
        Assert.Equal(1, seen);
        // The row left its batch: the worker goes idle (nothing waits or runs).
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (model.Scheduler.Running + model.Scheduler.Queued > 0 && DateTime.UtcNow < deadline) await Task.Delay(10);
        Assert.Equal(0, model.Scheduler.Running + model.Scheduler.Queued);

        // A token cancelled before the call: nothing is generated.
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => chat.GetResponseAsync(Hello, long_, cts.Token));

        // Leaving a stream early (break) also frees its row; the client answers as before.
        await foreach (var u in chat.GetStreamingResponseAsync(Hello, long_)) break;
        var after = await chat.GetResponseAsync(Hello, long_);
        Assert.Equal(before.Text, after.Text);
        Assert.Equal(before.Usage.OutputTokenCount, after.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task UnsupportedOptionsAndBadValues_AreRefused_NamingTheOption()
    {
        using var chat = Load();
        var tool = AIFunctionFactory.Create(() => 42, "answer");
        var e = await Assert.ThrowsAsync<NotSupportedException>(() => chat.GetResponseAsync(Hello, new ChatOptions { Tools = new List<AITool> { tool } }));
        Assert.Contains("ChatOptions.Tools", e.Message);
        e = await Assert.ThrowsAsync<NotSupportedException>(() => chat.GetResponseAsync(Hello, new ChatOptions { TopK = 5 }));
        Assert.Contains("ChatOptions.TopK", e.Message);
        e = await Assert.ThrowsAsync<NotSupportedException>(async () =>
        {
            await foreach (var _ in chat.GetStreamingResponseAsync(Hello, new ChatOptions { ResponseFormat = ChatResponseFormat.Json })) { }
        });
        Assert.Contains("ChatOptions.ResponseFormat", e.Message);
        var call = new ChatMessage(ChatRole.Assistant, new List<AIContent> { new FunctionCallContent("c1", "answer") });
        e = await Assert.ThrowsAsync<NotSupportedException>(() => chat.GetResponseAsync(new[] { Hello[0], call }));
        Assert.Contains("messages[1]", e.Message);

        var a = await Assert.ThrowsAsync<ArgumentException>(() => chat.GetResponseAsync(Hello, new ChatOptions { ModelId = "nope" }));
        Assert.Contains("tiny-chat:lora", a.Message); // lists what is served
        a = await Assert.ThrowsAsync<ArgumentException>(() => chat.GetResponseAsync(Hello, new ChatOptions { Temperature = 3 }));
        Assert.StartsWith("ChatOptions.Temperature", a.Message);
        a = await Assert.ThrowsAsync<ArgumentException>(async () =>
        {
            await foreach (var _ in chat.GetStreamingResponseAsync(Hello, new ChatOptions { MaxOutputTokens = 100_000 })) { }
        });
        Assert.StartsWith("ChatOptions.MaxOutputTokens", a.Message);
        a = Assert.Throws<ArgumentException>(() => new ResLoraChatClient((ServedModel)chat.GetService(typeof(ServedModel))!, "nope", ownsModel: false));
        Assert.Equal("defaultModelId", a.ParamName);
    }

    [Fact]
    public async Task GetServiceAndDispose_GiveMetadata_AndReleaseTheModel()
    {
        var chat = Load();
        var meta = chat.GetService<ChatClientMetadata>()!;
        Assert.Equal("reslora", meta.ProviderName);
        Assert.Equal("tiny-chat", meta.DefaultModelId);
        Assert.Null(chat.GetService<ChatClientMetadata>("some-key"));
        Assert.Same(chat, chat.GetService<IChatClient>());
        var model = chat.GetService<ServedModel>()!;
        Assert.Equal(new[] { "tiny-chat", "tiny-chat:lora", "tiny-chat:dora" }, chat.ModelIds);

        // A second client over the same model, not owning it, chooses its default; disposing it leaves the model alone.
        using (var shared = new ResLoraChatClient(model, "lora", ownsModel: false))
        {
            Assert.Equal("tiny-chat:lora", shared.GetService<ChatClientMetadata>()!.DefaultModelId);
            Assert.Equal((await chat.GetResponseAsync(Hello, Greedy("lora"))).Text, (await shared.GetResponseAsync(Hello, Greedy())).Text);
        }
        Assert.NotNull((await chat.GetResponseAsync(Hello, Greedy(tokens: 2))).Text);

        chat.Dispose();
        chat.Dispose(); // twice is fine
        await Assert.ThrowsAsync<ObjectDisposedException>(() => chat.GetResponseAsync(Hello));
        var refused = await Assert.ThrowsAsync<ServingException>(() => model.CompleteAsync(new CompletionRequest { Model = "tiny-chat", Messages = new[] { new ResLora.Text.Templates.ChatMessage("user", "hi") } }));
        Assert.Equal(ServingErrorKind.ShuttingDown, refused.Kind);
    }
}
