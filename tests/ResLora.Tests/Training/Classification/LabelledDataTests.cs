using System.Text.Json.Nodes;
using ResLora.Training.Classification;

namespace ResLora.Tests.Training.Classification;

public sealed class LabelledDataTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-labelled-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, string content)
    {
        string p = Path.Combine(_dir, name);
        File.WriteAllText(p, content);
        return p;
    }

    private static UserInputException Fails(string path, LabelledDataOptions? options = null) =>
        Assert.Throws<UserInputException>(() => LabelledData.Read(path, options));

    [Fact]
    public void Jsonl_IntegerLabels_KeepTheirValues()
    {
        var p = Write("a.jsonl", "{\"text\":\"good film\",\"label\":1}\n\n{\"text\":\"bad film\",\"label\":0}\n{\"text\":\"fine\",\"label\":1.0}\n");
        var d = LabelledData.Read(p);
        Assert.Equal(new[] { "0", "1" }, d.Labels!.Names);
        Assert.Equal(new[] { 1, 0, 1 }, d.Examples.Select(e => e.Label));
        Assert.Equal(new[] { 1, 3, 4 }, d.Examples.Select(e => e.Line));
        Assert.Equal(new LabelledExample("good film", null, 1, float.NaN, 1), d.Examples[0]);
        Assert.Equal("text", d.TextField);
        Assert.Null(d.PairField);
    }

    [Fact]
    public void JsonArray_StringLabels_SortedOrdinally_WithLines()
    {
        var p = Write("b.json", "[\n  {\"sentence\": \"a\", \"label\": \"pos\"},\n  {\"sentence\": \"b\", \"label\": \"neutral\"},\n\n  {\"sentence\": \"c\",\n   \"label\": \"neg\"}\n]\n");
        var d = LabelledData.Read(p);
        Assert.Equal("sentence", d.TextField);
        Assert.Equal(new[] { "neg", "neutral", "pos" }, d.Labels!.Names);
        Assert.Equal(new[] { 2, 1, 0 }, d.Examples.Select(e => e.Label));
        Assert.Equal(new[] { 2, 3, 5 }, d.Examples.Select(e => e.Line));
    }

    [Fact]
    public void IntegerLabels_NotZeroToN_SortNumerically()
    {
        // 1, 2, 10: numeric order (ordinal would put "10" before "2").
        var p = Write("stars.jsonl", "{\"text\":\"a\",\"label\":10}\n{\"text\":\"b\",\"label\":2}\n{\"text\":\"c\",\"label\":\"1\"}\n");
        var d = LabelledData.Read(p);
        Assert.Equal(new[] { "1", "2", "10" }, d.Labels!.Names);
        Assert.Equal(new[] { 2, 1, 0 }, d.Examples.Select(e => e.Label));
    }

    [Fact]
    public void Tsv_GlueLayout_Sentence1DefaultsThePair_QuotesAreText()
    {
        // MRPC/RTE style: tabs split, no quoting, CRLF line ends.
        var p = Write("dev.tsv", "idx\tsentence1\tsentence2\tlabel\r\n0\tHe said \"hi\", then left.\tHe left.\t1\r\n1\tA\t\"B\t0\r\n");
        var d = LabelledData.Read(p);
        Assert.Equal(("sentence1", "sentence2"), (d.TextField, d.PairField));
        Assert.Equal(new LabelledExample("He said \"hi\", then left.", "He left.", 1, float.NaN, 2), d.Examples[0]);
        Assert.Equal("\"B", d.Examples[1].Pair);
        Assert.Equal(3, d.Examples[1].Line);
    }

    [Fact]
    public void Tsv_Sentence1GivenByName_ImpliesNoPair()
    {
        var p = Write("rte.tsv", "sentence1\tsentence2\tlabel\nA\tB\tentailment\n");
        var d = LabelledData.Read(p, new LabelledDataOptions { TextField = "sentence1" });
        Assert.Null(d.PairField);
        Assert.Null(d.Examples[0].Pair);
    }

    [Fact]
    public void Tsv_Regression_ReadsFloatValues()
    {
        var p = Write("sts.tsv", "sentence1\tsentence2\tscore\nA man plays.\tA man is playing.\t4.8\nA cat.\tA plane.\t0\n");
        var d = LabelledData.Read(p, new LabelledDataOptions { LabelField = "score", Task = LabelTask.Regress });
        Assert.Null(d.Labels);
        Assert.Equal(LabelTask.Regress, d.Task);
        Assert.Equal(new[] { 4.8f, 0f }, d.Examples.Select(e => e.Value));
        Assert.All(d.Examples, e => Assert.Equal(-1, e.Label));
    }

    [Fact]
    public void Csv_QuotedCommasQuotesAndNewlines_AreOneField()
    {
        var p = Write("c.csv", "text,label\r\n\"Hello, world\",pos\r\n\"He said \"\"no\"\"\nand left\",neg\r\nplain,pos\r\n\"\",neg\n");
        var d = LabelledData.Read(p);
        Assert.Equal(new[] { "Hello, world", "He said \"no\"\nand left", "plain", "" }, d.Examples.Select(e => e.Text));
        // Each record knows the line it starts on: the quoted newline makes record 2 span lines 3-4.
        Assert.Equal(new[] { 2, 3, 5, 6 }, d.Examples.Select(e => e.Line));
        Assert.Equal(new[] { 1, 0, 1, 0 }, d.Examples.Select(e => e.Label));
    }

    [Fact]
    public void Csv_UnclosedQuote_NamesTheLineItOpens()
    {
        var e = Fails(Write("u.csv", "text,label\n\"never closed,1\nmore,0\n"));
        Assert.Contains("u.csv:2", e.Message);
        Assert.Contains("never closed", e.Message);
        Assert.Contains("\"\"", Fails(Write("v.csv", "text,label\n\"a\"b,1\n")).Message);
    }

    [Fact]
    public void Delimited_ColumnCountMismatch_NamesLineAndHeader()
    {
        var e = Fails(Write("m.tsv", "sentence\tlabel\nok\t1\ntoo\tmany\t1\n"));
        Assert.Contains("m.tsv:3", e.Message);
        Assert.Contains("3 columns", e.Message);
        Assert.Contains("sentence, label", e.Message);
    }

    [Fact]
    public void SavedMap_RoundTripsThroughConfig_AndLabelsTheEvalSplit()
    {
        var train = LabelledData.Read(Write("train.jsonl", "{\"text\":\"a\",\"label\":\"pos\"}\n{\"text\":\"b\",\"label\":\"neg\"}\n"));
        var (id2label, label2id) = train.Labels!.ToConfigJson();
        Assert.Equal("{\"0\":\"neg\",\"1\":\"pos\"}", id2label.ToJsonString());
        Assert.Equal("{\"neg\":0,\"pos\":1}", label2id.ToJsonString());

        var config = new JsonObject { ["model_type"] = "bert", ["id2label"] = id2label, ["label2id"] = label2id };
        var reloaded = LabelMap.FromConfig((JsonObject)JsonNode.Parse(config.ToJsonString())!);
        Assert.Equal(train.Labels.Names, reloaded.Names);

        // The eval split has only "pos": with the saved map it keeps id 1 (built from its own labels it would be 0).
        var eval = LabelledData.Read(Write("eval.jsonl", "{\"text\":\"c\",\"label\":\"pos\"}\n"), new LabelledDataOptions { LabelMap = reloaded });
        Assert.Equal(1, eval.Examples[0].Label);
        Assert.Same(reloaded, eval.Labels);
    }

    [Fact]
    public void GivenMap_IntegerLabelsAgainstNamedClasses_AreIds()
    {
        // GLUE files store class ids; a model's config names them.
        var map = new LabelMap(new[] { "negative", "positive" });
        var d = LabelledData.Read(Write("ids.jsonl", "{\"text\":\"a\",\"label\":1}\n{\"text\":\"b\",\"label\":\"negative\"}\n"), new LabelledDataOptions { LabelMap = map });
        Assert.Equal(new[] { 1, 0 }, d.Examples.Select(e => e.Label));
        // Out of range is still unknown.
        Assert.Contains("unknown label '2'", Fails(Write("ids2.jsonl", "{\"text\":\"a\",\"label\":2}\n"), new LabelledDataOptions { LabelMap = map }).Message);
    }

    [Fact]
    public void GivenMap_IntegerNames_MatchOnlyByName()
    {
        // Names "1".."3" (star ratings at ids 0..2): label 0 is not a name, and must not be read as id 0.
        var map = new LabelMap(new[] { "1", "2", "3" });
        var e = Fails(Write("stars.jsonl", "{\"text\":\"a\",\"label\":0}\n"), new LabelledDataOptions { LabelMap = map });
        Assert.Contains("unknown label '0'", e.Message);
        Assert.DoesNotContain("their ids", e.Message);
    }

    [Fact]
    public void UnknownLabel_NamesFileLineLabelAndKnownLabels()
    {
        var map = new LabelMap(new[] { "neg", "pos" });
        var p = Write("eval.jsonl", "{\"text\":\"a\",\"label\":\"pos\"}\n\n{\"text\":\"b\",\"label\":\"maybe\"}\n");
        var e = Fails(p, new LabelledDataOptions { LabelMap = map });
        Assert.StartsWith($"{p}:3: unknown label 'maybe'", e.Message);
        Assert.Contains("0=neg, 1=pos", e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }

    [Fact]
    public void MissingTextField_NamesFieldsAndFlag()
    {
        var p = Write("r.jsonl", "{\"review\":\"great\",\"label\":1}\n");
        var e = Fails(p);
        Assert.StartsWith($"{p}:1:", e.Message);
        Assert.Contains("text, sentence, sentence1", e.Message);
        Assert.Contains("review, label", e.Message);
        Assert.Contains("--text-field NAME", e.Message);
        Assert.Equal("great", LabelledData.Read(p, new LabelledDataOptions { TextField = "review" }).Examples[0].Text);
    }

    [Fact]
    public void MissingFieldOnALaterRecord_NamesLineFieldAndFlag()
    {
        var given = Fails(Write("g.jsonl", "{\"q\":\"a\",\"label\":1}\n{\"x\":\"b\",\"label\":0}\n"), new LabelledDataOptions { TextField = "q" });
        Assert.Contains("g.jsonl:2: missing field 'q'", given.Message);
        Assert.Contains("--text-field", given.Message);

        var pair = Fails(Write("p.jsonl", "{\"q\":\"a\",\"a\":\"b\",\"label\":1}\n{\"q\":\"a\",\"label\":0}\n"), new LabelledDataOptions { TextField = "q", PairField = "a" });
        Assert.Contains("p.jsonl:2: missing field 'a'", pair.Message);
        Assert.Contains("--text-pair-field", pair.Message);

        var label = Fails(Write("l.tsv", "sentence\tlabel\na\t1\nb\t\n"));
        Assert.Contains("l.tsv:3: no label in field 'label'", label.Message);
        Assert.Contains("--label-field NAME", label.Message);
    }

    [Fact]
    public void EmptyOrBrokenFiles_GetOneLineErrors()
    {
        Assert.Contains("has no records", Fails(Write("e.jsonl", "\n \n")).Message);
        Assert.Contains("has no records", Fails(Write("h.csv", "text,label\n")).Message);
        // file:line:column, and the parser's own position suffix (0-based, per line for JSONL) left out.
        var bad = Fails(Write("f.jsonl", "{\"text\":\"a\",\"label\":1}\n{oops\n"));
        Assert.Contains("f.jsonl:2:2: not valid JSON", bad.Message);
        Assert.DoesNotContain("LineNumber", bad.Message);
        var array = Fails(Write("f2.json", "[\n{\"text\":\"a\",\"label\":1},\n{oops}\n]"));
        Assert.Contains("f2.json:3:2: not valid JSON", array.Message);
        Assert.DoesNotContain("\n", array.Message);
        Assert.Contains("expected a JSON object", Fails(Write("n.jsonl", "[1, 2]\n")).Message);
        Assert.Contains(".jsonl, .json, .tsv or .csv", Fails(Write("x.txt", "text label\n")).Message);
        Assert.Throws<FileNotFoundException>(() => LabelledData.Read(Path.Combine(_dir, "none.jsonl")));
    }

    [Fact]
    public void Classify_FractionalLabels_PointToRegress()
    {
        Assert.Contains("--task regress", Fails(Write("s.jsonl", "{\"text\":\"a\",\"label\":3.8}\n")).Message);
        Assert.Contains("--task regress", Fails(Write("s.tsv", "sentence\tlabel\na\t3.8\nb\t1\n")).Message);
    }

    [Fact]
    public void Regress_NonNumericLabel_PointsToClassify()
    {
        var e = Fails(Write("t.jsonl", "{\"text\":\"a\",\"label\":\"pos\"}\n"), new LabelledDataOptions { Task = LabelTask.Regress });
        Assert.Contains("t.jsonl:1: label 'pos'", e.Message);
        Assert.Contains("--task classify", e.Message);
    }

    [Fact]
    public void Options_Conflicts_AreRejected()
    {
        var p = Write("o.jsonl", "{\"text\":\"a\",\"label\":1}\n");
        Assert.Contains("--text-pair-field", Fails(p, new LabelledDataOptions { TextField = "text", PairField = "text" }).Message);
        Assert.Contains("--task regress", Fails(p, new LabelledDataOptions { Task = LabelTask.Regress, LabelMap = new LabelMap(new[] { "a", "b" }) }).Message);
    }
}
