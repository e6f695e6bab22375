using System.Net;
using System.Net.Http.Headers;
using System.Text.Json.Nodes;
using ResLora.Adapters;
using ResLora.Cli.Serve;
using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines.Serving;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static ResLora.Tests.Serving.ServingFixture;

namespace ResLora.Tests.Serving;

/// <summary>
/// The serving fixture plus an adapter root: <c>adapters/lora</c> (a copy of the start-up lora folder), <c>loha</c> (a LoHa
/// folder of the same base), <c>wrong-base</c> (a LoRA saved for a base of another hidden size), <c>empty</c> (no
/// adapter_config.json), <c>escape</c> (a link to the fixture's dora folder, outside the root) and <c>sneaky</c> (a real
/// folder whose two files are links to dora's files outside).
/// </summary>
public sealed class AdapterRootFixture : IDisposable
{
    public AdapterRootFixture()
    {
        Serving = new ServingFixture();
        AdapterRoot = Path.Combine(Serving.Root, "adapters");
        Directory.CreateDirectory(AdapterRoot);
        string lora = Path.Combine(AdapterRoot, "lora");
        Directory.CreateDirectory(lora);
        foreach (var f in Directory.GetFiles(Serving.Dir("lora"))) File.Copy(f, Path.Combine(lora, Path.GetFileName(f)));
        ResLora.Tests.Pipelines.MultiAdapterFixture.SaveTrainedLooking(Serving.ModelDir, Path.Combine(AdapterRoot, "loha"),
            new LoHaConfig { R = 2, Alpha = 2, TargetModules = ModuleTargets.List("q_proj") }, 31, 0.2);

        // A base of another width (hidden 48): its LoRA's q_proj factors do not fit this base's 32-wide projections.
        string other = Path.Combine(Serving.Root, "wider-model");
        var c = TinyModels.Config(vocab: 300) with { HiddenSize = 48 };
        using (var m = TinyModels.Build(c, seed: 3))
            ModelFolder.Save(other, c, m.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)));
        ResLora.Tests.Pipelines.MultiAdapterFixture.SaveTrainedLooking(other, Path.Combine(AdapterRoot, "wrong-base"),
            new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ModuleTargets.List("q_proj") }, 32, 0.2);

        Directory.CreateDirectory(Path.Combine(AdapterRoot, "empty"));
        Directory.CreateSymbolicLink(Path.Combine(AdapterRoot, "escape"), Serving.Dir("dora"));
        string sneaky = Path.Combine(AdapterRoot, "sneaky");
        Directory.CreateDirectory(sneaky);
        foreach (var f in new[] { AdapterFolder.ConfigFileName, AdapterFolder.WeightsFileName })
            File.CreateSymbolicLink(Path.Combine(sneaky, f), Path.Combine(Serving.Dir("dora"), f));
    }

    public ServingFixture Serving { get; }
    public string AdapterRoot { get; }

    /// <summary>Serves the base with only the dora adapter at start-up, loading at run time from the root when <paramref name="withRoot"/>.</summary>
    internal async Task<ServeServer> Start(bool withRoot = true, string? apiKey = null, Action<int>? beforeBatch = null)
    {
        var o = new ServingOptions
        {
            ModelDir = Serving.ModelDir,
            Adapters = new[] { new KeyValuePair<string, string>("dora", Serving.Dir("dora")) },
            AdapterRoot = withRoot ? AdapterRoot : null,
            BeforeBatch = beforeBatch,
        };
        var served = ServedModel.Load(o, new RuntimeOptions());
        try
        {
            return await ServeServer.StartAsync(served, new ServeSettings { Host = "127.0.0.1", Port = 0, ApiKey = apiKey });
        }
        catch
        {
            served.Dispose();
            throw;
        }
    }

    public void Dispose() => Serving.Dispose();
}

/// <summary>
/// POST /v1/load_lora_adapter and /v1/unload_lora_adapter: an adapter loaded at run time answers exactly as the same folder
/// loaded at start-up (greedy), while other clients generate; an unload waits for the requests that use the adapter; every
/// path outside the root, missing folder, non-LoRA or foreign adapter, taken name and wrong key is refused with its status
/// and reason; /v1/models follows.
/// </summary>
[Collection("console")]
public sealed class ServeAdapterLoadingTests : IClassFixture<AdapterRootFixture>
{
    private readonly AdapterRootFixture _f;

    public ServeAdapterLoadingTests(AdapterRootFixture fixture) => _f = fixture;

    private string Base => _f.Serving.Name;

    private static string Completion(string model, string prompt, int maxTokens = 6) =>
        new JsonObject { ["model"] = model, ["prompt"] = prompt, ["max_tokens"] = maxTokens, ["temperature"] = 0 }.ToJsonString();

    private static string LoadBody(string name, string path) => new JsonObject { ["lora_name"] = name, ["lora_path"] = path }.ToJsonString();

    private static string UnloadBody(string name) => new JsonObject { ["lora_name"] = name }.ToJsonString();

    private static async Task<string> Answer(HttpClient client, string model, string prompt)
    {
        var r = await Post(client, "/v1/completions", Completion(model, prompt));
        string body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.OK, $"{model}: {(int)r.StatusCode}: {body}");
        return (string)JsonNode.Parse(body)!["choices"]![0]!["text"]!;
    }

    private static async Task<List<string>> Models(HttpClient client)
    {
        var r = await client.GetAsync("/v1/models");
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        return JsonNode.Parse(await r.Content.ReadAsStringAsync())!["data"]!.AsArray().Select(m => (string)m!["id"]!).ToList();
    }

    /// <summary>vLLM's success answer: 200 and one plain-text line.</summary>
    private static async Task Succeeds(HttpResponseMessage r, string expected)
    {
        string body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.OK, $"{(int)r.StatusCode}: {body}");
        Assert.Equal("text/plain", r.Content.Headers.ContentType?.MediaType);
        Assert.Equal(expected, body);
    }

    /// <summary>The status, the error code and the message (which must contain every one of <paramref name="reason"/>).</summary>
    private static async Task<string> Refused(HttpResponseMessage r, HttpStatusCode status, string code, params string[] reason)
    {
        string body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == status, $"expected {(int)status}, got {(int)r.StatusCode}: {body}");
        var e = JsonNode.Parse(body)!["error"]!;
        Assert.Equal(code, (string?)e["code"]);
        string message = (string)e["message"]!;
        foreach (var part in reason) Assert.Contains(part, message, StringComparison.Ordinal);
        return message;
    }

    private static readonly string[] Prompts = { "hello there", "one two three", "the cat" };

    [Fact]
    public async Task LoadUseUnloadReload_WhileOthersGenerate_AnswersAsTheStartupAdapter()
    {
        // The reference: the same folder loaded at start-up (the serving fixture serves lora and dora), one request at a time.
        var reference = new Dictionary<(string, string), string>();
        await using (var startup = await _f.Serving.Start())
        {
            using var client = Client(startup);
            foreach (var model in new[] { Base, Base + ":lora", Base + ":dora" })
                foreach (var p in Prompts) reference[(model, p)] = await Answer(client, model, p);
        }
        Assert.NotEqual(reference[(Base, Prompts[0])], reference[(Base + ":lora", Prompts[0])]); // the adapter changes the answer

        await using var server = await _f.Start();
        using var c = Client(server);
        Assert.Equal(new[] { Base, Base + ":dora" }, await Models(c));

        // Other clients generate with the base and dora the whole time, and must keep getting the reference answers.
        using var stop = new CancellationTokenSource();
        int rounds = 0;
        var others = Enumerable.Range(0, 2).Select(k => Task.Run(async () =>
        {
            string model = k == 0 ? Base : Base + ":dora";
            for (int i = 0; !stop.IsCancellationRequested || i < 2; i++)
            {
                string p = Prompts[i % Prompts.Length];
                Assert.Equal(reference[(model, p)], await Answer(c, model, p));
                Interlocked.Increment(ref rounds);
            }
        })).ToList();

        for (int cycle = 0; cycle < 2; cycle++)
        {
            // lora_path relative to the root the first time, absolute (inside it) the second.
            string path = cycle == 0 ? "lora" : Path.Combine(_f.AdapterRoot, "lora");
            await Succeeds(await Post(c, "/v1/load_lora_adapter", LoadBody("lora", path)), "Success: LoRA adapter 'lora' added successfully.");
            Assert.Equal(new[] { Base, Base + ":dora", Base + ":lora" }, await Models(c));
            var answers = await Task.WhenAll(Prompts.Select(p => Answer(c, Base + ":lora", p)));
            Assert.Equal(Prompts.Select(p => reference[(Base + ":lora", p)]), answers);

            await Succeeds(await Post(c, "/v1/unload_lora_adapter", UnloadBody("lora")), "Success: LoRA adapter 'lora' removed successfully.");
            Assert.Equal(new[] { Base, Base + ":dora" }, await Models(c));
            // The same refusal as a model that was never served.
            string gone = await Refused(await Post(c, "/v1/completions", Completion(Base + ":lora", "hi")), HttpStatusCode.NotFound, "model_not_found", $"the model '{Base}:lora' is not served");
            string never = await Refused(await Post(c, "/v1/completions", Completion(Base + ":nothing", "hi")), HttpStatusCode.NotFound, "model_not_found");
            Assert.Equal(never.Replace(":nothing", ":lora", StringComparison.Ordinal), gone);
        }
        Assert.DoesNotContain(server.Model.Adapters.Adapters, a => a.Name == "lora"); // its tensors are gone from the set
        stop.Cancel();
        await Task.WhenAll(others);
        Assert.True(rounds >= 4);
    }

    [Fact]
    public async Task Unload_WaitsForTheRequestsThatUseTheAdapter_AndRefusesNewOnesAtOnce()
    {
        // With logprobs the request is two jobs on the worker (its generation batch, then the forward that scores it): an
        // unload queued behind the batch alone would free the adapter before the scoring forward.
        string request = new JsonObject { ["model"] = Base + ":lora", ["prompt"] = Prompts[1], ["max_tokens"] = 4, ["temperature"] = 0, ["logprobs"] = 2 }.ToJsonString();
        async Task<string> Choice(HttpClient client)
        {
            var r = await Post(client, "/v1/completions", request);
            string body = await r.Content.ReadAsStringAsync();
            Assert.True(r.StatusCode == HttpStatusCode.OK, $"{(int)r.StatusCode}: {body}");
            return JsonNode.Parse(body)!["choices"]![0]!.ToJsonString();
        }
        string expected;
        await using (var startup = await _f.Serving.Start())
        {
            using var client = Client(startup);
            expected = await Choice(client);
        }
        Assert.Contains("\"top_logprobs\"", expected, StringComparison.Ordinal);

        using var hold = new ServeTests.Gate();
        await using var held = await _f.Start(beforeBatch: hold.BeforeBatch);
        using var h = Client(held);
        await Succeeds(await Post(h, "/v1/load_lora_adapter", LoadBody("lora", "lora")), "Success: LoRA adapter 'lora' added successfully."); // not a batch: the gate lets it by
        var inFlight = Task.Run(() => Choice(h));
        Assert.True(await hold.Entered.WaitAsync(TimeSpan.FromMinutes(1))); // the request is in its batch, held before it runs
        var unload = Post(h, "/v1/unload_lora_adapter", UnloadBody("lora"));
        await ServeTests.Until(() => !held.Model.ModelIds.Contains(Base + ":lora")); // no longer served...
        await Refused(await Post(h, "/v1/completions", Completion(Base + ":lora", "x")), HttpStatusCode.NotFound, "model_not_found");
        Assert.False(unload.IsCompleted); // ...but not removed while the request that uses it runs
        Assert.Contains(held.Model.Adapters.Adapters, a => a.Name == "lora");
        hold.Open();
        Assert.Equal(expected, await inFlight); // it kept its adapter, for its generation and its scoring
        await Succeeds(await unload, "Success: LoRA adapter 'lora' removed successfully.");
        Assert.DoesNotContain(held.Model.Adapters.Adapters, a => a.Name == "lora");
    }

    [Fact]
    public async Task BadLoads_AreRefusedWithTheirReason_AndChangeNothing()
    {
        await using var server = await _f.Start();
        using var c = Client(server);
        var before = await Models(c);
        string root = _f.AdapterRoot;
        Task<HttpResponseMessage> Load(string name, string path) => Post(c, "/v1/load_lora_adapter", LoadBody(name, path));

        await Refused(await Load("a", "../lora"), HttpStatusCode.Forbidden, "path_outside_adapter_root", "'../lora' resolves to a folder outside the adapter root", "--adapter-root");
        await Refused(await Load("a", "lora/../../dora"), HttpStatusCode.Forbidden, "path_outside_adapter_root", "outside the adapter root");
        await Refused(await Load("a", _f.Serving.Dir("dora")), HttpStatusCode.Forbidden, "path_outside_adapter_root", "outside the adapter root");
        await Refused(await Load("a", "/no/such/folder"), HttpStatusCode.Forbidden, "path_outside_adapter_root", "outside the adapter root"); // says nothing about what exists outside
        await Refused(await Load("a", "escape"), HttpStatusCode.Forbidden, "path_outside_adapter_root", "'escape' resolves to a folder outside", "symbolic link");
        await Refused(await Load("a", Path.Combine(root, "escape", "..", "lora")), HttpStatusCode.Forbidden, "path_outside_adapter_root"); // the link's parent, as the OS opens it
        await Refused(await Load("a", "sneaky"), HttpStatusCode.Forbidden, "path_outside_adapter_root", $"its {AdapterFolder.ConfigFileName} is a symbolic link to a file outside");
        await Refused(await Load("a", "nope"), HttpStatusCode.NotFound, "not_found", "'nope': no such folder under the adapter root");
        await Refused(await Load("a", "empty"), HttpStatusCode.BadRequest, "invalid_value", "'empty' is not an adapter folder", AdapterFolder.ConfigFileName);
        await Refused(await Load("a", "loha"), HttpStatusCode.BadRequest, "invalid_value", "holds a loha adapter (peft_type LOHA)", "only LoRA-family adapters");
        await Refused(await Load("a", "wrong-base"), HttpStatusCode.BadRequest, "invalid_value", "model.layers.0.self_attn.q_proj.lora_A.weight' has shape [4, 48]", "[4, 32]");
        await Refused(await Load("dora", "lora"), HttpStatusCode.BadRequest, "invalid_value", "'dora' has already been loaded");
        await Refused(await Load("base", "lora"), HttpStatusCode.BadRequest, "invalid_value", "lora_name: adapter name 'base'");
        await Refused(await Post(c, "/v1/load_lora_adapter", "{\"lora_name\": \"a\"}"), HttpStatusCode.BadRequest, "invalid_value", "Both 'lora_name' and 'lora_path' must be provided");
        await Refused(await Post(c, "/v1/load_lora_adapter", "{\"lora_name\": "), HttpStatusCode.BadRequest, "invalid_json");
        await Refused(await Post(c, "/v1/unload_lora_adapter", UnloadBody("a")), HttpStatusCode.NotFound, "model_not_found", "the adapter 'a' cannot be found", "loaded adapters: dora");
        await Refused(await Post(c, "/v1/unload_lora_adapter", "{}"), HttpStatusCode.BadRequest, "invalid_value", "lora_name is required");
        Assert.Equal(before, await Models(c));
        Assert.Equal(new[] { "dora" }, server.Model.Adapters.Adapters.Select(a => a.Name));
        // The reserved name of a refused load is free again: the right folder loads under it.
        await Succeeds(await Load("a", "lora"), "Success: LoRA adapter 'a' added successfully.");
        Assert.Equal(before.Append(Base + ":a"), await Models(c));
    }

    [Fact]
    public async Task TheRoutes_NeedTheApiKey_AndAreOffWithoutAnAdapterRoot()
    {
        await using (var keyed = await _f.Start(apiKey: "sesame"))
        {
            using var c = Client(keyed);
            await Refused(await Post(c, "/v1/load_lora_adapter", LoadBody("lora", "lora")), HttpStatusCode.Unauthorized, "invalid_api_key", "no API key given");
            c.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "wrong");
            await Refused(await Post(c, "/v1/load_lora_adapter", LoadBody("lora", "lora")), HttpStatusCode.Unauthorized, "invalid_api_key", "the API key is not valid");
            await Refused(await Post(c, "/v1/unload_lora_adapter", UnloadBody("dora")), HttpStatusCode.Unauthorized, "invalid_api_key");
            Assert.Equal(new[] { Base + ":dora" }, keyed.Model.ModelIds.Skip(1)); // nothing changed
            c.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "sesame");
            await Succeeds(await Post(c, "/v1/load_lora_adapter", LoadBody("lora", "lora")), "Success: LoRA adapter 'lora' added successfully.");
            await Succeeds(await Post(c, "/v1/unload_lora_adapter", UnloadBody("dora")), "Success: LoRA adapter 'dora' removed successfully."); // a start-up adapter too
            Assert.Equal(new[] { Base, Base + ":lora" }, await Models(c));
        }
        await using var closed = await _f.Start(withRoot: false);
        using var n = Client(closed);
        await Refused(await Post(n, "/v1/load_lora_adapter", LoadBody("lora", "lora")), HttpStatusCode.NotFound, "adapter_root_not_set", "started without --adapter-root", "--adapter-root DIR");
        await Refused(await Post(n, "/v1/unload_lora_adapter", UnloadBody("dora")), HttpStatusCode.NotFound, "adapter_root_not_set", "--adapter-root");
        Assert.Equal(new[] { Base, Base + ":dora" }, await Models(n));
    }

    [Fact]
    public void AdapterRoot_ResolvesLinksThenDotDot_AndRefusesAMissingRootNamingTheFlag()
    {
        var root = new AdapterRoot(_f.AdapterRoot);
        Assert.Equal(Path.Combine(root.Path, "lora"), root.Resolve("./lora/"));
        Assert.Equal(Path.Combine(root.Path, "lora"), root.Resolve("loha/../lora"));
        // escape -> the fixture's dora folder, so escape/.. is the fixture's root (outside), not the adapter root.
        Assert.Equal(Path.GetDirectoryName(AdapterRoot.RealPath(_f.Serving.Dir("dora"))), AdapterRoot.RealPath(Path.Combine(_f.AdapterRoot, "escape", "..")));
        Assert.Equal(Path.Combine(root.Path, "lora"), root.Resolve("escape/../adapters/lora")); // back inside through the link's parent: allowed
        var e = Assert.Throws<ServingException>(() => root.Resolve("escape/../lora")); // the fixture's own lora folder, outside
        Assert.Equal(ServingErrorKind.Forbidden, e.Kind);
        var missing = Assert.Throws<UserInputException>(() => new AdapterRoot(Path.Combine(_f.AdapterRoot, "absent")));
        Assert.Contains("--adapter-root", missing.Message, StringComparison.Ordinal);
        Assert.Contains("no such folder", missing.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Cli_DocumentsAdapterRoot_AndRefusesAMissingOneBeforeLoading()
    {
        var (rc, help, _) = CliHarness.Run("serve", "--help");
        Assert.Equal(0, rc);
        Assert.Contains("--adapter-root", help, StringComparison.Ordinal);
        Assert.Contains("/v1/load_lora_adapter", help, StringComparison.Ordinal);
        var (bad, _, err) = CliHarness.Run("serve", "--model", _f.Serving.ModelDir, "--adapter-root", Path.Combine(_f.AdapterRoot, "absent"), "--port", "0");
        Assert.Equal(2, bad);
        Assert.Contains("--adapter-root", err, StringComparison.Ordinal);
        Assert.Contains("no such folder", err, StringComparison.Ordinal);
    }
}
