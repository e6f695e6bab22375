using ResLora.Models;
using ResLora.Text.Templates;

namespace ResLora.Pipelines.Serving;

/// <summary>What <see cref="ServedModel.Load"/> serves and how much it takes.</summary>
public sealed record ServingOptions
{
    /// <summary>The base model folder.</summary>
    public required string ModelDir { get; init; }

    /// <summary>The base's served name (requests name it, or <c>name:adapter</c>); null = the model folder's name.</summary>
    public string? Name { get; init; }

    /// <summary>Adapter folders by name.</summary>
    public IReadOnlyList<KeyValuePair<string, string>> Adapters { get; init; } = Array.Empty<KeyValuePair<string, string>>();

    /// <summary>A chat template for every served model (a file or a built-in name); null = the model's, else each adapter's recorded one.</summary>
    public string? ChatTemplate { get; init; }

    /// <summary>
    /// The folder adapters may be loaded from at run time (<see cref="ServedModel.LoadAdapterAsync"/>); null = loading at
    /// run time is off. Adapters named in <see cref="Adapters"/> load at start-up from anywhere.
    /// </summary>
    public string? AdapterRoot { get; init; }

    /// <summary>Most requests generated together in one batch.</summary>
    public int MaxBatch { get; init; } = 8;

    /// <summary>Most requests waiting for a batch; one more is refused (<see cref="ServingErrorKind.QueueFull"/>).</summary>
    public int MaxQueue { get; init; } = 64;

    /// <summary>Largest <c>max_tokens</c> a request may ask for.</summary>
    public int MaxTokensLimit { get; init; } = 512;

    /// <summary>
    /// Called on the worker with the batch size before each batch (logging, tests); with <see cref="ContinuousBatching"/>,
    /// before each decode step with the rows in it.
    /// </summary>
    public Action<int>? BeforeBatch { get; init; }

    /// <summary>Requests join the running batch at the next decode step and leave it when done (<see cref="ContinuousBatch"/>); false = one batch runs to its end before the next starts.</summary>
    public bool ContinuousBatching { get; init; } = true;

    /// <summary>Most KV-cache cells (rows × positions, each row counted at its prompt plus max_tokens) a continuous batch reserves; null = max batch × the model's max_position_embeddings.</summary>
    public long? MaxCachePositions { get; init; }

    /// <summary>Rejects out-of-range settings, naming the flag.</summary>
    public void Validate()
    {
        if (MaxBatch < 1) throw new UserInputException($"--max-batch must be at least 1, got {MaxBatch}.");
        if (MaxQueue < 1) throw new UserInputException($"--max-queue must be at least 1, got {MaxQueue}.");
        if (MaxCachePositions is < 1) throw new UserInputException($"MaxCachePositions must be at least 1 (rows × positions; null = max batch × max_position_embeddings), got {MaxCachePositions}.");
        if (MaxTokensLimit < 1) throw new UserInputException($"--max-tokens-limit must be at least 1, got {MaxTokensLimit}.");
        if (Name is not null && (Name.Length == 0 || Name.Contains(':', StringComparison.Ordinal) || Name.Any(char.IsWhiteSpace)))
            throw new UserInputException($"--name '{Name}': give a non-empty name without ':' or spaces (requests name adapters as NAME:ADAPTER).");
    }
}

/// <summary>One completion request, as the OpenAI API's fields give it.</summary>
public sealed record CompletionRequest
{
    /// <summary>The served model: the base's name or <c>name:adapter</c>.</summary>
    public required string Model { get; init; }

    /// <summary>The prompt to continue (completions), or null for a chat request or a token-id prompt.</summary>
    public string? Prompt { get; init; }

    /// <summary>A prompt as token ids (completions), used as given: no BOS is added. Null when <see cref="Prompt"/> or <see cref="Messages"/> is given.</summary>
    public IReadOnlyList<int>? PromptIds { get; init; }

    /// <summary>Completions: the answer starts with the prompt (its text; with <see cref="Logprobs"/>, its tokens' entries).</summary>
    public bool Echo { get; init; }

    /// <summary>
    /// Completions: null = no log-probabilities; N (0 … <see cref="CompletionLogprobs.MaxTopLogprobs"/>) = each answer
    /// token's log-probability with the N most likely alternatives (<see cref="CompletionResult.Logprobs"/>).
    /// </summary>
    public int? Logprobs { get; init; }

    /// <summary>The conversation to answer (chat completions), or null.</summary>
    public IReadOnlyList<ChatMessage>? Messages { get; init; }

    /// <summary>Most new tokens; null = as many as the limit and the model's positions allow; 0 (only with <see cref="Echo"/>) = none, the prompt alone is answered.</summary>
    public int? MaxTokens { get; init; }

    /// <summary>0 = greedy; up to 2.</summary>
    public double Temperature { get; init; } = 1.0;

    /// <summary>Nucleus sampling mass in (0, 1].</summary>
    public double TopP { get; init; } = 1.0;

    /// <summary>Sampling seed; null = a fresh random one.</summary>
    public long? Seed { get; init; }

    /// <summary>Hugging Face's (and vLLM's) repetition_penalty: &gt; 0, 1 = off (see <see cref="GenerationOptions.RepetitionPenalty"/>).</summary>
    public double RepetitionPenalty { get; init; } = 1.0;

    /// <summary>Up to four strings that end the reply (not included in it).</summary>
    public IReadOnlyList<string> Stop { get; init; } = Array.Empty<string>();
}

/// <summary>A finished reply.</summary>
/// <param name="Text">The reply's text (after the prompt's text when the request echoes).</param>
/// <param name="FinishReason">"stop" (a stop token or string) or "length" (the token budget ran out; also for max_tokens 0).</param>
/// <param name="PromptTokens">Tokens in the prompt.</param>
/// <param name="CompletionTokens">Tokens generated.</param>
public sealed record CompletionResult(string Text, string FinishReason, int PromptTokens, int CompletionTokens)
{
    /// <summary>The prompt's token ids as the model saw them.</summary>
    public IReadOnlyList<int> PromptIds { get; init; } = Array.Empty<int>();

    /// <summary>The generated token ids (a final stop id included).</summary>
    public IReadOnlyList<int> Tokens { get; init; } = Array.Empty<int>();

    /// <summary>The log-probabilities the request asked for (the echoed prompt's tokens, then the generated ones), or null.</summary>
    public CompletionLogprobs? Logprobs { get; init; }
}
