using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using ResLora.Adapters;
using ResLora.Cli.Serve;
using ResLora.Demo;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Pipelines.Serving;

namespace ResLora.Bench;

/// <summary>What one load run measured.</summary>
/// <param name="Label">"batched" (up to MaxBatch requests per batch) or "sequential" (MaxBatch 1).</param>
/// <param name="MaxBatch">The server's --max-batch.</param>
/// <param name="Requests">Requests answered (all of them, or the run fails).</param>
/// <param name="Streamed">Of those, streamed.</param>
/// <param name="Seconds">Wall time from the first request to the last answer.</param>
/// <param name="RequestsPerSecond">Requests / seconds.</param>
/// <param name="TokensPerSecond">Generated tokens / seconds.</param>
/// <param name="P50Ms">Median request latency (ms), to the last byte.</param>
/// <param name="P95Ms">95th-percentile latency (ms).</param>
/// <param name="MeanBatch">Mean batch size the worker ran.</param>
public sealed record ServeLoadResult(string Label, int MaxBatch, int Requests, int Streamed, double Seconds, double RequestsPerSecond, double TokensPerSecond,
    double P50Ms, double P95Ms, double MeanBatch);

/// <summary>The load a run applies.</summary>
public sealed record ServeLoad
{
    public int Clients { get; init; } = 8;
    public int RequestsPerClient { get; init; } = 50;
    public int MaxTokens { get; init; } = 32;
    public int PromptChars { get; init; } = 48;
    public int Adapters { get; init; } = 4;
    public int Rank { get; init; } = 16;
    public int MaxBatch { get; init; } = 8;
    /// <summary>Continuous batching (rows join the running batch each decode step); false: whole batches, one after another.</summary>
    public bool Continuous { get; init; } = true;
}

/// <summary>
/// <c>reslora bench serve</c>: writes the bench model (random weights, the demo's tokenizer, ChatML chat template) and
/// random LoRA adapters, starts <c>reslora serve</c>'s server in-process on 127.0.0.1 port 0, and lets C clients send R
/// requests each over real HTTP, one at a time per client: completions and chat, every other one streamed, models
/// cycling over the base and each adapter, greedy, up to max_tokens tokens. Every answer must be 200 (a stream must end
/// with its usage chunk and [DONE]); a missing or failed request fails the run.
/// </summary>
public static class ServeBench
{
    public static string Prepare(string workDir, BenchShape shape, int adapters, int rank, long seed = 1)
    {
        string modelDir = Path.Combine(workDir, "model");
        var cfg = shape.ToConfig() with { VocabSize = DemoTokenizerFiles.VocabSize, BosTokenId = DemoTokenizerFiles.BosId, EosTokenIds = new[] { DemoTokenizerFiles.EosId } };
        using (var model = ModelFamilies.CreateCausalLM(cfg, new PlainLinearFactory(), ScalarType.Float32, torch.CPU))
        {
            model.InitializeWeights(seed);
            ModelFolder.Save(modelDir, cfg, model.BaseParameters().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)));
        }
        DemoTokenizerFiles.Write(modelDir);
        for (int i = 0; i < adapters; i++) WriteAdapter(modelDir, Path.Combine(workDir, $"a{i}"), rank, seed + 1 + i);
        return modelDir;
    }

    /// <summary>A PEFT LoRA folder (all-linear, rank r, α = r) whose B is random rather than zero, as after training.</summary>
    private static void WriteAdapter(string modelDir, string dir, int rank, long seed)
    {
        var cfg = new LoraConfig { R = rank, LoraAlpha = rank, TargetModules = ModuleTargets.AllLinear };
        using var gen = new torch.Generator((ulong)seed);
        using var model = ModelSessions.LoadBase(modelDir, new RuntimeOptions(), new AdapterPlan(cfg, gen));
        using (torch.no_grad())
            foreach (var (_, a) in AdapterModel.FindAdapters(model))
                foreach (var p in a.TrainableParameters)
                {
                    using var n = torch.randn(p.shape, generator: gen).mul(0.01);
                    p.add_(n);
                }
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        AdapterFolder.Save(dir, cfg, model);
    }

    public static ServeLoadResult Run(string label, string modelDir, string workDir, ServeLoad load, RuntimeOptions runtime, Action<string> log)
    {
        var batches = new List<int>();
        var options = new ServingOptions
        {
            ModelDir = modelDir,
            Name = "bench",
            Adapters = Enumerable.Range(0, load.Adapters).Select(i => new KeyValuePair<string, string>($"a{i}", Path.Combine(workDir, $"a{i}"))).ToList(),
            ChatTemplate = "chatml",
            MaxBatch = load.MaxBatch,
            ContinuousBatching = load.Continuous,
            MaxQueue = Math.Max(64, load.Clients),
            MaxTokensLimit = Math.Max(512, load.MaxTokens),
            BeforeBatch = n => { lock (batches) batches.Add(n); },
        };
        var served = ServedModel.Load(options, runtime);
        ServeServer server;
        try
        {
            server = ServeServer.StartAsync(served, new ServeSettings { Port = 0 }).GetAwaiter().GetResult();
        }
        catch
        {
            served.Dispose();
            throw;
        }
        try
        {
            var ids = served.ModelIds;
            using var client = new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromMinutes(30) };
            // One warm-up request per model id (first forwards allocate), not timed.
            foreach (var id in ids) Send(client, id, 0, 0, load, stream: false).GetAwaiter().GetResult();
            lock (batches) batches.Clear();
            log($"{label}: {load.Clients} clients × {load.RequestsPerClient} requests on {server.Address} (max batch {load.MaxBatch})");
            var latencies = new List<double>();
            int tokens = 0, streamed = 0;
            var wall = Stopwatch.StartNew();
            var clients = Enumerable.Range(0, load.Clients).Select(c => Task.Run(async () =>
            {
                for (int r = 0; r < load.RequestsPerClient; r++)
                {
                    int n = c * load.RequestsPerClient + r;
                    bool stream = n % 2 == 1;
                    var sw = Stopwatch.StartNew();
                    int got = await Send(client, ids[n % ids.Count], n, c, load, stream).ConfigureAwait(false);
                    double ms = sw.Elapsed.TotalMilliseconds;
                    lock (latencies)
                    {
                        latencies.Add(ms);
                        tokens += got;
                        if (stream) streamed++;
                    }
                }
            })).ToArray();
            Task.WaitAll(clients);
            double seconds = wall.Elapsed.TotalSeconds;
            int expected = load.Clients * load.RequestsPerClient;
            if (latencies.Count != expected) throw new InvalidOperationException($"bench serve: {latencies.Count} of {expected} requests were answered.");
            latencies.Sort();
            return new ServeLoadResult(label, load.MaxBatch, latencies.Count, streamed, seconds, latencies.Count / seconds, tokens / seconds,
                Percentile(latencies, 0.50), Percentile(latencies, 0.95), batches.Count == 0 ? 0 : batches.Average());
        }
        finally
        {
            server.StopAsync().GetAwaiter().GetResult();
        }
    }

    /// <summary>Sends request <paramref name="n"/> and checks the answer; returns the tokens generated.</summary>
    private static async Task<int> Send(HttpClient client, string model, int n, int clientId, ServeLoad load, bool stream)
    {
        bool chat = n % 4 >= 2;
        var rng = new Random(n * 31 + clientId);
        string text = new(Enumerable.Range(0, load.PromptChars).Select(_ => DemoCorpus.Alphabet[rng.Next(DemoCorpus.Alphabet.Length)]).ToArray());
        var body = new JsonObject { ["model"] = model, ["max_tokens"] = load.MaxTokens, ["temperature"] = 0, ["stream"] = stream };
        if (chat) body["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = text });
        else body["prompt"] = text;
        if (stream) body["stream_options"] = new JsonObject { ["include_usage"] = true };
        using var response = await client.PostAsync(chat ? "/v1/chat/completions" : "/v1/completions", new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json")).ConfigureAwait(false);
        string answer = await response.Content.ReadAsStringAsync().ConfigureAwait(false);
        if (!response.IsSuccessStatusCode) throw new InvalidOperationException($"bench serve: request {n} ({model}) got {(int)response.StatusCode}: {answer}");
        JsonNode usage;
        if (stream)
        {
            var events = answer.Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
            if (events.Length < 2 || events[^1] != "data: [DONE]") throw new InvalidOperationException($"bench serve: stream {n} ({model}) did not end with [DONE].");
            usage = JsonNode.Parse(events[^2]["data: ".Length..])!["usage"] ?? throw new InvalidOperationException($"bench serve: stream {n} has no usage chunk.");
        }
        else usage = JsonNode.Parse(answer)!["usage"]!;
        return (int)usage["completion_tokens"]!;
    }

    private static double Percentile(List<double> sorted, double p) => sorted[Math.Min(sorted.Count - 1, (int)Math.Ceiling(p * sorted.Count) - 1)];
}
