namespace ResLora.Scoring.Tasks;

/// <summary>
/// lm-evaluation-harness's multiple-choice metrics (<c>ConfigurableTask.process_results</c> for
/// <c>multiple_choice</c>) and the standard error it reports for a mean.
/// </summary>
public static class ChoiceMetrics
{
    /// <summary>The index of the largest value; ties go to the first, as <c>numpy.argmax</c> picks.</summary>
    public static int Argmax(IReadOnlyList<double> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (values.Count == 0) throw new ArgumentException("no values to pick from.", nameof(values));
        int best = 0;
        for (int i = 1; i < values.Count; i++)
            if (values[i] > values[best]) best = i;
        return best;
    }

    /// <summary><c>acc</c>: 1 when the choice with the largest summed log-likelihood is <paramref name="gold"/>, else 0.</summary>
    /// <param name="lls">Summed log-likelihood of each choice's continuation.</param>
    /// <param name="gold">Index of the correct choice.</param>
    public static double Acc(IReadOnlyList<double> lls, int gold)
    {
        CheckGold(lls, gold);
        return Argmax(lls) == gold ? 1.0 : 0.0;
    }

    /// <summary>
    /// <c>acc_norm</c>: as <see cref="Acc"/> after dividing each log-likelihood by its choice's length in characters
    /// (Unicode code points, as Python's <c>len</c> counts).
    /// </summary>
    /// <param name="lls">Summed log-likelihood of each choice's continuation.</param>
    /// <param name="choiceTexts">The choices (<see cref="ChoiceQuestion.ChoiceTexts"/>), one per log-likelihood.</param>
    /// <param name="gold">Index of the correct choice.</param>
    public static double AccNorm(IReadOnlyList<double> lls, IReadOnlyList<string> choiceTexts, int gold)
    {
        CheckGold(lls, gold);
        ArgumentNullException.ThrowIfNull(choiceTexts);
        if (choiceTexts.Count != lls.Count)
            throw new ArgumentException($"{lls.Count} log-likelihoods and {choiceTexts.Count} choices; give one per choice.", nameof(choiceTexts));
        var normed = new double[lls.Count];
        for (int i = 0; i < lls.Count; i++)
        {
            int length = choiceTexts[i].EnumerateRunes().Count();
            if (length == 0) throw new ArgumentException($"choice {i} is empty; acc_norm divides by its length.", nameof(choiceTexts));
            normed[i] = lls[i] / length;
        }
        return Argmax(normed) == gold ? 1.0 : 0.0;
    }

    /// <summary>
    /// The mean of <paramref name="values"/> and its standard error as lm-eval reports it: the sample standard
    /// deviation (n − 1 in the denominator) divided by √n. The error is NaN for fewer than two values.
    /// </summary>
    public static (double Mean, double Stderr) MeanStderr(IReadOnlyList<double> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (values.Count == 0) throw new ArgumentException("no values to average.", nameof(values));
        int n = values.Count;
        double mean = values.Sum() / n;
        if (n < 2) return (mean, double.NaN);
        double squares = values.Sum(v => (v - mean) * (v - mean));
        return (mean, Math.Sqrt(squares / (n - 1)) / Math.Sqrt(n));
    }

    private static void CheckGold(IReadOnlyList<double> lls, int gold)
    {
        ArgumentNullException.ThrowIfNull(lls);
        if (lls.Count == 0) throw new ArgumentException("no log-likelihoods to pick from.", nameof(lls));
        if (gold < 0 || gold >= lls.Count) throw new ArgumentOutOfRangeException(nameof(gold), gold, $"there are {lls.Count} choices.");
    }
}
