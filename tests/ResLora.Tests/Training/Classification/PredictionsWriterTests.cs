using ResLora.Training.Classification;

namespace ResLora.Tests.Training.Classification;

public sealed class PredictionsWriterTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-predictions-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Write_Classification_OneJsonLinePerExample()
    {
        var map = new LabelMap(new[] { "neg", "pos" });
        var examples = new[] { new LabelledExample("café", null, 1, float.NaN, 2), new LabelledExample("a \"b\"", "c", 0, float.NaN, 3) };
        string path = Path.Combine(_dir, "sub", "predictions.jsonl");
        File.WriteAllText(Path.Combine(_dir, "old"), "");
        PredictionsWriter.Write(path, examples, new[] { 1, 1 }, map, new[] { new[] { 0.25f, 0.75f }, new[] { 0.5f, 0.5f } });
        Assert.Equal(
            "{\"index\":0,\"text\":\"café\",\"label\":\"pos\",\"prediction\":\"pos\",\"probabilities\":{\"neg\":0.25,\"pos\":0.75}}\n" +
            "{\"index\":1,\"text\":\"a \\\"b\\\"\",\"pair\":\"c\",\"label\":\"neg\",\"prediction\":\"pos\",\"probabilities\":{\"neg\":0.5,\"pos\":0.5}}\n",
            File.ReadAllText(path));
        // Written whole: no temporary file is left beside it.
        Assert.Equal(new[] { "predictions.jsonl" }, Directory.GetFiles(Path.GetDirectoryName(path)!).Select(Path.GetFileName));

        PredictionsWriter.Write(path, examples, new[] { 0, 0 }, map);
        Assert.DoesNotContain("probabilities", File.ReadAllText(path));
    }

    [Fact]
    public void Write_Regression_ValuesAndPredictionsAsNumbers_NaNAsNull()
    {
        var examples = new[] { new LabelledExample("a", "b", -1, 3.5f, 2), new LabelledExample("c", "d", -1, 0.1f, 3) };
        string path = Path.Combine(_dir, "sts.jsonl");
        PredictionsWriter.Write(path, examples, new[] { 3.25f, float.NaN });
        Assert.Equal(
            "{\"index\":0,\"text\":\"a\",\"pair\":\"b\",\"value\":3.5,\"prediction\":3.25}\n" +
            "{\"index\":1,\"text\":\"c\",\"pair\":\"d\",\"value\":0.1,\"prediction\":null}\n",
            File.ReadAllText(path));
    }

    [Fact]
    public void Write_CountsDisagree_ThrowsAndWritesNothing()
    {
        var examples = new[] { new LabelledExample("a", null, 0, float.NaN, 1) };
        var map = new LabelMap(new[] { "neg", "pos" });
        string path = Path.Combine(_dir, "p.jsonl");
        Assert.Throws<ArgumentException>(() => PredictionsWriter.Write(path, examples, new[] { 0, 1 }, map));
        Assert.Throws<ArgumentException>(() => PredictionsWriter.Write(path, examples, new[] { 0 }, map, new[] { new[] { 1f } }));
        Assert.False(File.Exists(path));
    }
}
