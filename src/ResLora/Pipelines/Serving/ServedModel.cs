using ResLora.IO;
using ResLora.Models;
using ResLora.Scoring;
using ResLora.Text;
using ResLora.Text.Templates;

namespace ResLora.Pipelines.Serving;

/// <summary>
/// A base model with named adapters behind one batch scheduler: requests from many clients, each naming the base or an
/// adapter, are tokenized (chat requests with the chat template, as <c>reslora generate --chat</c> does), generated in
/// mixed-adapter batches on one worker, and answered as text, streamed in pieces if asked. Thread-safe.
/// </summary>
public sealed partial class ServedModel : IDisposable
{
    /// <summary>
    /// A prompt (or a conversation's text) longer than this many characters per model position is refused without being
    /// tokenized: it cannot fit, as no tokenizer in use averages anywhere near 64 characters per token.
    /// </summary>
    public const int MaxCharsPerPosition = 64;

    private readonly AdapterSet _set;
    private readonly ITextTokenizer _tokenizer;
    private readonly object _tokenizerLock = new();
    private readonly string _modelDir;

    private readonly RuntimeOptions _runtime;
    private bool _workerThreadsSet;

    private ServedModel(ServingOptions options, RuntimeOptions runtime, AdapterSet set, ITextTokenizer tokenizer, Dictionary<string, ChatFormat?> chat)
    {
        _set = set;
        _tokenizer = tokenizer;
        _modelDir = options.ModelDir;
        Name = options.Name ?? DefaultName(options.ModelDir);
        Options = options;
        _runtime = runtime;
        InitAdapters(chat, options.AdapterRoot);
        Scheduler = options.ContinuousBatching
            ? new BatchScheduler(() =>
            {
                OnWorker();
                return new ContinuousBatch(_set.Model, adapters => _set.Plan.Route(adapters, _set.Model.Device), options.MaxBatch, options.MaxCachePositions);
            }, options.MaxBatch, options.MaxQueue, options.BeforeBatch)
            : new BatchScheduler(rows =>
            {
                OnWorker();
                return _set.Generate(rows);
            }, options.MaxBatch, options.MaxQueue,
                rows => TextGenerator.PaddedLength(rows) <= _set.Model.Config.MaxPositionEmbeddings, options.BeforeBatch);
    }

    /// <summary>libtorch's thread count can be per calling thread (OpenMP): set it on the worker too, once.</summary>
    private void OnWorker()
    {
        if (!_workerThreadsSet) _runtime.Apply();
        _workerThreadsSet = true;
    }

    /// <summary>Loads the base once and every adapter on it.</summary>
    /// <param name="options">What to serve.</param>
    /// <param name="runtime">Device, dtype, threads.</param>
    /// <param name="warn">Receives warnings (unknown config fields).</param>
    public static ServedModel Load(ServingOptions options, RuntimeOptions runtime, Action<string>? warn = null)
    {
        options.Validate();
        var names = options.Adapters.Select(a => a.Key).ToList();
        if (names.Distinct().Count() != names.Count) throw new UserInputException($"--adapter: each adapter needs its own name; given: {string.Join(", ", names)}.");
        if (options.AdapterRoot is { } root) _ = new AdapterRoot(root); // refused before the model is read
        var tokenizer = TokenizerLoader.Load(options.ModelDir);
        var set = AdapterSet.Load(options.ModelDir, runtime);
        try
        {
            var chat = new Dictionary<string, ChatFormat?> { [""] = Prompts.ChatFormatFor(options.ModelDir, null, options.ChatTemplate) };
            foreach (var (name, dir) in options.Adapters)
            {
                set.Add(name, dir, warn);
                chat[name] = Prompts.ChatFormatFor(options.ModelDir, dir, options.ChatTemplate);
            }
            foreach (var (name, format) in chat)
                if (format is not null) TryChatTemplate(format, name.Length == 0 ? DefaultNameOf(options) : $"{DefaultNameOf(options)}:{name}");
            return new ServedModel(options, runtime, set, tokenizer, chat);
        }
        catch
        {
            set.Dispose();
            throw;
        }
    }

    private static string DefaultNameOf(ServingOptions options) => options.Name ?? DefaultName(options.ModelDir);

    /// <summary>
    /// Parses and renders <paramref name="format"/>'s template once for a sample conversation (system, user, assistant,
    /// user, with the generation prompt; without the system message when the template refuses that role), so a
    /// template that fails or exceeds its budget stops the server at start-up instead of failing every chat request.
    /// Also finds its end-of-turn token now, so no request renders the probe conversations.
    /// </summary>
    private static void TryChatTemplate(ChatFormat format, string modelId)
    {
        var sample = new[]
        {
            new ChatMessage("system", "You are a helpful assistant."), new ChatMessage("user", "Hello."),
            new ChatMessage("assistant", "Hello! How can I help?"), new ChatMessage("user", "Tell me a joke."),
        };
        try
        {
            try
            {
                format.RenderPrompt(sample);
            }
            catch (ChatTemplateRaisedException)
            {
                format.RenderPrompt(sample[1..]);
            }
            _ = format.EndOfTurn;
        }
        catch (Exception e) when (e is ChatTemplateException or UserInputException)
        {
            throw new UserInputException($"the chat template of '{modelId}' ({format.Origin}) failed a trial render of a sample conversation at start-up, "
                + $"so serve does not start: {e.Message} Fix the template, or give another with --chat-template NAME|FILE.");
        }
    }

    /// <summary>The base's served name.</summary>
    public string Name { get; }

    /// <summary>What was loaded.</summary>
    public ServingOptions Options { get; }

    /// <summary>The queue and its worker (for its counts and for shutting down).</summary>
    public BatchScheduler Scheduler { get; }

    /// <summary>The adapters and the base.</summary>
    public AdapterSet Adapters => _set;

    /// <summary>The name a model folder is served under by default: the folder's name.</summary>
    public static string DefaultName(string modelDir) =>
        Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelDir))) is { Length: > 0 } n ? n : "model";

    /// <summary>
    /// Generates one reply: validates the request, queues it, and returns when it is done. <paramref name="onText"/>
    /// receives the reply in pieces as it is generated (on the worker thread; keep it quick); the pieces concatenate to
    /// the returned text. Cancelling <paramref name="cancel"/> drops the request (waiting or running).
    /// </summary>
    /// <exception cref="ServingException">Bad fields, an unknown model, a full queue, shutting down.</exception>
    public Task<CompletionResult> CompleteAsync(CompletionRequest request, Action<string>? onText = null, CancellationToken cancel = default)
    {
        try
        {
            return Run(Prepare(request, onText, cancel), cancel);
        }
        catch (Exception e)
        {
            return Task.FromException<CompletionResult>(e);
        }
    }

    /// <summary>
    /// Answers several requests (a completions request with a list of prompts): every one is checked before any is queued
    /// (a refusal names the prompt's index), they are queued together so they share batches, and the answers come back in
    /// order. One that fails cancels the others.
    /// </summary>
    /// <exception cref="ServingException">Bad fields, an unknown model, more requests than the queue holds, a full queue, shutting down.</exception>
    public async Task<IReadOnlyList<CompletionResult>> CompleteAllAsync(IReadOnlyList<CompletionRequest> requests, CancellationToken cancel = default)
    {
        if (requests.Count == 0) Invalid("prompt is an empty list; give at least one prompt.", "prompt");
        if (requests.Count > Options.MaxQueue)
            Invalid($"prompt holds {requests.Count} prompts; this server queues at most {Options.MaxQueue} (--max-queue), so send at most that many per request.", "prompt");
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        var prepared = new List<Prepared>();
        for (int i = 0; i < requests.Count; i++)
        {
            try
            {
                prepared.Add(Prepare(requests[i], null, linked.Token));
            }
            catch (Exception e)
            {
                foreach (var p in prepared) p.Lease.Dispose(); // none of them runs
                if (requests.Count > 1 && e is ServingException { Kind: ServingErrorKind.InvalidRequest } s)
                    throw new ServingException(s.Kind, $"prompt[{i}]: {s.Message}", s.Param);
                throw;
            }
        }
        var tasks = new List<Task<CompletionResult>>();
        foreach (var p in prepared)
        {
            var task = Run(p, linked.Token);
            tasks.Add(task);
            _ = task.ContinueWith(_ =>
            {
                try
                {
                    linked.Cancel();
                }
                catch (ObjectDisposedException)
                {
                    // Every answer was in already.
                }
            }, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
        try
        {
            return await Task.WhenAll(tasks).ConfigureAwait(false);
        }
        catch when (tasks.FirstOrDefault(t => t.IsFaulted) is { } failed)
        {
            // The first real failure, not the cancellations it caused.
            throw failed.Exception!.InnerException!;
        }
    }

    /// <summary>Runs a prepared request and then releases its hold on its adapter (an unload waits for that).</summary>
    private async Task<CompletionResult> Run(Prepared p, CancellationToken cancel)
    {
        try
        {
            return await RunHeld(p, cancel).ConfigureAwait(false);
        }
        finally
        {
            p.Lease.Dispose();
        }
    }

    private async Task<CompletionResult> RunHeld(Prepared p, CancellationToken cancel)
    {
        IReadOnlyList<int> tokens = Array.Empty<int>();
        IReadOnlyList<TokenScore>? scores = null;
        string finish = "length", text = "";
        int first = p.Request.Echo ? 0 : p.Ids.Count; // the first logprobs entry
        if (p.Row is { } row)
        {
            var o = row.Options;
            if (p.Request.Logprobs is { } k && o is { MaxNewTokens: 1, Greedy: true, RepetitionPenalty: 1.0 })
            {
                // lm-eval's log-likelihood request (echo, logprobs, one greedy token): the forward that scores the prompt
                // also picks the token, its last row's arg-max, instead of a generation forward and then a scoring one.
                // The appended 0 only makes Score return that row; its entry is replaced by the arg-max's.
                var all = await Score(p, p.Ids.Append(0).ToList(), first, Math.Max(k, 1), cancel).ConfigureAwait(false);
                var last = all[^1];
                var (token, logprob) = last.IsGreedy ? (last.Token, last.Logprob) : last.Top[0];
                tokens = new[] { token };
                var trimmed = new List<TokenScore>(all.Count);
                for (int i = 0; i < all.Count; i++)
                {
                    var sc = i == all.Count - 1 ? new TokenScore(token, logprob, true, last.Top) : all[i];
                    trimmed.Add(sc.Top.Count > k ? sc with { Top = sc.Top.Take(k).ToList() } : sc); // logprobs 0 asked for none
                }
                scores = trimmed;
                row.OnToken?.Invoke(token);
            }
            else tokens = await Scheduler.Submit(row).ConfigureAwait(false);
            lock (_tokenizerLock)
            {
                p.Reply!.Finish();
                bool stoppedByToken = tokens.Count > 0 && o.EosTokenIds.Contains(tokens[^1]);
                finish = stoppedByToken || p.Reply.Stopped || o.StopWhen?.Invoke(tokens) == true || tokens.Count < o.MaxNewTokens ? "stop" : "length";
                text = p.Reply.Text;
            }
        }
        CompletionLogprobs? logprobs = null;
        if (p.Request.Logprobs is { } topK)
        {
            var sequence = p.Ids.Concat(tokens).ToList();
            scores ??= await Score(p, sequence, first, topK, cancel).ConfigureAwait(false);
            lock (_tokenizerLock) logprobs = CompletionLogprobs.Build(_tokenizer, sequence, first, scores, p.Request.Echo ? 0 : p.PromptText.Length);
        }
        return new CompletionResult((p.Request.Echo ? p.PromptText : "") + text, finish, p.Ids.Count, tokens.Count)
        {
            PromptIds = p.Ids,
            Tokens = tokens,
            Logprobs = logprobs,
        };
    }

    /// <summary>
    /// One full forward over <paramref name="sequence"/> with the request's adapter: the reference scores
    /// (<see cref="TokenLogprobs"/>) from <paramref name="first"/> on (position 0 has none), taken on the worker between
    /// batches so it never races a batch for the model.
    /// </summary>
    private Task<IReadOnlyList<TokenScore>> Score(Prepared p, IReadOnlyList<int> sequence, int first, int topK, CancellationToken cancel)
    {
        string?[] route = { p.Adapter };
        return Scheduler.Run(() =>
        {
            OnWorker();
            return TokenLogprobs.Score(ids => _set.Forward(ids, null, route), sequence, Math.Max(first, 1), topK, _set.Model.Device);
        }, cancel);
    }

    /// <summary>Stops the worker (cancelling what is left) and frees the model.</summary>
    public void Dispose()
    {
        Scheduler.Dispose();
        _set.Dispose();
    }
}
