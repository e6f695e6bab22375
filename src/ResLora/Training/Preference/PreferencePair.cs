namespace ResLora.Training.Preference;

/// <summary>
/// A tokenized preference pair: the prompt's ids, and each side as prompt + response ids with its labels (the id where
/// the loss counts, <see cref="Tokenization.IgnoreIndex"/> over the prompt), ready for one forward over both sides.
/// </summary>
/// <param name="PromptIds">The prompt's ids (BOS included when there is one), after truncation.</param>
/// <param name="ChosenIds">Prompt + chosen response ids.</param>
/// <param name="ChosenLabels">Same length as <paramref name="ChosenIds"/>: −100 over the prompt, the id over the response.</param>
/// <param name="RejectedIds">Prompt + rejected response ids.</param>
/// <param name="RejectedLabels">Same length as <paramref name="RejectedIds"/>: −100 over the prompt, the id over the response.</param>
public sealed record PreferencePair(int[] PromptIds, int[] ChosenIds, int[] ChosenLabels, int[] RejectedIds, int[] RejectedLabels)
{
    /// <summary>Whether the prompt or the responses were cut to fit (<see cref="PreferenceData.Tokenize(Text.ITextTokenizer, PreferenceExample, int, int?, PromptTruncation)"/>).</summary>
    public bool Truncated { get; init; }

    /// <summary>Whether the prompt and response were tokenized apart and joined, because the prompt's tokens were not a
    /// prefix of the whole text's (a merge across the boundary).</summary>
    public bool SplitAtBoundary { get; init; }
}

/// <summary>Which end of a too-long prompt is kept (TRL's <c>truncation_mode</c>).</summary>
public enum PromptTruncation
{
    /// <summary>Keep the prompt's last tokens, nearest the response (TRL's default, <c>keep_end</c>); a leading BOS is kept too.</summary>
    KeepEnd,

    /// <summary>Keep the prompt's first tokens (<c>keep_start</c>).</summary>
    KeepStart,
}

/// <summary>What tokenizing a preference data set produced, with how many pairs had to be cut (reported to the user).</summary>
/// <param name="Pairs">The pairs, in the data's order.</param>
/// <param name="Truncated">How many pairs were cut to fit.</param>
/// <param name="SplitAtBoundary">How many pairs had a prompt/response boundary inside a token, so were tokenized apart.</param>
public sealed record PreferenceTokenizedSet(IReadOnlyList<PreferencePair> Pairs, int Truncated, int SplitAtBoundary);
