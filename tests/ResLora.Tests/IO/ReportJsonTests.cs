using System.Text.Json;
using ResLora.IO.Json;
using ResLora.Pipelines;

namespace ResLora.Tests.IO;

/// <summary>Reports people read write tokens such as &lt;s&gt; as they are (not \u003C), and still parse back.</summary>
public sealed class ReportJsonTests
{
    [Fact]
    public void TaskRecord_WithSpecialTokenLabels_WritesThemLiterally_AndReadsBack()
    {
        string dir = Directory.CreateTempSubdirectory("reslora-json-").FullName;
        try
        {
            var record = new ClassificationTaskRecord { Labels = new[] { "<s>", "</s>", "a&b", "café" }, TextField = "text" };
            string json = record.ToJson();
            Assert.Contains("\"<s>\"", json);
            Assert.Contains("\"</s>\"", json);
            Assert.Contains("\"a&b\"", json);
            Assert.Contains("café", json);
            Assert.DoesNotContain("\\u003C", json, StringComparison.OrdinalIgnoreCase);
            File.WriteAllText(Path.Combine(dir, ClassificationTaskRecord.FileName), json);
            Assert.Equal(record.Labels, ClassificationTaskRecord.Read(dir)!.Labels);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void TrainingDataNote_WithChatTokens_WritesThemLiterally_AndReadsBack()
    {
        var rec = new TrainingDataRecord { DataPath = "train.jsonl", ChatTemplate = "{{ bos_token }}{% for m in messages %}<|user|>{{ m.content }}</s>{% endfor %}", ChatBosToken = "<s>", ChatEosToken = "</s>" };
        var (_, json) = rec.Note();
        Assert.Contains("\"chat_bos_token\": \"<s>\"", json);
        Assert.Contains("<|user|>", json);
        Assert.DoesNotContain("\\u003C", json, StringComparison.OrdinalIgnoreCase);
        var back = JsonSerializer.Deserialize<TrainingDataRecord>(json)!;
        Assert.Equal(rec.ChatTemplate, back.ChatTemplate);
        Assert.Equal("</s>", back.ChatEosToken);
    }

    [Fact]
    public void SharedOptions_EscapeOnlyWhatJsonRequires()
    {
        string json = JsonSerializer.Serialize(new { t = "<s>\"quoted\"\n", nan = double.NaN }, ReportJson.Line);
        Assert.Equal("{\"t\":\"<s>\\\"quoted\\\"\\n\",\"nan\":\"NaN\"}", json);
        using var doc = JsonDocument.Parse(json);
        Assert.Equal("<s>\"quoted\"\n", doc.RootElement.GetProperty("t").GetString());
    }
}
