using ResLora.Training.Classification;

namespace ResLora.Tests.Training.Classification;

public sealed class ClassificationMetricsTests
{
    private const int Digits = 12;

    /// <summary>A 3-class confusion, rows gold, columns predicted; gold and predicted class totals differ.</summary>
    private static readonly int[,] ThreeClass = { { 3, 1, 1 }, { 0, 2, 0 }, { 1, 0, 1 } };

    /// <summary>A 2×2 confusion: tp = 3 (1→1), tn = 4 (0→0), fp = 1 (0→1), fn = 2 (1→0); gold first, prediction second.</summary>
    private static (int[] Gold, int[] Pred) Binary()
    {
        var pairs = new List<(int, int)>();
        for (int i = 0; i < 3; i++) pairs.Add((1, 1));
        for (int i = 0; i < 4; i++) pairs.Add((0, 0));
        pairs.Add((0, 1));
        for (int i = 0; i < 2; i++) pairs.Add((1, 0));
        return (pairs.Select(p => p.Item1).ToArray(), pairs.Select(p => p.Item2).ToArray());
    }

    [Fact]
    public void Accuracy_ThreeOfFiveRight_IsPointSix()
    {
        // Positions 0, 1 and 3 agree: 3 / 5 = 0.6.
        Assert.Equal(0.6, ClassificationMetrics.Accuracy(new[] { 0, 1, 1, 0, 1 }, new[] { 0, 1, 0, 0, 0 }), Digits);
    }

    [Fact]
    public void MatthewsCorrelation_TwoByTwo_MatchesHandComputation()
    {
        // (tp·tn − fp·fn) / √((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (3·4 − 1·2) / √(4·5·5·6) = 10 / √600 = 1/√6.
        // Multi-class form, same data: s = 10, c = 7, t = (5, 5), p = (6, 4):
        // (7·10 − (5·6 + 5·4)) / √((100 − 36 − 16)(100 − 25 − 25)) = 20 / √(48·50) = 1/√6.
        var (gold, pred) = Binary();
        Assert.Equal(1 / Math.Sqrt(6), ClassificationMetrics.MatthewsCorrelation(gold, pred), Digits);
    }

    [Fact]
    public void MatthewsCorrelation_ThreeClasses_MatchesHandComputation()
    {
        // Confusion (rows gold, columns predicted):
        //   gold 0: 3 1 1    t0 = 5
        //   gold 1: 0 2 0    t1 = 2
        //   gold 2: 1 0 1    t2 = 2
        //   p = (4, 3, 2), correct c = 3 + 2 + 1 = 6, s = 9.
        // cov = c·s − Σ t·p = 54 − (20 + 6 + 4) = 24; s² − Σp² = 81 − 29 = 52; s² − Σt² = 81 − 33 = 48.
        // MCC = 24 / √(52·48) = 24 / √2496.
        var (gold, pred) = FromConfusion(ThreeClass);
        Assert.Equal(24 / Math.Sqrt(2496), ClassificationMetrics.MatthewsCorrelation(gold, pred), Digits);
    }

    [Fact]
    public void MatthewsCorrelation_AllPredictionsOneClass_IsZero()
    {
        // Σp² = s², so the denominator is 0: scikit-learn returns 0.
        Assert.Equal(0, ClassificationMetrics.MatthewsCorrelation(new[] { 0, 1, 1, 0 }, new[] { 1, 1, 1, 1 }));
    }

    [Fact]
    public void F1_Binary_MatchesHandComputation()
    {
        // 2·tp / (2·tp + fp + fn) = 6 / (6 + 1 + 2) = 2/3.
        var (gold, pred) = Binary();
        Assert.Equal(2.0 / 3, ClassificationMetrics.F1(gold, pred), Digits);
        // Class 0 as positive: tp = 4, fp = 2, fn = 1 → 8 / 11.
        Assert.Equal(8.0 / 11, ClassificationMetrics.F1(gold, pred, positive: 0), Digits);
    }

    [Fact]
    public void MacroF1_ClassNeverPredicted_CountsAsZero()
    {
        // gold 0 0 1 1 2 2, predicted 0 0 1 0 1 1 (class 2 never predicted).
        // class 0: tp 2, fp 1, fn 0 → 4/5;  class 1: tp 1, fp 2, fn 1 → 2/5;  class 2: tp 0, fn 2 → 0.
        // mean = (0.8 + 0.4 + 0) / 3 = 0.4.
        int[] gold = { 0, 0, 1, 1, 2, 2 }, pred = { 0, 0, 1, 0, 1, 1 };
        Assert.Equal(0.4, ClassificationMetrics.MacroF1(gold, pred), Digits);
        // Class 3 of a 4-class task is in neither list: it is left out (not 1.2 / 4 = 0.3).
        Assert.Equal(0.4, ClassificationMetrics.MetricsFor(4, gold, pred)["macro_f1"], Digits);
    }

    [Fact]
    public void MacroF1_ClassOnlyPredicted_IsIncluded()
    {
        // gold 0 0, predicted 0 1: class 0 tp 1, fn 1 → 2/3; class 1 fp 1 → 0; mean 1/3.
        Assert.Equal(1.0 / 3, ClassificationMetrics.MacroF1(new[] { 0, 0 }, new[] { 0, 1 }), Digits);
    }

    [Fact]
    public void Pearson_MatchesHandComputation()
    {
        // x̄ = 2.5, ȳ = 5; dx = (−1.5, −0.5, 0.5, 1.5), dy = (−3, −1, 0, 4).
        // Σdx·dy = 4.5 + 0.5 + 0 + 6 = 11; Σdx² = 5; Σdy² = 26; r = 11 / √130.
        Assert.Equal(11 / Math.Sqrt(130), ClassificationMetrics.Pearson(new double[] { 1, 2, 3, 4 }, new double[] { 2, 4, 5, 9 }), Digits);
        Assert.Equal(-1, ClassificationMetrics.Pearson(new double[] { 1, 2, 3 }, new double[] { 6, 4, 2 }), Digits);
    }

    [Fact]
    public void Pearson_ConstantVector_IsNaN()
    {
        Assert.True(double.IsNaN(ClassificationMetrics.Pearson(new double[] { 1, 2, 3 }, new double[] { 5, 5, 5 })));
        Assert.True(double.IsNaN(ClassificationMetrics.Spearman(new double[] { 2, 2, 2 }, new double[] { 1, 2, 3 })));
        Assert.True(double.IsNaN(ClassificationMetrics.Pearson(new double[] { 1 }, new double[] { 2 })));
    }

    [Fact]
    public void Spearman_Ties_AverageRanks()
    {
        // Ranks of (1, 2, 2, 3): the tied 2s share (2 + 3)/2 → (1, 2.5, 2.5, 4); ranks of (1, 3, 2, 4): (1, 3, 2, 4).
        // Both means 2.5; dx = (−1.5, 0, 0, 1.5), dy = (−1.5, 0.5, −0.5, 1.5).
        // Σdx·dy = 2.25 + 2.25 = 4.5; Σdx² = 4.5; Σdy² = 5; ρ = 4.5 / √22.5 = √0.9.
        Assert.Equal(new[] { 1, 2.5, 2.5, 4 }, ClassificationMetrics.Ranks(new double[] { 1, 2, 2, 3 }));
        Assert.Equal(Math.Sqrt(0.9), ClassificationMetrics.Spearman(new double[] { 1, 2, 2, 3 }, new double[] { 1, 3, 2, 4 }), Digits);
    }

    [Fact]
    public void MetricsFor_BinaryClassification_ReportsAccuracyF1Mcc()
    {
        var (gold, pred) = Binary();
        var m = ClassificationMetrics.MetricsFor(2, gold, pred);
        Assert.Equal(new[] { "accuracy", "f1", "mcc" }, m.Keys);
        Assert.Equal(0.7, m["accuracy"], Digits); // (3 + 4) / 10
        Assert.Equal(2.0 / 3, m["f1"], Digits);
        Assert.Equal(1 / Math.Sqrt(6), m["mcc"], Digits);
    }

    [Fact]
    public void MetricsFor_MultiClass_ReportsMacroF1()
    {
        var (gold, pred) = FromConfusion(ThreeClass);
        var m = ClassificationMetrics.MetricsFor(3, gold, pred);
        Assert.Equal(new[] { "accuracy", "macro_f1", "mcc" }, m.Keys);
        Assert.Equal(6.0 / 9, m["accuracy"], Digits);
        // F1 = 2tp / (2tp + fp + fn): class 0 6/(6+1+2) = 2/3; class 1 4/(4+1+0) = 4/5; class 2 2/(2+1+1) = 1/2;
        // mean = (20 + 24 + 15) / 30 / 3 = 59/90.
        Assert.Equal(59.0 / 90, m["macro_f1"], Digits);
        Assert.Equal(24 / Math.Sqrt(2496), m["mcc"], Digits);
    }

    [Fact]
    public void MetricsFor_Regression_ReportsPearsonSpearmanMse()
    {
        var m = ClassificationMetrics.MetricsFor(new double[] { 1, 2, 3 }, new double[] { 1.5, 2, 2 });
        Assert.Equal(new[] { "pearson", "spearman", "mse" }, m.Keys);
        // Squared errors 0.25, 0, 1 → 1.25 / 3.
        Assert.Equal(1.25 / 3, m["mse"], Digits);
        // x̄ = 2, ȳ = 11/6; dx = (−1, 0, 1), dy = (−1/3, 1/6, 1/6): Σdx·dy = 1/2, Σdx² = 2, Σdy² = 1/6 → r = 0.5/√(1/3) = √3/2.
        Assert.Equal(Math.Sqrt(3) / 2, m["pearson"], Digits);
        // Ranks (1, 2, 3) and (1, 2.5, 2.5); both means 2; dy = (−1, 0.5, 0.5): Σdx·dy = 1.5, Σdx² = 2, Σdy² = 1.5
        // → ρ = 1.5 / √3 = √3/2.
        Assert.Equal(Math.Sqrt(3) / 2, m["spearman"], Digits);
    }

    [Fact]
    public void Metrics_MismatchedOrOutOfRange_Throw()
    {
        Assert.Throws<ArgumentException>(() => ClassificationMetrics.Accuracy(new[] { 0, 1 }, new[] { 0 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => ClassificationMetrics.MetricsFor(2, new[] { 0, 2 }, new[] { 0, 1 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => ClassificationMetrics.MetricsFor(1, new[] { 0 }, new[] { 0 }));
        Assert.True(double.IsNaN(ClassificationMetrics.Accuracy(Array.Empty<int>(), Array.Empty<int>())));
    }

    private static (int[] Gold, int[] Pred) FromConfusion(int[,] confusion)
    {
        var gold = new List<int>();
        var pred = new List<int>();
        for (int g = 0; g < confusion.GetLength(0); g++)
        {
            for (int p = 0; p < confusion.GetLength(1); p++)
            {
                for (int n = 0; n < confusion[g, p]; n++)
                {
                    gold.Add(g);
                    pred.Add(p);
                }
            }
        }
        return (gold.ToArray(), pred.ToArray());
    }
}
