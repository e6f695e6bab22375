namespace ResLora.Models;

/// <summary>The sampling settings a caller can get wrong, by the names it gave them (<see cref="GenerationOptions.Check"/>).</summary>
public enum SamplingField
{
    MaxNewTokens,
    Temperature,
    TopK,
    TopP,
    RepetitionPenalty,
    Stop,
}

/// <summary>
/// Limits a caller adds to the sampling rules: the least token budget it accepts (the engine itself takes 0), and the
/// API's ranges (the server's OpenAI-compatible temperature ≤ 2 and at most four stop strings); null = no limit.
/// </summary>
public sealed record SamplingLimits(int MinNewTokens = 0, double? MaxTemperature = null, int? MaxStops = null)
{
    /// <summary>What a user asks for: at least one new token.</summary>
    public static readonly SamplingLimits User = new(MinNewTokens: 1);
}

/// <summary>A refused sampling setting: which one and why, the message naming it as the caller did.</summary>
public sealed record SamplingError(SamplingField Field, string Message);

/// <summary>
/// How to continue a prompt. Temperature 0 is greedy; otherwise sampling with optional top-k / top-p. A repetition
/// penalty (Hugging Face's <c>RepetitionPenaltyLogitsProcessor</c>) is applied to the logits before either. Generation
/// ends at a stop id (<see cref="EosTokenIds"/>), when <see cref="StopWhen"/> says so, when the decoded continuation
/// contains one of <see cref="StopStrings"/>, or when <see cref="MaxNewTokens"/> run out.
/// </summary>
public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 64;
    /// <summary>0 = greedy; below <see cref="GreedyBelowTemperature"/> also greedy (see there); above it, sampling.</summary>
    public double Temperature { get; init; } = 0.0;

    /// <summary>
    /// Temperatures below this pick greedily, as temperature 0 does. Sampling divides the logits by the temperature in
    /// float32: at 1e-38 and below the quotient overflows to infinity, softmax gives NaN and libtorch's multinomial throws
    /// (which failed every row of a served batch). As the temperature goes to 0 sampling becomes the arg-max, so greedy is
    /// the answer such a temperature asks for; 1e-5 leaves a wide margin (logits would have to exceed 3e33 to overflow).
    /// One rule for <c>reslora generate --temperature</c> and the server's <c>temperature</c>.
    /// </summary>
    public const double GreedyBelowTemperature = 1e-5;

    /// <summary>Whether tokens are picked by arg-max: temperature 0 or below <see cref="GreedyBelowTemperature"/>.</summary>
    public bool Greedy => Temperature < GreedyBelowTemperature;
    /// <summary>Keep only the k most likely tokens; 0 disables.</summary>
    public int TopK { get; init; }
    /// <summary>Nucleus sampling: keep the smallest set of tokens whose probability reaches p; 1 disables.</summary>
    public double TopP { get; init; } = 1.0;
    public long Seed { get; init; } = 0;
    /// <summary>Generation stops after emitting any of these ids (the id is included in the output).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = Array.Empty<int>();
    /// <summary>
    /// Also stop after a token when this returns true for the new tokens so far (a chat template's end-of-turn text that is
    /// several tokens in the vocabulary); null = only <see cref="EosTokenIds"/>.
    /// </summary>
    public Func<IReadOnlyList<int>, bool>? StopWhen { get; init; }
    /// <summary>
    /// Hugging Face's <c>repetition_penalty</c> (CTRL, Keskar et al. 2019, section 4.1): before picking a token, the logit
    /// of every id already in the sequence (prompt and generated) is divided by it when positive and multiplied by it
    /// when negative. 1 is off; above 1 discourages repeats, below 1 encourages them; must be &gt; 0.
    /// </summary>
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>
    /// Stop strings (OpenAI's <c>stop</c>): generation ends after the token with which the decoded continuation
    /// (<see cref="Decode"/>) first contains one of them; <see cref="CutAtStop"/> then removes the string and what follows.
    /// </summary>
    public IReadOnlyList<string> StopStrings { get; init; } = Array.Empty<string>();
    /// <summary>The text of the new tokens so far, as the caller will show it (stop ids dropped); needed for <see cref="StopStrings"/>.</summary>
    public Func<IReadOnlyList<int>, string>? Decode { get; init; }
    /// <summary>Reuse keys/values of earlier positions (each new token costs one position). Off only for checks.</summary>
    public bool UseKvCache { get; init; } = true;

    /// <summary>The command-line flag of each field: how <c>reslora generate</c> names them (the default naming).</summary>
    public static string FlagName(SamplingField field) => field switch
    {
        SamplingField.MaxNewTokens => "--max-new-tokens",
        SamplingField.Temperature => "--temperature",
        SamplingField.TopK => "--top-k",
        SamplingField.TopP => "--top-p",
        SamplingField.RepetitionPenalty => "--repetition-penalty",
        _ => "--stop",
    };

    /// <summary>
    /// The one set of sampling rules (for <c>reslora generate</c>'s flags, the server's JSON fields and the engine
    /// itself): the first setting out of range, with a message that names it by <paramref name="name"/> (default: the
    /// command-line flags), or null when all are valid.
    /// </summary>
    /// <param name="name">The caller's name for each field.</param>
    /// <param name="limits">The caller's extra limits; null = the engine's (a budget of 0 allowed).</param>
    public SamplingError? Check(Func<SamplingField, string>? name = null, SamplingLimits? limits = null)
    {
        name ??= FlagName;
        limits ??= new SamplingLimits();
        SamplingError Bad(SamplingField f, string rule) => new(f, $"{name(f)} {rule}");
        if (MaxNewTokens < limits.MinNewTokens) return Bad(SamplingField.MaxNewTokens, $"must be at least {limits.MinNewTokens}, got {MaxNewTokens}.");
        if (!(Temperature >= 0) || double.IsInfinity(Temperature) || Temperature > limits.MaxTemperature)
            return Bad(SamplingField.Temperature, limits.MaxTemperature is { } t ? $"must be between 0 and {t} (0 = greedy), got {Temperature}." : $"must be ≥ 0 (0 = greedy), got {Temperature}.");
        if (TopK < 0) return Bad(SamplingField.TopK, $"must be ≥ 0 (0 = off), got {TopK}.");
        if (!(TopP > 0 && TopP <= 1)) return Bad(SamplingField.TopP, $"must be in (0, 1], got {TopP}.");
        if (!(RepetitionPenalty > 0) || double.IsInfinity(RepetitionPenalty))
            return Bad(SamplingField.RepetitionPenalty, $"must be a positive number (1 = off, above 1 discourages repeats), got {RepetitionPenalty}.");
        if (StopStrings.Count > limits.MaxStops) return Bad(SamplingField.Stop, $"takes at most {limits.MaxStops} strings, got {StopStrings.Count}.");
        if (StopStrings.Any(string.IsNullOrEmpty)) return Bad(SamplingField.Stop, "strings must not be empty; give the text that ends generation.");
        return null;
    }

    /// <summary><see cref="Check"/>, thrown as a <see cref="UserInputException"/>; stop strings also need <see cref="Decode"/>.</summary>
    public void Validate(Func<SamplingField, string>? name = null, SamplingLimits? limits = null)
    {
        if (Check(name, limits) is { } e) throw new UserInputException(e.Message);
        if (StopStrings.Count > 0 && Decode is null) throw new ArgumentException("StopStrings need Decode: the function that renders the new tokens as text.", nameof(Decode));
    }

    /// <summary>Whether generation ends after <paramref name="output"/> (the new tokens so far, the last one just chosen).</summary>
    internal bool ShouldStop(IReadOnlyList<int> output, ISet<int> stopIds) =>
        (output.Count > 0 && stopIds.Contains(output[^1]))
        || StopWhen?.Invoke(output) == true
        || (StopStrings.Count > 0 && StopIndex(Decode!(output), StopStrings) >= 0);

    /// <summary><paramref name="text"/> up to the first of <see cref="StopStrings"/> in it (the string and what follows removed), else whole.</summary>
    public string CutAtStop(string text)
    {
        int cut = StopIndex(text, StopStrings);
        return cut >= 0 ? text[..cut] : text;
    }

    /// <summary>Where the first of <paramref name="stops"/> begins in <paramref name="text"/> (ordinal), or -1: the one stop-string rule.</summary>
    public static int StopIndex(string text, IReadOnlyList<string> stops)
    {
        int cut = -1;
        foreach (var s in stops)
        {
            int i = text.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (cut < 0 || i < cut)) cut = i;
        }
        return cut;
    }
}
