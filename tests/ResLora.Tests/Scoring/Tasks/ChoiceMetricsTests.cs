using ResLora.Scoring.Tasks;

namespace ResLora.Tests.Scoring.Tasks;

public sealed class ChoiceMetricsTests
{
    [Fact]
    public void Acc_PicksTheLargestSum_TiesGoToTheFirst()
    {
        double[] lls = [-5.0, -3.0, -3.0];
        Assert.Equal(1.0, ChoiceMetrics.Acc(lls, 1));
        Assert.Equal(0.0, ChoiceMetrics.Acc(lls, 2)); // the tie at -3.0 goes to index 1, as numpy.argmax does
        Assert.Equal(0.0, ChoiceMetrics.Acc(lls, 0));
    }

    [Fact]
    public void AccNorm_DividesByChoiceLength_AndCanDisagreeWithAcc()
    {
        // -4/2 = -2 and -6/6 = -1: the longer choice wins once normalised, the shorter one on the raw sum.
        double[] lls = [-4.0, -6.0];
        string[] choices = ["ab", "abcdef"];
        Assert.Equal(0.0, ChoiceMetrics.Acc(lls, 1));
        Assert.Equal(1.0, ChoiceMetrics.AccNorm(lls, choices, 1));
        Assert.Equal(0.0, ChoiceMetrics.AccNorm(lls, choices, 0));
    }

    [Fact]
    public void AccNorm_CountsCodePointsLikePythonLen()
    {
        // "😀x" is 2 code points (3 UTF-16 units): -3/2 = -1.5 < -4.2/3 = -1.4, so choice 1 wins. Counting UTF-16 units
        // would give -3/3 = -1.0 and pick choice 0.
        double[] lls = [-3.0, -4.2];
        Assert.Equal(1.0, ChoiceMetrics.AccNorm(lls, ["😀x", "abc"], 1));
    }

    [Fact]
    public void MeanStderr_IsSampleStdOverRootN()
    {
        // mean 0.75; squared deviations .0625 + .5625 + .0625 + .0625 = .75; sample variance .75 / 3 = .25; std .5; / √4 = .25.
        var (mean, stderr) = ChoiceMetrics.MeanStderr([1.0, 0.0, 1.0, 1.0]);
        Assert.Equal(0.75, mean, 12);
        Assert.Equal(0.25, stderr, 12);
        var (one, none) = ChoiceMetrics.MeanStderr([1.0]);
        Assert.Equal(1.0, one);
        Assert.True(double.IsNaN(none));
    }

    [Fact]
    public void BadArguments_AreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => ChoiceMetrics.Acc([-1.0, -2.0], 2));
        Assert.Throws<ArgumentException>(() => ChoiceMetrics.AccNorm([-1.0, -2.0], ["a"], 0));
        Assert.Throws<ArgumentException>(() => ChoiceMetrics.MeanStderr(Array.Empty<double>()));
    }
}
