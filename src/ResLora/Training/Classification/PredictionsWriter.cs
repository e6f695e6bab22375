using System.Text.Json;
using ResLora.IO;

namespace ResLora.Training.Classification;

/// <summary>
/// Writes a model's predictions as JSONL, one object per example in order, all at once or not at all
/// (<see cref="AtomicFile"/>). Classification:
/// <c>{"index":0,"text":"…","pair":"…","label":"neg","prediction":"pos","probabilities":{"neg":0.1,"pos":0.9}}</c>;
/// regression: <c>{"index":0,"text":"…","value":3.8,"prediction":3.52}</c>. <c>index</c> is the example's position
/// in the list given; <c>pair</c> appears only for sentence pairs and <c>probabilities</c> only when given. A
/// prediction that is not a finite number (a diverged model) is written as <c>null</c>, since JSON has no NaN.
/// </summary>
public static class PredictionsWriter
{
    private static readonly JsonWriterOptions Options = IO.Json.ReportJson.Writer;

    /// <summary>Writes classification predictions with the class names of <paramref name="labels"/>.</summary>
    /// <param name="path">The JSONL file to write (replaced if it exists).</param>
    /// <param name="examples">The examples predicted, with their gold labels.</param>
    /// <param name="predicted">The predicted class id of each example.</param>
    /// <param name="labels">The classes, naming gold and predicted ids.</param>
    /// <param name="probabilities">Optionally each example's class probabilities, one per class in id order.</param>
    public static void Write(string path, IReadOnlyList<LabelledExample> examples, IReadOnlyList<int> predicted, LabelMap labels, IReadOnlyList<IReadOnlyList<float>>? probabilities = null)
    {
        CheckCount(examples.Count, predicted.Count, nameof(predicted));
        if (probabilities is not null) CheckCount(examples.Count, probabilities.Count, nameof(probabilities));
        WriteLines(path, examples, (w, i) =>
        {
            w.WriteString("label", labels.NameOf(examples[i].Label));
            w.WriteString("prediction", labels.NameOf(predicted[i]));
            if (probabilities is null) return;
            var row = probabilities[i];
            if (row.Count != labels.Count)
                throw new ArgumentException($"probabilities[{i}] has {row.Count} values for {labels.Count} classes.", nameof(probabilities));
            w.WriteStartObject("probabilities");
            for (int k = 0; k < row.Count; k++)
            {
                w.WritePropertyName(labels.Names[k]);
                Number(w, row[k]);
            }
            w.WriteEndObject();
        });
    }

    /// <summary>Writes regression predictions beside each example's gold value.</summary>
    /// <param name="path">The JSONL file to write (replaced if it exists).</param>
    /// <param name="examples">The examples predicted, with their gold values.</param>
    /// <param name="predicted">The predicted value of each example.</param>
    public static void Write(string path, IReadOnlyList<LabelledExample> examples, IReadOnlyList<float> predicted)
    {
        CheckCount(examples.Count, predicted.Count, nameof(predicted));
        WriteLines(path, examples, (w, i) =>
        {
            w.WritePropertyName("value");
            Number(w, examples[i].Value);
            w.WritePropertyName("prediction");
            Number(w, predicted[i]);
        });
    }

    private static void WriteLines(string path, IReadOnlyList<LabelledExample> examples, Action<Utf8JsonWriter, int> fields)
    {
        using var buffer = new MemoryStream();
        using var w = new Utf8JsonWriter(buffer, Options);
        for (int i = 0; i < examples.Count; i++)
        {
            w.WriteStartObject();
            w.WriteNumber("index", i);
            w.WriteString("text", examples[i].Text);
            if (examples[i].Pair is { } pair) w.WriteString("pair", pair);
            fields(w, i);
            w.WriteEndObject();
            w.Flush();
            buffer.WriteByte((byte)'\n');
            w.Reset(); // the next line is a new top-level value
        }
        AtomicFile.WriteAllBytes(path, buffer.ToArray());
    }

    private static void Number(Utf8JsonWriter w, float v)
    {
        if (float.IsFinite(v)) w.WriteNumberValue(v);
        else w.WriteNullValue();
    }

    private static void CheckCount(int examples, int count, string name)
    {
        if (count != examples) throw new ArgumentException($"{count} {name} for {examples} examples; give one per example.", name);
    }
}
