using System.Net;
using System.Text.Json.Nodes;
using ResLora.Pipelines;
using ResLora.Pipelines.Serving;
using ResLora.Scoring;
using ResLora.Text;
using static ResLora.Tests.Serving.ServingFixture;

namespace ResLora.Tests.Serving;

/// <summary>
/// Issue 33 part 5: <c>/v1/completions</c> speaks lm-evaluation-harness's <c>local-completions</c>. Echoed prompt
/// logprobs equal <see cref="TokenLogprobs.Score"/> on the same tokens with the request's adapter, lm-eval's parse of the
/// answer gives the continuation's log-likelihood, batches of token-id prompts answer in order, and each malformed
/// request is a 400 naming its field.
/// </summary>
[Collection("console")]
public sealed class ServeLogprobsTests : IClassFixture<ServingFixture>, IDisposable
{
    private const double Tolerance = 1e-5;
    private readonly ServingFixture _f;
    private readonly AdapterSet _reference;
    private readonly ITextTokenizer _tok;

    public ServeLogprobsTests(ServingFixture fixture)
    {
        _f = fixture;
        // The reference: the same folders loaded apart from the server, scored with the reference scorer.
        _reference = AdapterSet.Load(_f.ModelDir, new RuntimeOptions());
        _reference.Add("lora", _f.Dir("lora"));
        _reference.Add("dora", _f.Dir("dora"));
        _tok = TokenizerLoader.Load(_f.ModelDir);
    }

    public void Dispose() => _reference.Dispose();

    private IReadOnlyList<TokenScore> Score(string? adapter, IReadOnlyList<int> tokens, int from, int topK = 0) =>
        TokenLogprobs.Score(ids => _reference.Forward(ids, null, new[] { adapter }), tokens, from, topK);

    private static string Body(string model, JsonNode prompt, int maxTokens, bool echo = true, int? logprobs = 1) =>
        new JsonObject
        {
            ["model"] = model,
            ["prompt"] = prompt,
            ["max_tokens"] = maxTokens,
            ["temperature"] = 0,
            ["seed"] = 1234,
            ["echo"] = echo,
            ["logprobs"] = logprobs,
        }.ToJsonString();

    private static JsonArray Ids(IEnumerable<int> ids) => new(ids.Select(i => (JsonNode?)i).ToArray());

    private static async Task<JsonNode> Ok(HttpResponseMessage r)
    {
        string body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.OK, $"{(int)r.StatusCode}: {body}");
        return JsonNode.Parse(body)!;
    }

    private static double?[] TokenLogprobsOf(JsonNode choice) =>
        choice["logprobs"]!["token_logprobs"]!.AsArray().Select(v => v is null ? (double?)null : (double)v).ToArray();

    [Fact]
    public async Task EchoedPromptLogprobs_EqualTokenLogprobs_WithAndWithoutAdapter()
    {
        await using var server = await _f.Start();
        using var client = Client(server);
        var ids = _tok.Encode("The sky is blue today.").ToArray();
        var perModel = new List<double[]>();
        foreach (var adapter in new[] { null, "lora", "dora" })
        {
            string model = adapter is null ? _f.Name : $"{_f.Name}:{adapter}";
            var expected = Score(adapter, ids, 1, topK: 3);
            var choice = (await Ok(await Post(client, "/v1/completions", Body(model, new JsonArray(Ids(ids)), maxTokens: 0, logprobs: 3))))["choices"]![0]!;
            var lp = choice["logprobs"]!;
            var got = TokenLogprobsOf(choice);
            Assert.Equal(ids.Length, got.Length);
            Assert.Null(got[0]); // the first token has no context
            Assert.Null(lp["top_logprobs"]![0]);
            for (int i = 1; i < ids.Length; i++)
            {
                Assert.Equal(expected[i - 1].Logprob, got[i]!.Value, Tolerance);
                var top = lp["top_logprobs"]![i]!.AsObject();
                string own = (string)lp["tokens"]![i]!;
                Assert.Equal(_tok.Decode(new[] { ids[i] }, skipSpecialTokens: false), own);
                // The 3 alternatives and the token itself, one key per text (byte tokens that decode alike share one).
                var keys = expected[i - 1].Top.Select(t => _tok.Decode(new[] { t.Token }, skipSpecialTokens: false)).Append(own).Distinct().ToList();
                Assert.Equal(keys, top.Select(kv => kv.Key).ToList());
                Assert.Equal(expected[i - 1].Logprob, (double)top[own]!, Tolerance); // the token's own entry is always there
                Assert.Equal(expected[i - 1].Top[0].Logprob, top.Max(kv => (double)kv.Value!), Tolerance);
                if (expected[i - 1].IsGreedy) Assert.Equal(expected[i - 1].Logprob, top.Max(kv => (double)kv.Value!), Tolerance);
            }
            Assert.Equal(_tok.Decode(ids, skipSpecialTokens: false), (string)choice["text"]!);
            Assert.Equal("length", (string)choice["finish_reason"]!);
            Assert.Equal(0, (int)lp["text_offset"]![0]!);
            Assert.Equal(0, (int)(await Ok(await Post(client, "/v1/completions", Body(model, new JsonArray(Ids(ids)), maxTokens: 0, logprobs: 3))))["usage"]!["completion_tokens"]!);

            // A string prompt is encoded as the server encodes completions (this tokenizer adds no BOS): the same entries.
            var fromText = (await Ok(await Post(client, "/v1/completions", Body(model, "The sky is blue today.", maxTokens: 0, logprobs: 3))))["choices"]![0]!;
            Assert.Equal(got, TokenLogprobsOf(fromText));
            Assert.Equal("The sky is blue today.", (string)fromText["text"]!);
            perModel.Add(got.Skip(1).Select(v => v!.Value).ToArray());
        }
        // Each adapter changes the scores, so the routing is seen: not the base's scores three times.
        Assert.True(perModel[0].Zip(perModel[1]).Max(p => Math.Abs(p.First - p.Second)) > 1e-3);
        Assert.True(perModel[0].Zip(perModel[2]).Max(p => Math.Abs(p.First - p.Second)) > 1e-3);
    }

    [Fact]
    public async Task LmEvalParse_GivesTheContinuationsLoglikelihood()
    {
        await using var server = await _f.Start();
        using var client = Client(server);
        var context = _tok.Encode("Question: what colour is the sky? Answer:").ToArray();
        var continuation = _tok.Encode(" blue").ToArray();
        var whole = context.Concat(continuation).ToArray();
        int ctxlen = context.Length;
        foreach (var adapter in new[] { null, "lora" })
        {
            string model = adapter is null ? _f.Name : $"{_f.Name}:{adapter}";
            var expected = Score(adapter, whole, ctxlen, topK: 1);
            double loglikelihood = expected.Sum(s => s.Logprob);
            bool greedy = expected.All(s => s.IsGreedy);

            // lm-eval's loglikelihood payload: echo, logprobs 1, max_tokens 1, a batch of one token-id list.
            var choice = (await Ok(await Post(client, "/v1/completions", Body(model, new JsonArray(Ids(whole)), maxTokens: 1))))["choices"]![0]!;
            var got = TokenLogprobsOf(choice);
            Assert.Equal(whole.Length + 1, got.Length); // the prompt's tokens and the one generated
            double parsed = got[ctxlen..^1].Sum(v => v!.Value); // lm-eval: sum(token_logprobs[ctxlen:-1])
            Assert.Equal(loglikelihood, parsed, Tolerance);
            var tops = choice["logprobs"]!["top_logprobs"]!.AsArray().Skip(ctxlen).Take(continuation.Length).ToList();
            bool parsedGreedy = got[ctxlen..^1].Zip(tops).All(p => p.First == p.Second!.AsObject().Max(kv => (double)kv.Value!)); // lm-eval's is_greedy
            Assert.Equal(greedy, parsedGreedy);

            // The generated token is the greedy one: its entry is the best log-probability after the whole prompt.
            var next = Score(adapter, whole.Append(0).ToArray(), whole.Length, topK: 1)[0].Top[0];
            Assert.Equal(next.Logprob, got[^1]!.Value, Tolerance);
            Assert.EndsWith(_tok.Decode(new[] { next.Token }), (string)choice["text"]!);
            // That request scores and picks the token in one forward: the token is the one generation picks.
            var generated = await Ok(await Post(client, "/v1/completions", Body(model, new JsonArray(Ids(whole)), maxTokens: 1, echo: false, logprobs: null)));
            Assert.Equal(_tok.Decode(whole, skipSpecialTokens: false) + (string)generated["choices"]![0]!["text"]!, (string)choice["text"]!);
            Assert.Equal((string)generated["choices"]![0]!["finish_reason"]!, (string)choice["finish_reason"]!);
            var none = (await Ok(await Post(client, "/v1/completions", Body(model, new JsonArray(Ids(whole)), maxTokens: 1, logprobs: 0))))["choices"]![0]!;
            Assert.Equal(got, TokenLogprobsOf(none));
            Assert.All(none["logprobs"]!["top_logprobs"]!.AsArray().Skip(1), t => Assert.Single(t!.AsObject())); // logprobs 0: the token's own entry only

            // max_tokens 0: the prompt only, and the parse is token_logprobs[ctxlen:].
            var scored = TokenLogprobsOf((await Ok(await Post(client, "/v1/completions", Body(model, new JsonArray(Ids(whole)), maxTokens: 0))))["choices"]![0]!);
            Assert.Equal(whole.Length, scored.Length);
            Assert.Equal(loglikelihood, scored[ctxlen..].Sum(v => v!.Value), Tolerance);
        }
    }

    [Fact]
    public async Task BatchOfTokenIdPrompts_AnswersEachInOrder()
    {
        await using var server = await _f.Start();
        using var client = Client(server);
        string model = _f.Name + ":lora";
        var prompts = new[] { "One two three four five", "Hi", "The quick brown fox" }.Select(p => _tok.Encode(p).ToArray()).ToArray();

        var batch = await Ok(await Post(client, "/v1/completions", Body(model, new JsonArray(prompts.Select(p => (JsonNode?)Ids(p)).ToArray()), maxTokens: 0, logprobs: 0)));
        var choices = batch["choices"]!.AsArray();
        Assert.Equal(3, choices.Count);
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.Equal(i, (int)choices[i]!["index"]!);
            var expected = Score("lora", prompts[i], 1);
            var got = TokenLogprobsOf(choices[i]!);
            Assert.Equal(prompts[i].Length, got.Length);
            for (int j = 1; j < got.Length; j++) Assert.Equal(expected[j - 1].Logprob, got[j]!.Value, Tolerance);
            // logprobs 0: no alternatives, only the token's own entry.
            Assert.All(choices[i]!["logprobs"]!["top_logprobs"]!.AsArray().Skip(1), t => Assert.Single(t!.AsObject()));
        }
        Assert.Equal(prompts.Sum(p => p.Length), (int)batch["usage"]!["prompt_tokens"]!);

        // Generation from token-id prompts (lm-eval's generate_until with tokenized requests): each choice is what the
        // prompt gets alone, in order, and the usage sums the choices.
        var generated = await Ok(await Post(client, "/v1/completions", Body(model, new JsonArray(prompts.Select(p => (JsonNode?)Ids(p)).ToArray()), maxTokens: 4, echo: false, logprobs: null)));
        int completionTokens = 0;
        for (int i = 0; i < prompts.Length; i++)
        {
            var alone = await Ok(await Post(client, "/v1/completions", Body(model, new JsonArray(Ids(prompts[i])), maxTokens: 4, echo: false, logprobs: null)));
            Assert.Equal((string)alone["choices"]![0]!["text"]!, (string)generated["choices"]![i]!["text"]!);
            Assert.Null(generated["choices"]![i]!["logprobs"]);
            completionTokens += (int)alone["usage"]!["completion_tokens"]!;
        }
        Assert.Equal(completionTokens, (int)generated["usage"]!["completion_tokens"]!);
        Assert.True(completionTokens > prompts.Length); // something was generated
    }

    [Fact]
    public async Task LogprobsWithoutEcho_CoverTheGeneratedTokensOnly()
    {
        await using var server = await _f.Start();
        using var client = Client(server);
        var ids = _tok.Encode("Once upon").ToArray();
        var choice = (await Ok(await Post(client, "/v1/completions", Body(_f.Name, "Once upon", maxTokens: 3, echo: false, logprobs: 2))))["choices"]![0]!;
        var got = TokenLogprobsOf(choice);
        Assert.Equal(3, got.Length);
        Assert.All(got, v => Assert.NotNull(v));
        // Greedy generation: each generated token is the best one, so its log-probability is the top alternative's.
        var tops = choice["logprobs"]!["top_logprobs"]!.AsArray();
        for (int i = 0; i < 3; i++) Assert.Equal(tops[i]!.AsObject().Max(kv => (double)kv.Value!), got[i]!.Value, Tolerance);
        Assert.Equal("Once upon".Length, (int)choice["logprobs"]!["text_offset"]![0]!);
        Assert.Equal(Score(null, ids.Append(0).ToArray(), ids.Length, topK: 1)[0].Top[0].Logprob, got[0]!.Value, Tolerance);
    }

    [Fact]
    public async Task MalformedRequests_Are400sNamingTheField()
    {
        await using var server = await _f.Start(new ServingOptions { ModelDir = _f.ModelDir, MaxQueue = 4 });
        using var client = Client(server);
        int vocab = server.Model.Adapters.Model.Config.VocabSize;
        var cases = new (string Body, string Param, string Says)[]
        {
            (Body(_f.Name, "a", 0, logprobs: 6), "logprobs", "from 0 to 5"),
            (Body(_f.Name, "a", 0, logprobs: -1), "logprobs", "from 0 to 5"),
            (Body(_f.Name, "a", 0).Replace("\"logprobs\":1", "\"logprobs\":1.5", StringComparison.Ordinal), "logprobs", "integer"),
            (Body(_f.Name, "a", 0).Replace("\"logprobs\":1", "\"logprobs\":\"two\"", StringComparison.Ordinal), "logprobs", "integer"),
            (Body(_f.Name, "a", 4).TrimEnd('}') + ",\"stream\":true}", "echo", "stream"),
            (Body(_f.Name, "a", 0, echo: false), "max_tokens", "echo"),
            (Body(_f.Name, new JsonArray(Ids(new[] { 1, vocab })), 0), "prompt", $"token id {vocab} at position 1"),
            (Body(_f.Name, new JsonArray(Ids(new[] { -3 })), 0), "prompt", "token id -3"),
            (Body(_f.Name, new JsonArray(), 0), "prompt", "empty list"),
            (Body(_f.Name, new JsonArray("a", Ids(new[] { 1, 2 })), 0), "prompt", "mixes strings and lists"),
            (Body(_f.Name, new JsonArray(Ids(new[] { 1, 2 }), new JsonArray()), 0), "prompt", "prompt[1]"),
            (Body(_f.Name, new JsonArray(1, 2.5), 0), "prompt", "prompt[1] is 2.5"),
            (Body(_f.Name, new JsonArray("a", "b", "c", "d", "e"), 0), "prompt", "at most 4 (--max-queue)"),
        };
        foreach (var (body, param, says) in cases)
        {
            var r = await Post(client, "/v1/completions", body);
            string text = await r.Content.ReadAsStringAsync();
            Assert.True(r.StatusCode == HttpStatusCode.BadRequest, $"{body}: {(int)r.StatusCode} {text}");
            var e = JsonNode.Parse(text)!["error"]!;
            Assert.Equal("invalid_request_error", (string)e["type"]!);
            Assert.Equal(param, (string?)e["param"]);
            Assert.Contains(param, (string)e["message"]!, StringComparison.Ordinal);
            Assert.Contains(says, (string)e["message"]!, StringComparison.Ordinal);
        }
        Assert.Equal(0, server.Model.Scheduler.Queued); // nothing refused was queued
    }
}
