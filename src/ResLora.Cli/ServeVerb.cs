using System.CommandLine;
using System.Runtime.InteropServices;
using ResLora.Cli.Serve;
using ResLora.Text.Templates;
using ResLora.Pipelines.Serving;

namespace ResLora.Cli;

/// <summary><c>reslora serve</c>: an OpenAI-compatible HTTP server over one base model and named adapters (issue 18).</summary>
internal static class ServeVerb
{
    public const string ApiKeyVariable = ServeSettings.ApiKeyVariable;

    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face model folder (the base every request shares).", Required = true };
        var name = new Option<string?>("--name") { Description = "The base's model id in requests and GET /v1/models (default: the model folder's name); adapters are NAME:ADAPTER." };
        var adapters = new Option<string[]>("--adapter") { Description = "NAME=DIR (or DIR, named after its folder): serve a LoRA/rsLoRA/DoRA adapter folder (PEFT format; other methods: reslora export --as lora first) as model NAME-OF-BASE:NAME. Repeatable.", AllowMultipleArgumentsPerToken = false };
        var adapterRoot = new Option<string?>("--adapter-root") { Description = "DIR: allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's routes, behind --api-key) to load and unload LoRA/rsLoRA/DoRA adapter folders at run time, only from under DIR (lora_path relative to DIR, or absolute inside it; links and '..' are resolved, anything outside is refused with 403). Without it those routes answer 404." };
        var host = new Option<string>("--host") { Description = "Address to bind: 127.0.0.1 (default, this machine only), ::1, 0.0.0.0 (every interface: set --api-key), or localhost.", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "Port (0 = pick a free one; the address is printed).", DefaultValueFactory = _ => 8000 };
        var apiKey = new Option<string?>("--api-key") { Description = $"Require Authorization: Bearer KEY on every request (401 otherwise). Default: the {ApiKeyVariable} environment variable; none = no check." };
        var batching = new Option<string>("--batching") { Description = "continuous (default): requests join the running batch at the next decode step and finished ones leave at once; whole: a batch runs to its end before queued requests start.", DefaultValueFactory = _ => "continuous" };
        var maxBatch = new Option<int>("--max-batch") { Description = "Most requests generated together in one batch (any mix of adapters and settings).", DefaultValueFactory = _ => 8 };
        var maxQueue = new Option<int>("--max-queue") { Description = "Most requests waiting for a batch; one more gets 429 with Retry-After.", DefaultValueFactory = _ => 64 };
        var maxTokens = new Option<int>("--max-tokens-limit") { Description = "Largest max_tokens a request may ask for (400 above it); also the budget of chat requests that give none.", DefaultValueFactory = _ => 512 };
        var maxBytes = new Option<long>("--max-request-bytes") { Description = "Largest request body (413 above it).", DefaultValueFactory = _ => 1L << 20 };
        var shutdown = new Option<double>("--shutdown-timeout") { Description = "Seconds a shutdown (Ctrl+C, SIGTERM) waits for requests in flight before cancelling them.", DefaultValueFactory = _ => 30.0 };
        var chatTemplate = new Option<string?>("--chat-template") { Description = $"Chat template for /v1/chat/completions when the model has none (or another is wanted): a Jinja file, a JSON file with chat_template, or a built-in ({string.Join(", ", BuiltInChatTemplates.Names)}). Default: the model's, else each adapter's recorded one." };
        var rt = new RuntimeOptionSet();
        var cmd = new Command("serve", "Serve a model and its adapters over HTTP with OpenAI's API: POST /v1/completions, POST /v1/chat/completions (\"stream\": true for Server-Sent Events), GET /v1/models; with --adapter-root, POST /v1/load_lora_adapter and /v1/unload_lora_adapter. Requests from all clients are generated in batches that mix adapters. Ctrl+C stops after the requests in flight. See docs/serving.md.");
        foreach (var o in new Option[] { model, name, adapters, adapterRoot, host, port, apiKey, batching, maxBatch, maxQueue, maxTokens, maxBytes, shutdown, chatTemplate }) cmd.Options.Add(o);
        rt.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var options = new ServingOptions
            {
                ModelDir = CliPaths.ModelDir(r.GetValue(model)),
                Name = r.GetValue(name),
                Adapters = NamedAdapters.Parse(r.GetValue(adapters), forceNamed: true).Named.Select(a => KeyValuePair.Create(a.Name, a.Dir)).ToList(),
                AdapterRoot = r.GetValue(adapterRoot),
                ChatTemplate = r.GetValue(chatTemplate),
                MaxBatch = r.GetValue(maxBatch),
                ContinuousBatching = r.GetValue(batching)!.Trim().ToLowerInvariant() switch
                {
                    "continuous" => true,
                    "whole" => false,
                    var other => throw new UserInputException($"--batching '{other}' is not known; use continuous (the default) or whole."),
                },
                MaxQueue = r.GetValue(maxQueue),
                MaxTokensLimit = r.GetValue(maxTokens),
            };
            double timeout = r.GetValue(shutdown);
            if (!(timeout >= 0)) throw new UserInputException($"--shutdown-timeout must be 0 or more seconds, got {timeout}.");
            var settings = new ServeSettings
            {
                Host = r.GetValue(host)!,
                Port = r.GetValue(port),
                ApiKey = r.GetValue(apiKey) ?? (Environment.GetEnvironmentVariable(ApiKeyVariable) is { Length: > 0 } k ? k : null),
                MaxRequestBytes = r.GetValue(maxBytes),
                ShutdownTimeout = TimeSpan.FromSeconds(timeout),
            };
            options.Validate();
            settings.Validate();
            return Run(options, settings, rt.Read(r));
        }));
        return cmd;
    }

    private static int Run(ServingOptions options, ServeSettings settings, RuntimeOptions runtime)
    {
        using var stop = new CancellationTokenSource();
        // Ctrl+C and SIGTERM start a clean shutdown instead of killing the process.
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, Signal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Signal);
        if (settings.ExposureWarning() is { } exposed) Console.Error.WriteLine($"warning: {exposed}");
        var served = ServedModel.Load(options, runtime, w => Console.Error.WriteLine($"warning: {w}"));
        ServeServer server;
        try
        {
            server = ServeServer.StartAsync(served, settings).GetAwaiter().GetResult();
        }
        catch
        {
            served.Dispose();
            throw;
        }
        Console.Out.WriteLine($"serving {string.Join(", ", served.ModelIds)} on {server.ListenAddress} (batch ≤ {options.MaxBatch}, queue ≤ {options.MaxQueue}{(settings.ApiKey is null ? "" : ", API key required")}{(served.AdapterRootPath is { } root ? $", adapters loadable from {root}" : "")}); Ctrl+C stops");
        Console.Out.Flush();
        try
        {
            stop.Token.WaitHandle.WaitOne();
        }
        finally
        {
            Console.Error.WriteLine($"serve: shutting down; waiting up to {settings.ShutdownTimeout.TotalSeconds:0.#} s for {served.Scheduler.Running + served.Scheduler.Queued} request(s) in flight");
            server.StopAsync().GetAwaiter().GetResult();
            Console.Error.WriteLine("serve: stopped");
        }
        return 0;

        void Signal(PosixSignalContext ctx)
        {
            ctx.Cancel = true;
            stop.Cancel();
        }
    }
}
