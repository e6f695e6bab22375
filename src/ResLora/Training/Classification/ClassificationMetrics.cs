namespace ResLora.Training.Classification;

/// <summary>
/// The GLUE metrics for sentence classification and regression, computed as scikit-learn and SciPy do
/// (<c>accuracy_score</c>, <c>f1_score</c>, <c>matthews_corrcoef</c>, <c>pearsonr</c>, <c>spearmanr</c>,
/// <c>mean_squared_error</c>). Inputs are paired lists of equal length; a length mismatch is a caller bug and throws
/// <see cref="ArgumentException"/>. An empty input gives <see cref="double.NaN"/>: there is nothing to score.
/// </summary>
public static class ClassificationMetrics
{
    /// <summary>Fraction of positions where <paramref name="predicted"/> equals <paramref name="gold"/>.</summary>
    /// <param name="gold">The reference label ids.</param>
    /// <param name="predicted">The predicted label ids, one per gold label.</param>
    public static double Accuracy(IReadOnlyList<int> gold, IReadOnlyList<int> predicted)
    {
        CheckPaired(gold.Count, predicted.Count);
        if (gold.Count == 0) return double.NaN;
        int correct = 0;
        for (int i = 0; i < gold.Count; i++)
        {
            if (gold[i] == predicted[i]) correct++;
        }
        return (double)correct / gold.Count;
    }

    /// <summary>
    /// Binary F1 of the class <paramref name="positive"/>: 2·tp / (2·tp + fp + fn), the harmonic mean of precision
    /// and recall. When the positive class is neither in <paramref name="gold"/> nor predicted (tp + fp + fn = 0) the
    /// score is 0, as scikit-learn's default <c>zero_division</c> gives.
    /// </summary>
    /// <param name="gold">The reference label ids.</param>
    /// <param name="predicted">The predicted label ids, one per gold label.</param>
    /// <param name="positive">The positive class; GLUE's binary tasks (MRPC, QQP) score label 1.</param>
    public static double F1(IReadOnlyList<int> gold, IReadOnlyList<int> predicted, int positive = 1)
    {
        CheckPaired(gold.Count, predicted.Count);
        if (gold.Count == 0) return double.NaN;
        return ClassF1(gold, predicted, positive);
    }

    /// <summary>
    /// The unweighted mean of the per-class F1 scores over every label that occurs in <paramref name="gold"/> or in
    /// <paramref name="predicted"/> (scikit-learn's <c>f1_score(average="macro")</c>, whose labels are that union).
    /// A class that is in the gold labels but never predicted counts with F1 0; a class that appears in neither list
    /// is left out, because an F1 of 0 for it would only say that the evaluation set lacks it.
    /// </summary>
    /// <param name="gold">The reference label ids.</param>
    /// <param name="predicted">The predicted label ids, one per gold label.</param>
    public static double MacroF1(IReadOnlyList<int> gold, IReadOnlyList<int> predicted)
    {
        CheckPaired(gold.Count, predicted.Count);
        if (gold.Count == 0) return double.NaN;
        var labels = new SortedSet<int>(gold);
        labels.UnionWith(predicted);
        double sum = 0;
        foreach (int c in labels) sum += ClassF1(gold, predicted, c);
        return sum / labels.Count;
    }

    /// <summary>
    /// Matthews correlation coefficient in its multi-class form (Gorodkin 2004, as scikit-learn's
    /// <c>matthews_corrcoef</c> computes it). With C the confusion matrix, t<sub>k</sub> the times class k truly
    /// occurs, p<sub>k</sub> the times it is predicted, c the correct predictions and s the samples:
    /// (c·s − Σ t<sub>k</sub>p<sub>k</sub>) / √((s² − Σ p<sub>k</sub>²)(s² − Σ t<sub>k</sub>²)).
    /// For two classes this is the familiar (tp·tn − fp·fn) / √((tp+fp)(tp+fn)(tn+fp)(tn+fn)).
    /// It is 0 when the denominator is 0 (all gold labels or all predictions one class), as scikit-learn returns.
    /// </summary>
    /// <param name="gold">The reference label ids.</param>
    /// <param name="predicted">The predicted label ids, one per gold label.</param>
    public static double MatthewsCorrelation(IReadOnlyList<int> gold, IReadOnlyList<int> predicted)
    {
        CheckPaired(gold.Count, predicted.Count);
        if (gold.Count == 0) return double.NaN;
        var trueCount = new Dictionary<int, long>();
        var predCount = new Dictionary<int, long>();
        long correct = 0;
        for (int i = 0; i < gold.Count; i++)
        {
            trueCount[gold[i]] = trueCount.GetValueOrDefault(gold[i]) + 1;
            predCount[predicted[i]] = predCount.GetValueOrDefault(predicted[i]) + 1;
            if (gold[i] == predicted[i]) correct++;
        }
        // Doubles throughout: s² overflows a long past ~3e9 samples and the products are compared, not counted.
        double s = gold.Count;
        double tp = 0, pp = 0, tt = 0;
        foreach (var (k, t) in trueCount)
        {
            tt += (double)t * t;
            tp += (double)t * predCount.GetValueOrDefault(k);
        }
        foreach (long p in predCount.Values) pp += (double)p * p;
        double cov = correct * s - tp;
        double denominator = (s * s - pp) * (s * s - tt);
        return denominator == 0 ? 0 : cov / Math.Sqrt(denominator);
    }

    /// <summary>
    /// Pearson's correlation Σ(x−x̄)(y−ȳ) / √(Σ(x−x̄)² Σ(y−ȳ)²). NaN when either list is constant (the correlation is
    /// undefined; SciPy's <c>pearsonr</c> also returns NaN) or has fewer than two values.
    /// </summary>
    /// <param name="x">The first variable (e.g. the gold scores).</param>
    /// <param name="y">The second variable (e.g. the predictions), one per value of <paramref name="x"/>.</param>
    public static double Pearson(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        CheckPaired(x.Count, y.Count);
        if (x.Count < 2) return double.NaN;
        double mx = 0, my = 0;
        for (int i = 0; i < x.Count; i++)
        {
            mx += x[i];
            my += y[i];
        }
        mx /= x.Count;
        my /= y.Count;
        double sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < x.Count; i++)
        {
            double dx = x[i] - mx, dy = y[i] - my;
            sxy += dx * dy;
            sxx += dx * dx;
            syy += dy * dy;
        }
        if (sxx == 0 || syy == 0) return double.NaN;
        // Rounding can carry |r| a few ulps past 1 for exactly linear data; clamp so r = 1 compares equal.
        return Math.Clamp(sxy / Math.Sqrt(sxx * syy), -1, 1);
    }

    /// <summary>
    /// Spearman's rank correlation: each list is replaced by its ranks (1-based; tied values share the mean of the
    /// ranks they span, SciPy's <c>rankdata(method="average")</c>), then <see cref="Pearson"/> of the ranks. NaN when
    /// either list is constant or has fewer than two values.
    /// </summary>
    /// <param name="x">The first variable (e.g. the gold scores).</param>
    /// <param name="y">The second variable (e.g. the predictions), one per value of <paramref name="x"/>.</param>
    public static double Spearman(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        CheckPaired(x.Count, y.Count);
        return Pearson(Ranks(x), Ranks(y));
    }

    /// <summary>Mean of the squared differences between <paramref name="predicted"/> and <paramref name="gold"/>.</summary>
    /// <param name="gold">The reference values.</param>
    /// <param name="predicted">The predicted values, one per gold value.</param>
    public static double MeanSquaredError(IReadOnlyList<double> gold, IReadOnlyList<double> predicted)
    {
        CheckPaired(gold.Count, predicted.Count);
        if (gold.Count == 0) return double.NaN;
        double sum = 0;
        for (int i = 0; i < gold.Count; i++)
        {
            double d = predicted[i] - gold[i];
            sum += d * d;
        }
        return sum / gold.Count;
    }

    /// <summary>
    /// The metrics GLUE reports for a classification task, by name in this order: with 2 labels <c>accuracy</c>,
    /// <c>f1</c> (positive label 1) and <c>mcc</c>; with more, <c>accuracy</c>, <c>macro_f1</c> and <c>mcc</c>.
    /// The task is in the argument types: label ids here, values in the regression overload.
    /// </summary>
    /// <param name="numLabels">The number of classes (the label map's size); at least 2.</param>
    /// <param name="gold">The reference label ids, each in [0, <paramref name="numLabels"/>).</param>
    /// <param name="predicted">The predicted label ids, one per gold label, each in [0, <paramref name="numLabels"/>).</param>
    public static IReadOnlyDictionary<string, double> MetricsFor(int numLabels, IReadOnlyList<int> gold, IReadOnlyList<int> predicted)
    {
        if (numLabels < 2) throw new ArgumentOutOfRangeException(nameof(numLabels), numLabels, "classification needs at least 2 labels; one output is regression.");
        CheckPaired(gold.Count, predicted.Count);
        CheckRange(gold, numLabels, nameof(gold));
        CheckRange(predicted, numLabels, nameof(predicted));
        var result = new Dictionary<string, double> { ["accuracy"] = Accuracy(gold, predicted) };
        if (numLabels == 2) result["f1"] = F1(gold, predicted);
        else result["macro_f1"] = MacroF1(gold, predicted);
        result["mcc"] = MatthewsCorrelation(gold, predicted);
        return result;
    }

    /// <summary>The metrics GLUE reports for a regression task (STS-B), by name in this order: <c>pearson</c>, <c>spearman</c>, <c>mse</c>.</summary>
    /// <param name="gold">The reference values.</param>
    /// <param name="predicted">The predicted values, one per gold value.</param>
    public static IReadOnlyDictionary<string, double> MetricsFor(IReadOnlyList<double> gold, IReadOnlyList<double> predicted) =>
        new Dictionary<string, double>
        {
            ["pearson"] = Pearson(gold, predicted),
            ["spearman"] = Spearman(gold, predicted),
            ["mse"] = MeanSquaredError(gold, predicted),
        };

    /// <summary>Ranks 1..n with ties given the mean of the ranks they span.</summary>
    internal static double[] Ranks(IReadOnlyList<double> values)
    {
        var order = Enumerable.Range(0, values.Count).ToArray();
        Array.Sort(order, (a, b) => values[a].CompareTo(values[b]));
        var ranks = new double[values.Count];
        for (int start = 0; start < order.Length;)
        {
            int end = start + 1;
            while (end < order.Length && values[order[end]].CompareTo(values[order[start]]) == 0) end++;
            // Positions start..end-1 hold equal values: ranks start+1..end, whose mean is (start+1+end)/2.
            double rank = (start + 1 + end) / 2.0;
            for (int i = start; i < end; i++) ranks[order[i]] = rank;
            start = end;
        }
        return ranks;
    }

    private static double ClassF1(IReadOnlyList<int> gold, IReadOnlyList<int> predicted, int c)
    {
        long tp = 0, fp = 0, fn = 0;
        for (int i = 0; i < gold.Count; i++)
        {
            bool g = gold[i] == c, p = predicted[i] == c;
            if (g && p) tp++;
            else if (p) fp++;
            else if (g) fn++;
        }
        long denominator = 2 * tp + fp + fn;
        return denominator == 0 ? 0 : 2.0 * tp / denominator;
    }

    private static void CheckPaired(int gold, int predicted)
    {
        if (gold != predicted) throw new ArgumentException($"the two lists must pair up: {gold} gold values and {predicted} predictions.");
    }

    private static void CheckRange(IReadOnlyList<int> labels, int numLabels, string name)
    {
        for (int i = 0; i < labels.Count; i++)
        {
            if ((uint)labels[i] >= (uint)numLabels)
                throw new ArgumentOutOfRangeException(name, labels[i], $"{name}[{i}] = {labels[i]} is not a label id in [0, {numLabels}).");
        }
    }
}
