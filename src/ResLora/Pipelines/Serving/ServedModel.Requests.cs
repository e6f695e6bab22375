using ResLora.Models;
using ResLora.Text;
using ResLora.Text.Templates;

namespace ResLora.Pipelines.Serving;

// Turning an API request into what the scheduler runs: the model and adapter resolved, every field checked against the
// API's limits (a refusal names the field), the prompt or conversation tokenized.
public sealed partial class ServedModel
{
    /// <summary>A checked request: what to generate (null for max_tokens 0), its reply's text, the prompt's ids and text.</summary>
    /// <remarks><see cref="Lease"/> holds the adapter until the request is answered; whoever drops the request disposes it.</remarks>
    private sealed record Prepared(CompletionRequest Request, AdapterLease Lease, GenerationRow? Row, ReplyText? Reply, IReadOnlyList<int> Ids, string PromptText)
    {
        public string? Adapter => Lease.Adapter;
    }

    /// <summary>Resolves the model (holding its adapter) and checks the request; on a refusal the hold is released.</summary>
    private Prepared Prepare(CompletionRequest r, Action<string>? onText, CancellationToken cancel)
    {
        var lease = Acquire(r.Model);
        try
        {
            return Prepare(r, lease, onText, cancel);
        }
        catch
        {
            lease.Dispose();
            throw;
        }
    }

    private Prepared Prepare(CompletionRequest r, AdapterLease lease, Action<string>? onText, CancellationToken cancel)
    {
        string? adapter = lease.Adapter;
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
            format = lease.Chat
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
            return new Prepared(r, lease, null, null, ids, promptText);
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
        return new Prepared(r, lease, row, reply, ids, promptText);
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
}
