using ResLora.IO;
using ResLora.Text.Templates;
using ResLora.Models;
using ResLora.Scoring;
using ResLora.Text;

namespace ResLora.Pipelines.Serving;

/// <summary>
/// A base model with named adapters behind one batch scheduler: requests from many clients, each naming the base or an
/// adapter, are tokenized (chat requests with the chat template, as <c>reslora generate --chat</c> does), generated in
/// mixed-adapter batches on one worker, and answered as text, streamed in pieces if asked. Thread-safe.
/// </summary>
public sealed class ServedModel : IDisposable
{
    /// <summary>
    /// A prompt (or a conversation's text) longer than this many characters per model position is refused without being
    /// tokenized: it cannot fit, as no tokenizer in use averages anywhere near 64 characters per token.
    /// </summary>
    public const int MaxCharsPerPosition = 64;

    private readonly AdapterSet _set;
    private readonly ITextTokenizer _tokenizer;
    private readonly object _tokenizerLock = new();
    private readonly Dictionary<string, ChatFormat?> _chat; // by adapter name; "" = the base
    private readonly string _modelDir;

    private readonly RuntimeOptions _runtime;
    private bool _workerThreadsSet;

    private ServedModel(ServingOptions options, RuntimeOptions runtime, AdapterSet set, ITextTokenizer tokenizer, Dictionary<string, ChatFormat?> chat)
    {
        _set = set;
        _tokenizer = tokenizer;
        _chat = chat;
        _modelDir = options.ModelDir;
        Name = options.Name ?? DefaultName(options.ModelDir);
        Options = options;
        _runtime = runtime;
        Scheduler = new BatchScheduler(rows =>
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

    /// <summary>Every served model id: the base's name, then <c>name:adapter</c> for each adapter.</summary>
    public IReadOnlyList<string> ModelIds => _set.Adapters.Select(a => $"{Name}:{a.Name}").Prepend(Name).ToList();

    /// <summary>The name a model folder is served under by default: the folder's name.</summary>
    public static string DefaultName(string modelDir) =>
        Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelDir))) is { Length: > 0 } n ? n : "model";

    /// <summary>The adapter a model id names (null for the base); refused when it names nothing served.</summary>
    public string? Resolve(string model)
    {
        if (model == Name) return null;
        if (model.StartsWith(Name + ":", StringComparison.Ordinal) && _set.Adapters.Any(a => a.Name == model[(Name.Length + 1)..]))
            return model[(Name.Length + 1)..];
        throw new ServingException(ServingErrorKind.ModelNotFound, $"the model '{model}' is not served; served models: {string.Join(", ", ModelIds)}.", "model");
    }

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
            catch (ServingException e) when (requests.Count > 1 && e.Kind == ServingErrorKind.InvalidRequest)
            {
                throw new ServingException(e.Kind, $"prompt[{i}]: {e.Message}", e.Param);
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

    /// <summary>A checked request: what to generate (null for max_tokens 0), its reply's text, the prompt's ids and text.</summary>
    private sealed record Prepared(CompletionRequest Request, string? Adapter, GenerationRow? Row, ReplyText? Reply, IReadOnlyList<int> Ids, string PromptText);

    private async Task<CompletionResult> Run(Prepared p, CancellationToken cancel)
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

    private Prepared Prepare(CompletionRequest r, Action<string>? onText, CancellationToken cancel)
    {
        string? adapter = Resolve(r.Model);
        bool chat = r.Messages is not null;
        if (chat && (r.Echo || r.Logprobs is not null)) Invalid("echo and logprobs are for completions (a prompt), not chat messages.", r.Echo ? "echo" : "logprobs");
        if (r.Logprobs is < 0 or > CompletionLogprobs.MaxTopLogprobs)
            Invalid($"logprobs is {r.Logprobs}; give an integer from 0 to {CompletionLogprobs.MaxTopLogprobs} (the alternatives per token, as OpenAI's API caps it), or leave it out.", "logprobs");
        if (r.MaxTokens == 0 && !r.Echo)
            Invalid("max_tokens is 0, which answers nothing without echo: set echo to true to get the prompt back (with logprobs, its tokens' log-probabilities), or ask for at least 1 token.", "max_tokens");
        bool generate = r.MaxTokens != 0;

        // The one set of sampling rules, by the request's field names, with the OpenAI API's ranges (temperature ≤ 2, four stops).
        var sampling = new GenerationOptions
        {
            MaxNewTokens = generate ? r.MaxTokens ?? 1 : 1,
            Temperature = r.Temperature,
            TopP = r.TopP,
            RepetitionPenalty = r.RepetitionPenalty,
            StopStrings = r.Stop,
            Seed = r.Seed ?? Random.Shared.NextInt64(),
        };
        if (sampling.Check(FieldName, ApiLimits) is { } bad) Invalid(bad.Message, FieldName(bad.Field));
        if (r.MaxTokens > Options.MaxTokensLimit)
            Invalid($"max_tokens is {r.MaxTokens}, over this server's limit of {Options.MaxTokensLimit} (--max-tokens-limit).", "max_tokens");
        if ((r.Prompt is null ? 0 : 1) + (r.PromptIds is null ? 0 : 1) + (r.Messages is null ? 0 : 1) != 1)
            Invalid("give one of prompt (completions: text or token ids) or messages (chat completions).", r.Messages is null ? "prompt" : "messages");

        // Refused by its length before any tokenizing (which holds the shared tokenizer lock): four clients posting 1 MiB
        // prompts kept a 16-token request waiting 21 s for prompts that were refused anyway.
        int positions = _set.Model.Config.MaxPositionEmbeddings;
        if (r.PromptIds is { } given) CheckIds(given, positions);
        long chars = r.Prompt?.Length ?? r.Messages?.Sum(m => (long)m.Content.Length) ?? 0;
        long maxChars = (long)positions * MaxCharsPerPosition;
        if (chars > maxChars)
            Invalid($"the {(r.Messages is null ? "prompt" : "messages' text")} is {chars} characters; the model holds {positions} positions and this server refuses more than {MaxCharsPerPosition} characters per position ({maxChars}) without tokenizing it.", r.Messages is null ? "prompt" : "messages");

        // The template runs before the tokenizer's lock is taken: it is untrusted input and may take up to its
        // budget's time, which must not stall every other request's tokenizing and streaming.
        ChatFormat? format = null;
        string? rendered = null;
        if (r.Messages is { } conversation)
        {
            if (conversation.Count == 0) Invalid("messages is empty; give at least one message.", "messages");
            format = _chat[adapter ?? ""]
                ?? throw new ServingException(ServingErrorKind.InvalidRequest, $"'{r.Model}' has no chat template (none in {_modelDir}/tokenizer_config.json{(adapter is null ? "" : " or recorded with the adapter")}); use /v1/completions, or start the server with --chat-template NAME|FILE.", "messages");
            try
            {
                rendered = format.RenderPrompt(conversation);
            }
            catch (Exception e) when (e is UserInputException or ChatTemplateException)
            {
                throw new ServingException(ServingErrorKind.InvalidRequest, $"messages: {e.Message}", "messages");
            }
        }
        GenerationPrompt input;
        string promptText;
        lock (_tokenizerLock)
        {
            if (r.PromptIds is { } tokenIds)
            {
                var stops = _tokenizer.EosTokenIds;
                input = new GenerationPrompt(tokenIds.ToArray(), stops, t => _tokenizer.Decode(t.Where(id => !stops.Contains(id))), null, Array.Empty<string>());
            }
            else if (format is not null)
            {
                try
                {
                    input = Prompts.ChatFromText(_tokenizer, format, rendered!).ForGeneration(_tokenizer);
                }
                catch (Exception e) when (e is UserInputException or ChatTemplateException)
                {
                    throw new ServingException(ServingErrorKind.InvalidRequest, $"messages: {e.Message}", "messages");
                }
            }
            else
            {
                input = r.Prompt!.Length == 0 && _tokenizer.BosTokenId is null
                    ? throw new ServingException(ServingErrorKind.InvalidRequest, "prompt is empty and the model has no BOS token to start from; give a prompt.", "prompt")
                    : GenerationPrompt.Plain(_tokenizer, r.Prompt);
            }
            promptText = r.Prompt ?? (r.PromptIds is null ? rendered! : _tokenizer.Decode(input.Ids, skipSpecialTokens: false));
        }
        var ids = input.Ids;
        if (!generate)
        {
            if (ids.Count > positions)
                Invalid($"the prompt is {ids.Count} tokens; the model holds {positions} positions.", "prompt");
            return new Prepared(r, adapter, null, null, ids, promptText);
        }
        if (ids.Count >= positions)
            Invalid($"the prompt is {ids.Count} tokens; the model holds {positions} positions, so no token is left to generate.", r.Messages is null ? "prompt" : "messages");
        int maxTokens = r.MaxTokens ?? Math.Min(Options.MaxTokensLimit, positions - ids.Count);
        if (ids.Count + maxTokens > positions)
            Invalid($"the prompt ({ids.Count} tokens) + max_tokens ({maxTokens}) exceeds the model's {positions} positions; lower max_tokens to at most {positions - ids.Count}.", "max_tokens");

        // A multi-token end-of-turn text also ends the streamed text, so it is never sent.
        var reply = new ReplyText(input.Render, r.Stop.Concat(input.StopTexts).ToList(), onText);
        var options = sampling with
        {
            MaxNewTokens = maxTokens,
            StopStrings = Array.Empty<string>(), // ReplyText watches them (and the end-of-turn texts) as the tokens arrive
            EosTokenIds = input.StopIds,
            StopWhen = tokens => reply.Stopped || input.StopWhen?.Invoke(tokens) == true,
        };
        var row = new GenerationRow(ids, adapter, options)
        {
            Cancellation = cancel,
            OnToken = t =>
            {
                lock (_tokenizerLock) reply.Add(t);
            },
        };
        return new Prepared(r, adapter, row, reply, ids, promptText);
    }

    /// <summary>A token-id prompt: non-empty, within the model's positions, every id in the model's vocabulary.</summary>
    private void CheckIds(IReadOnlyList<int> ids, int positions)
    {
        if (ids.Count == 0) Invalid("prompt is an empty list of token ids; give at least one id.", "prompt");
        if (ids.Count > positions) Invalid($"the prompt is {ids.Count} tokens; the model holds {positions} positions.", "prompt");
        int vocab = _set.Model.Config.VocabSize;
        for (int i = 0; i < ids.Count; i++)
            if (ids[i] < 0 || ids[i] >= vocab)
                Invalid($"prompt holds the token id {ids[i]} at position {i}, outside the model's vocabulary (ids 0 to {vocab - 1}).", "prompt");
    }

    /// <summary>The OpenAI API's limits on the sampling fields: temperature in [0, 2], at most four stop strings, at least one token.</summary>
    private static readonly SamplingLimits ApiLimits = new(MinNewTokens: 1, MaxTemperature: 2, MaxStops: 4);

    /// <summary>The request field of each sampling setting (the names refusals carry as their param).</summary>
    public static string FieldName(SamplingField field) => field switch
    {
        SamplingField.MaxNewTokens => "max_tokens",
        SamplingField.Temperature => "temperature",
        SamplingField.TopK => "top_k",
        SamplingField.TopP => "top_p",
        SamplingField.RepetitionPenalty => "repetition_penalty",
        _ => "stop",
    };

    private static void Invalid(string message, string param) => throw new ServingException(ServingErrorKind.InvalidRequest, message, param);

    /// <summary>Stops the worker (cancelling what is left) and frees the model.</summary>
    public void Dispose()
    {
        Scheduler.Dispose();
        _set.Dispose();
    }
}
