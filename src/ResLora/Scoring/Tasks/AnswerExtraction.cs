using System.Text.RegularExpressions;

namespace ResLora.Scoring.Tasks;

/// <summary>
/// Reads the answer out of generated text and judges it, as LLM-Adapters' evaluation scripts do
/// (<c>commonsense_evaluate.py</c> <c>extract_answer</c>; <c>evaluate.py</c> <c>extract_answer_number</c> and
/// <c>extract_answer_letter</c>).
/// </summary>
public static class AnswerExtraction
{
    // evaluate.py: re.findall(r'-?\d+\.?\d*', sentence.replace(',', '')), the last one.
    private static readonly Regex Number = new(@"-?\d+\.?\d*", RegexOptions.CultureInvariant);

    /// <summary>
    /// The answer in <paramref name="generated"/> (the model's text after the prompt): for <c>first_match</c> the first
    /// match of the task's pattern in the stripped text (case-sensitive, like <c>re.findall(...)[0]</c>); for
    /// <c>last_number</c> the last number once commas are removed. Null when there is none (scored wrong).
    /// </summary>
    public static string? Extract(EvalTaskSpec task, string generated)
    {
        ArgumentNullException.ThrowIfNull(task);
        ArgumentNullException.ThrowIfNull(generated);
        if (task.OutputType != TaskOutputType.Generate)
            throw new ArgumentException($"task {task.Name} is multiple_choice; it is scored by log-likelihood, not by extraction.", nameof(task));
        if (task.Extraction == ExtractionRule.LastNumber)
        {
            var matches = Number.Matches(generated.Replace(",", "", StringComparison.Ordinal));
            return matches.Count == 0 ? null : matches[^1].Value;
        }
        var m = task.ExtractPattern!.Match(generated.Trim());
        return m.Success ? m.Value : null;
    }

    /// <summary>
    /// Whether <paramref name="extracted"/> is right: <c>first_match</c> compares strings exactly; <c>last_number</c>
    /// compares numbers, right when |prediction − reference| ≤ the task's tolerance. Null is wrong.
    /// </summary>
    public static bool IsCorrect(EvalTaskSpec task, string? extracted, string reference)
    {
        ArgumentNullException.ThrowIfNull(task);
        ArgumentNullException.ThrowIfNull(reference);
        if (extracted is null) return false;
        if (task.Extraction == ExtractionRule.FirstMatch) return string.Equals(extracted, reference, StringComparison.Ordinal);
        if (!TaskRecords.TryNumber(reference, out double label))
            throw new UserInputException($"task {task.Name}: the reference \"{reference}\" is not a number, and extraction \"last_number\" compares numbers.");
        return TaskRecords.TryNumber(extracted, out double predicted) && Math.Abs(predicted - label) <= task.Tolerance;
    }
}
