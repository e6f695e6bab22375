using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using System.Threading.Channels;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using ResLora.Pipelines.Serving;

namespace ResLora.Cli.Serve;

/// <summary>How <c>reslora serve</c> listens and what it accepts.</summary>
internal sealed record ServeSettings
{
    /// <summary>The environment variable that supplies the API key when <c>--api-key</c> is not given.</summary>
    public const string ApiKeyVariable = "RESLORA_API_KEY";

    /// <summary>The address to bind: an IP address, or localhost (= 127.0.0.1).</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>The port; 0 = one the system picks.</summary>
    public int Port { get; init; } = 8000;

    /// <summary>Requests must send <c>Authorization: Bearer KEY</c> when set.</summary>
    public string? ApiKey { get; init; }

    /// <summary>Largest request body in bytes (413 above it).</summary>
    public long MaxRequestBytes { get; init; } = 1 << 20;

    /// <summary>How long a shutdown waits for requests in flight before it cancels them.</summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(30);

    public void Validate()
    {
        if (Port is < 0 or > 65535) throw new UserInputException($"--port must be between 0 and 65535 (0 = pick a free one), got {Port}.");
        if (MaxRequestBytes < 1) throw new UserInputException($"--max-request-bytes must be at least 1, got {MaxRequestBytes}.");
        if (ShutdownTimeout < TimeSpan.Zero) throw new UserInputException("--shutdown-timeout must be 0 or more seconds.");
        if (ApiKey is { Length: 0 }) throw new UserInputException("--api-key is empty; give a key or leave the flag (and RESLORA_API_KEY) out.");
        _ = Address();
    }

    /// <summary>A warning for a host other machines can reach without an API key, else null.</summary>
    internal string? ExposureWarning() =>
        ApiKey is null && !IPAddress.IsLoopback(Address())
            ? $"--host {Host} accepts connections from other machines and no --api-key (or {ApiKeyVariable}) is set: anyone who can reach this port can use the model. There is no TLS either; see docs/serving.md."
            : null;

    internal IPAddress Address() =>
        Host.Equals("localhost", StringComparison.OrdinalIgnoreCase) ? IPAddress.Loopback
        : IPAddress.TryParse(Host, out var ip) ? ip
        : throw new UserInputException($"--host '{Host}': give an IP address (127.0.0.1, ::1, 0.0.0.0) or localhost.");
}

/// <summary>
/// The HTTP face of a <see cref="ServedModel"/>: OpenAI-compatible <c>POST /v1/completions</c>, <c>POST
/// /v1/chat/completions</c> (whole answers, or Server-Sent Events with <c>"stream": true</c>) and <c>GET /v1/models</c>
/// on Kestrel. Errors are one JSON line in the OpenAI API's shape. Owns the model: stopping the server frees it.
/// </summary>
internal sealed partial class ServeServer : IAsyncDisposable
{
    /// <summary>How long a shutdown gives handlers to write their answers (or their 503) once generation has stopped.</summary>
    private static readonly TimeSpan AnswerGrace = TimeSpan.FromSeconds(5);

    private static readonly JsonSerializerOptions Json = new() { Encoder = IO.Json.ReportJson.Encoder }; // an HTTP API: NaN must fail, not be written

    private readonly WebApplication _app;
    private readonly ServeSettings _settings;
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    private readonly byte[]? _key;
    private Task? _stopping;

    private ServeServer(WebApplication app, ServedModel model, ServeSettings settings)
    {
        _app = app;
        Model = model;
        _settings = settings;
        _key = settings.ApiKey is null ? null : Encoding.UTF8.GetBytes(settings.ApiKey);
    }

    /// <summary>The served model (its scheduler's counts, its names).</summary>
    public ServedModel Model { get; }

    /// <summary>The address it listens on (with the port the system picked for port 0).</summary>
    public Uri Address { get; private set; } = null!;

    /// <summary>The address Kestrel really listens on, as it reports it (0.0.0.0 or [::] for every interface; the bound port).</summary>
    public string ListenAddress { get; private set; } = null!;

    /// <summary>Binds, maps the routes and starts listening; the server owns <paramref name="model"/> from here on.</summary>
    public static async Task<ServeServer> StartAsync(ServedModel model, ServeSettings settings)
    {
        settings.Validate();
        // The empty builder reads no appsettings.json or environment configuration: what the flags say is what runs.
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions());
        builder.WebHost.UseKestrelCore().ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = settings.MaxRequestBytes;
            k.Listen(settings.Address(), settings.Port);
        });
        builder.Services.AddRoutingCore();
        builder.Services.AddSingleton<IHostLifetime, NoSignalLifetime>(); // signals are the verb's to handle, not the host's
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = AnswerGrace); // the drain itself is Stop's, before the host stops
        builder.Logging.ClearProviders();
        var app = builder.Build();
        var server = new ServeServer(app, model, settings);
        server.Map();
        await app.StartAsync().ConfigureAwait(false);
        var bound = app.Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        server.ListenAddress = bound;
        server.Address = new Uri(bound.Replace("[::]", "[::1]", StringComparison.Ordinal).Replace("0.0.0.0", "127.0.0.1", StringComparison.Ordinal));
        return server;
    }

    /// <summary>
    /// Shuts down: new requests get 503 (the listener stays open while requests drain), requests in flight finish (up to
    /// the shutdown timeout; then they are cancelled and answered 503, or end their stream with an error event), the
    /// worker stops and the model is freed. Safe to call more than once.
    /// </summary>
    public Task StopAsync() => _stopping ??= Stop();

    private async Task Stop()
    {
        // Draining before Kestrel stops: stopping Kestrel first closed the listener (new clients were refused, not
        // answered 503) and, at the timeout, reset the connections of requests still generating.
        await Model.Scheduler.ShutdownAsync(_settings.ShutdownTimeout).ConfigureAwait(false);
        await _app.StopAsync().ConfigureAwait(false); // handlers write their answers, up to AnswerGrace
        await _app.DisposeAsync().ConfigureAwait(false);
        Model.Dispose();
    }

    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);

    private void Map()
    {
        _app.Use(async (ctx, next) =>
        {
            if (_key is not null && !Authorized(ctx.Request))
            {
                string? header = ctx.Request.Headers.Authorization;
                await Error(ctx, 401, header is null ? "no API key given; send the header Authorization: Bearer KEY." : "the API key is not valid.", "authentication_error", null, "invalid_api_key").ConfigureAwait(false);
                return;
            }
            await next(ctx).ConfigureAwait(false);
        });
        _app.MapGet("/v1/models", (HttpContext ctx) => Send(ctx, 200, Models()));
        _app.MapPost("/v1/completions", (HttpContext ctx) => Complete(ctx, chat: false));
        _app.MapPost("/v1/chat/completions", (HttpContext ctx) => Complete(ctx, chat: true));
        _app.MapPost("/v1/load_lora_adapter", (HttpContext ctx) => ChangeAdapters(ctx, load: true));
        _app.MapPost("/v1/unload_lora_adapter", (HttpContext ctx) => ChangeAdapters(ctx, load: false));
        _app.MapFallback((HttpContext ctx) => Error(ctx, 404, $"no route {ctx.Request.Method} {ctx.Request.Path}; the routes are POST /v1/completions, POST /v1/chat/completions, GET /v1/models, POST /v1/load_lora_adapter and POST /v1/unload_lora_adapter.", "invalid_request_error", null, "not_found"));
    }

    private bool Authorized(HttpRequest request)
    {
        string? header = request.Headers.Authorization;
        if (header is null || !header.StartsWith("Bearer ", StringComparison.Ordinal)) return false;
        return CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header["Bearer ".Length..].Trim()), _key);
    }

    private JsonObject Models()
    {
        var data = new JsonArray();
        foreach (var id in Model.ModelIds)
            data.Add(new JsonObject
            {
                ["id"] = id,
                ["object"] = "model",
                ["created"] = _created,
                ["owned_by"] = "reslora",
                ["root"] = Model.Name,
                ["parent"] = id == Model.Name ? null : Model.Name,
            });
        return new JsonObject { ["object"] = "list", ["data"] = data };
    }

    private async Task Complete(HttpContext ctx, bool chat)
    {
        var aborted = ctx.RequestAborted;
        try
        {
            ApiRequest request;
            using (var doc = await ReadJsonAsync(ctx, aborted).ConfigureAwait(false)) request = OpenAiProtocol.Parse(doc.RootElement, chat);
            string id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
            long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            string model = request.Completion.Model;
            if (!request.Stream)
            {
                var done = await Model.CompleteAllAsync(request.Completions, aborted).ConfigureAwait(false);
                await Send(ctx, 200, OpenAiProtocol.Response(chat, id, created, model, done)).ConfigureAwait(false);
                return;
            }

            // Pieces arrive on the worker thread; the worker never waits for a slow client.
            var pieces = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
            var completion = Model.CompleteAsync(request.Completion, p => pieces.Writer.TryWrite(p), aborted);
            if (completion.IsFaulted) await completion.ConfigureAwait(false); // refused before queueing: an error status, not a stream
            _ = completion.ContinueWith(_ => pieces.Writer.TryComplete(), TaskScheduler.Default);
            ctx.Response.StatusCode = 200;
            ctx.Response.ContentType = "text/event-stream";
            ctx.Response.Headers.CacheControl = "no-cache";
            await ctx.Response.StartAsync(aborted).ConfigureAwait(false);
            if (chat) await Event(ctx, OpenAiProtocol.Chunk(chat, id, created, model, "", null, role: true)).ConfigureAwait(false);
            await foreach (var piece in pieces.Reader.ReadAllAsync(aborted).ConfigureAwait(false))
                await Event(ctx, OpenAiProtocol.Chunk(chat, id, created, model, piece, null)).ConfigureAwait(false);
            CompletionResult result;
            try
            {
                result = await completion.ConfigureAwait(false);
            }
            catch (Exception e) when (!aborted.IsCancellationRequested)
            {
                // The status is sent already: the error goes in the stream.
                var (_, message, type, param, code) = Describe(e);
                await Event(ctx, OpenAiProtocol.Error(message, type, param, code)).ConfigureAwait(false);
                return;
            }
            await Event(ctx, OpenAiProtocol.Chunk(chat, id, created, model, chat ? null : "", result.FinishReason)).ConfigureAwait(false);
            if (request.IncludeUsage) await Event(ctx, OpenAiProtocol.UsageChunk(chat, id, created, model, result)).ConfigureAwait(false);
            await ctx.Response.WriteAsync("data: [DONE]\n\n", aborted).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (aborted.IsCancellationRequested)
        {
            // The client went away (or the shutdown timeout passed): nobody to answer.
        }
        catch (Exception e)
        {
            await Fail(ctx, e).ConfigureAwait(false);
        }
    }

    /// <summary>The error answer for a request that failed before its response started (nothing when it had started).</summary>
    private async Task Fail(HttpContext ctx, Exception e)
    {
        var (status, message, type, param, code) = Describe(e);
        if (ctx.Response.HasStarted) return;
        if (status == 429) ctx.Response.Headers.RetryAfter = "1";
        // The unread body stays on the connection: close it, so a client does not send its next request into it.
        if (status == 413 || e is ClientError { CloseConnection: true }) ctx.Response.Headers.Connection = "close";
        if (status == 500) Console.Error.WriteLine($"serve: internal error: {e}");
        await Error(ctx, status, message, type, param, code).ConfigureAwait(false);
    }

    /// <summary>
    /// Reads the request body as one JSON document: refused as 413 past --max-request-bytes, as Kestrel's 408/400 when it
    /// arrives too slowly or badly framed, and as 400 when it is not UTF-8 or not JSON.
    /// </summary>
    private async Task<JsonDocument> ReadJsonAsync(HttpContext ctx, CancellationToken aborted)
    {
        if (ctx.Request.ContentLength > _settings.MaxRequestBytes) throw new BodyTooLarge();
        var body = new MemoryStream();
        try
        {
            await ctx.Request.Body.CopyToAsync(body, aborted).ConfigureAwait(false);
        }
        catch (Microsoft.AspNetCore.Http.BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            throw new BodyTooLarge();
        }
        catch (Microsoft.AspNetCore.Http.BadHttpRequestException e)
        {
            // Kestrel's verdict on the body: 408 when it arrives slower than 240 bytes/s after a 5 s grace, 400 for bad framing.
            throw new ClientError(e.StatusCode, e.StatusCode == StatusCodes.Status408RequestTimeout
                ? "the request body arrived too slowly (under 240 bytes/s after 5 s); send the body at once."
                : $"the request body could not be read: {Scrub(e.Message)}", e.StatusCode == StatusCodes.Status408RequestTimeout ? "request_timeout" : "bad_request");
        }
        byte[] bytes = body.ToArray();
        if (!System.Text.Unicode.Utf8.IsValid(bytes))
            throw new ClientError(400, "the request body is not valid UTF-8 (JSON must be UTF-8 encoded).", "invalid_json", closeConnection: false);
        try
        {
            return JsonDocument.Parse(bytes);
        }
        catch (JsonException e)
        {
            throw new ClientError(400, $"the request body is not valid JSON ({e.Message}).", "invalid_json", closeConnection: false);
        }
    }

    private sealed class BodyTooLarge : Exception;

    /// <summary>A body Kestrel refused to deliver (too slow, badly framed: the connection is closed after the answer), or one that is not JSON, with its status.</summary>
    private sealed class ClientError(int status, string message, string code, bool closeConnection = true) : Exception(message)
    {
        public int Status { get; } = status;
        public string Code { get; } = code;
        public bool CloseConnection { get; } = closeConnection;
    }

    /// <summary>
    /// An exception's text fit for a client: its first line, without file paths or addresses. libtorch's messages go on
    /// with a native backtrace naming install paths and addresses ("Exception raised from ... at /home/...:618").
    /// </summary>
    internal static string Scrub(string message)
    {
        string first = message.Split('\n', 2)[0].TrimEnd('\r');
        first = Regex.Replace(first, @"(?:[A-Za-z]:)?(?:[\\/][^\s\\/:'""()]+){2,}[\\/]?(?::\d+)?", "<path>");
        first = Regex.Replace(first, @"0x[0-9a-fA-F]{4,}", "<address>");
        return first.Trim();
    }

    private (int Status, string Message, string Type, string? Param, string? Code) Describe(Exception e) => e switch
    {
        ClientError c => (c.Status, c.Message, "invalid_request_error", null, c.Code),
        BodyTooLarge => (413, $"the request body is larger than this server's limit of {_settings.MaxRequestBytes} bytes (--max-request-bytes).", "invalid_request_error", null, "request_too_large"),
        ServingException { Kind: ServingErrorKind.InvalidRequest } s => (400, s.Message, "invalid_request_error", s.Param, "invalid_value"),
        ServingException { Kind: ServingErrorKind.ModelNotFound } s => (404, s.Message, "invalid_request_error", s.Param, "model_not_found"),
        ServingException { Kind: ServingErrorKind.QueueFull } s => (429, s.Message, "rate_limit_error", null, "queue_full"),
        ServingException { Kind: ServingErrorKind.ShuttingDown } s => (503, s.Message, "server_error", null, "shutting_down"),
        ServingException { Kind: ServingErrorKind.Forbidden } s => (403, s.Message, "permission_error", s.Param, "path_outside_adapter_root"),
        ServingException { Kind: ServingErrorKind.NotFound } s => (404, s.Message, "invalid_request_error", s.Param, "not_found"),
        UserInputException u => (400, u.Message, "invalid_request_error", null, "invalid_value"),
        OperationCanceledException => (503, "the request was cancelled: the server is shutting down.", "server_error", null, "shutting_down"),
        _ => (500, $"internal error: {e.GetType().Name}: {Scrub(e.Message)} (the whole error is on the server's stderr)", "server_error", null, "internal_error"),
    };

    private static Task Error(HttpContext ctx, int status, string message, string type, string? param, string? code) =>
        Send(ctx, status, OpenAiProtocol.Error(message, type, param, code));

    private static async Task Send(HttpContext ctx, int status, JsonNode body)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync(body.ToJsonString(Json) + "\n").ConfigureAwait(false);
    }

    private static async Task Event(HttpContext ctx, JsonNode data)
    {
        await ctx.Response.WriteAsync("data: " + data.ToJsonString(Json) + "\n\n", ctx.RequestAborted).ConfigureAwait(false);
        await ctx.Response.Body.FlushAsync(ctx.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>A host lifetime that leaves Ctrl+C and SIGTERM alone: <c>reslora serve</c> handles them, tests have none.</summary>
    private sealed class NoSignalLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
