using System.Text.Json.Nodes;
using ResLora.Training.Classification;

namespace ResLora.Tests.Training.Classification;

public sealed class LabelMapTests
{
    private static JsonObject Config(string json) => (JsonObject)JsonNode.Parse(json)!;

    [Fact]
    public void FromLabels_ZeroToNIntegers_KeepTheirIds()
    {
        Assert.Equal(new[] { "0", "1", "2" }, LabelMap.FromLabels(new[] { "2", "0", "1", "0" }).Names);
    }

    [Fact]
    public void FromLabels_Strings_SortOrdinally()
    {
        // Ordinal: upper case before lower case, no culture rules.
        Assert.Equal(new[] { "B", "a", "b" }, LabelMap.FromLabels(new[] { "b", "a", "B" }).Names);
    }

    [Fact]
    public void FromConfig_Id2LabelOnly_OrLabel2IdOnly_Read()
    {
        Assert.Equal(new[] { "neg", "pos" }, LabelMap.FromConfig(Config("{\"id2label\":{\"1\":\"pos\",\"0\":\"neg\"}}")).Names);
        Assert.Equal(new[] { "neg", "pos" }, LabelMap.FromConfig(Config("{\"label2id\":{\"pos\":1,\"neg\":0}}")).Names);
    }

    [Fact]
    public void FromConfig_BadMaps_NameTheSourceAndField()
    {
        var gap = Assert.Throws<UserInputException>(() => LabelMap.FromConfig(Config("{\"id2label\":{\"0\":\"a\",\"2\":\"b\"}}"), "m/config.json"));
        Assert.StartsWith("m/config.json: id2label key '2'", gap.Message);
        var disagree = Assert.Throws<UserInputException>(() => LabelMap.FromConfig(Config("{\"id2label\":{\"0\":\"a\",\"1\":\"b\"},\"label2id\":{\"a\":1,\"b\":0}}")));
        Assert.Contains("disagree", disagree.Message);
        Assert.Contains("id2label or label2id", Assert.Throws<UserInputException>(() => LabelMap.FromConfig(Config("{}"))).Message);
        Assert.Contains("distinct", Assert.Throws<UserInputException>(() => LabelMap.FromConfig(Config("{\"id2label\":{\"0\":\"a\",\"1\":\"a\"}}"))).Message);
    }

    [Fact]
    public void ToConfigJson_ThenFromConfig_IsTheSameMap()
    {
        var map = new LabelMap(new[] { "entailment", "neutral", "contradiction" });
        var (id2label, label2id) = map.ToConfigJson();
        var back = LabelMap.FromConfig(new JsonObject { ["id2label"] = id2label, ["label2id"] = label2id });
        Assert.Equal(map.Names, back.Names);
        Assert.True(back.TryGetId("contradiction", out int id));
        Assert.Equal(2, id);
        Assert.Equal("neutral", back.NameOf(1));
    }
}
