using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Microsoft.Extensions.AI;
using ResLora.Pipelines.Serving;

namespace ResLora.Extensions.AI;

/// <summary>
/// Microsoft.Extensions.AI's <see cref="IChatClient"/> over the engine behind <c>reslora serve</c>, in-process: a base
/// model and named adapters on one batch scheduler, each conversation rendered with the chat template, generated,
/// streamed and stopped exactly as serve's <c>/v1/chat/completions</c> does it, so the same request gives the same text.
/// <see cref="ChatOptions.ModelId"/> picks the base or an adapter per call (serve's <c>model</c> field: <c>NAME</c>,
/// <c>NAME:ADAPTER</c>, or just the adapter's name). Thread-safe; concurrent calls share batches. Disposing it frees
/// the model (when it owns it).
/// </summary>
public sealed class ResLoraChatClient : IChatClient
{
    /// <summary>The provider name in <see cref="ChatClientMetadata"/>.</summary>
    public const string ProviderName = "reslora";

    private readonly ServedModel _model;
    private readonly bool _ownsModel;
    private readonly ChatClientMetadata _metadata;
    private int _disposed;

    /// <summary>A client over a loaded model.</summary>
    /// <param name="model">The served base and adapters (for example shared with an HTTP server).</param>
    /// <param name="defaultModelId">The model a call without <see cref="ChatOptions.ModelId"/> uses; null = the base.</param>
    /// <param name="ownsModel">Whether disposing the client disposes <paramref name="model"/>.</param>
    /// <exception cref="ArgumentException"><paramref name="defaultModelId"/> names nothing served.</exception>
    public ResLoraChatClient(ServedModel model, string? defaultModelId = null, bool ownsModel = true)
    {
        ArgumentNullException.ThrowIfNull(model);
        _model = model;
        _ownsModel = ownsModel;
        DefaultModelId = defaultModelId is null ? model.Name : ModelIdOf(defaultModelId, nameof(defaultModelId));
        _metadata = new ChatClientMetadata(ProviderName, providerUri: null, DefaultModelId);
    }

    /// <summary>
    /// Loads a model folder and its adapters the way <c>reslora serve</c> does (<see cref="ServedModel.Load"/>: the base
    /// once, every adapter on it, each chat template tried at load) and returns a client that owns them.
    /// </summary>
    /// <param name="options">The model folder, adapters by name, chat template and limits (as serve's flags).</param>
    /// <param name="runtime">Device, dtype, threads; null = the defaults.</param>
    /// <param name="warn">Receives load warnings (unknown config fields).</param>
    /// <exception cref="UserInputException">A missing or bad folder, adapter or template, naming it and the fix.</exception>
    public static ResLoraChatClient Load(ServingOptions options, RuntimeOptions? runtime = null, Action<string>? warn = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new ResLoraChatClient(ServedModel.Load(options, runtime ?? new RuntimeOptions(), warn));
    }

    /// <summary>Loads <paramref name="modelDir"/> with the named adapter folders (name, folder) and serve's default limits.</summary>
    /// <param name="modelDir">A Hugging Face model folder.</param>
    /// <param name="adapters">Adapter folders by the name <see cref="ChatOptions.ModelId"/> chooses them with.</param>
    /// <exception cref="UserInputException">A missing or bad folder, adapter or template, naming it and the fix.</exception>
    public static ResLoraChatClient Load(string modelDir, params (string Name, string Dir)[] adapters) =>
        Load(new ServingOptions { ModelDir = modelDir, Adapters = adapters.Select(a => new KeyValuePair<string, string>(a.Name, a.Dir)).ToList() });

    /// <summary>The served model a call without <see cref="ChatOptions.ModelId"/> uses.</summary>
    public string DefaultModelId { get; }

    /// <summary>Every model id a call may choose: the base's name, then <c>NAME:ADAPTER</c> for each adapter.</summary>
    public IReadOnlyList<string> ModelIds => _model.ModelIds;

    /// <inheritdoc />
    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var request = Request(messages, options);
        var result = await Completed(_model.CompleteAsync(request, null, cancellationToken)).ConfigureAwait(false);
        string id = NewId();
        return new ChatResponse(new ChatMessage(ChatRole.Assistant, result.Text) { MessageId = id })
        {
            ResponseId = id,
            ModelId = request.Model,
            CreatedAt = DateTimeOffset.UtcNow,
            FinishReason = ChatRequestMapping.FinishReason(result.FinishReason),
            Usage = ChatRequestMapping.Usage(result),
        };
    }

    /// <inheritdoc />
    /// <remarks>
    /// The updates carry the reply's text in the pieces serve streams (never taken back: a tail that may still become a
    /// stop sequence is held), then one last update with the finish reason and a <see cref="UsageContent"/>. Cancelling
    /// <paramref name="cancellationToken"/>, or leaving the enumeration early, drops the request from its batch before
    /// the next decode step.
    /// </remarks>
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = Request(messages, options);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        // Pieces arrive on the engine's worker thread; it never waits for a slow consumer.
        var pieces = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var completion = _model.CompleteAsync(request, p => pieces.Writer.TryWrite(p), stop.Token);
        _ = completion.ContinueWith(t =>
        {
            _ = t.Exception; // observed here: a consumer that left early never awaits it
            pieces.Writer.TryComplete();
        }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        if (completion.IsFaulted) await Completed(completion).ConfigureAwait(false); // refused before queueing: throw before any update
        string id = NewId();
        var created = DateTimeOffset.UtcNow;
        try
        {
            await foreach (var piece in pieces.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                // Pieces already buffered are not handed out once the caller cancelled.
                cancellationToken.ThrowIfCancellationRequested();
                yield return Update(id, created, request.Model, new TextContent(piece));
            }
            cancellationToken.ThrowIfCancellationRequested();
            var result = await Completed(completion).ConfigureAwait(false);
            var last = Update(id, created, request.Model, new UsageContent(ChatRequestMapping.Usage(result)));
            last.FinishReason = ChatRequestMapping.FinishReason(result.FinishReason);
            yield return last;
        }
        finally
        {
            stop.Cancel(); // a consumer that stops reading frees its row in the batch
        }
    }

    /// <inheritdoc />
    /// <remarks>
    /// Without a key: <see cref="ChatClientMetadata"/> (provider "reslora", the default model id), the
    /// <see cref="ServedModel"/> (its scheduler's counts, its adapters) and the client itself.
    /// </remarks>
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return _metadata;
        if (serviceType.IsInstanceOfType(_model)) return _model;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Frees the model (when the client owns it): requests still waiting or generating are cancelled.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1) return;
        if (_ownsModel) _model.Dispose();
    }

    private CompletionRequest Request(IEnumerable<ChatMessage> messages, ChatOptions? options)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) == 1, this);
        string model = options?.ModelId is { } chosen ? ModelIdOf(chosen, nameof(options)) : DefaultModelId;
        return ChatRequestMapping.ToRequest(messages, options, model);
    }

    /// <summary>
    /// A served model id for <paramref name="modelId"/>: serve's ids as they are (<c>NAME</c>, <c>NAME:ADAPTER</c>), and a
    /// bare adapter name as <c>NAME:ADAPTER</c>; anything else is refused with the served ids.
    /// </summary>
    private string ModelIdOf(string modelId, string param)
    {
        if (modelId != _model.Name && _model.Adapters.Adapters.Any(a => a.Name == modelId)) modelId = $"{_model.Name}:{modelId}";
        try
        {
            _model.Resolve(modelId);
            return modelId;
        }
        catch (ServingException e)
        {
            string alone = _model.Adapters.Adapters.Count == 0 ? "" : $" An adapter may also be named alone ({string.Join(", ", _model.Adapters.Adapters.Select(a => a.Name))}).";
            throw new ArgumentException($"ChatOptions.ModelId: {e.Message}{alone}", param, e);
        }
    }

    /// <summary>Awaits an engine task, turning its refusals into the consumer's exceptions.</summary>
    private static async Task<CompletionResult> Completed(Task<CompletionResult> task)
    {
        try
        {
            return await task.ConfigureAwait(false);
        }
        catch (ServingException e)
        {
            throw ChatRequestMapping.Translate(e);
        }
    }

    private static ChatResponseUpdate Update(string id, DateTimeOffset created, string model, AIContent content) =>
        new(ChatRole.Assistant, new List<AIContent> { content }) { ResponseId = id, MessageId = id, CreatedAt = created, ModelId = model };

    private static string NewId() => "chatcmpl-" + Guid.NewGuid().ToString("N");
}
