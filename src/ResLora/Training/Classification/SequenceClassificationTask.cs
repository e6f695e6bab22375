using ResLora.Models.Encoders;
using ResLora.Text;

namespace ResLora.Training.Classification;

/// <summary>One example as the encoder sees it: ids with specials, segments, and its gold class id (or value for regression).</summary>
public sealed record EncodedExample(EncodedInput Input, int Label, float Value);

/// <summary>What a pass over a labelled set produced: per-example predictions, class probabilities, the mean loss and the metrics.</summary>
public sealed record ClassificationResult(
    IReadOnlyList<int> Predicted,
    IReadOnlyList<float> Values,
    IReadOnlyList<IReadOnlyList<float>>? Probabilities,
    double Loss,
    IReadOnlyDictionary<string, double> Metrics);

/// <summary>
/// Sequence classification and regression on a BERT-family encoder: cross-entropy (or MSE for one output), and at
/// evaluation the task's metrics (accuracy, F1 or macro F1, Matthews correlation; Pearson, Spearman, MSE).
/// </summary>
public sealed class SequenceClassificationTask(EncoderClassifier model, int padId, IReadOnlyList<EncodedExample> train, IReadOnlyList<EncodedExample>? eval = null) : ITrainTask
{
    private readonly IReadOnlyList<EncodedExample> _eval = eval ?? Array.Empty<EncodedExample>();

    public nn.Module Model => model;
    public int TrainCount => train.Count;
    public bool HasEval => _eval.Count > 0;

    public ITrainBatchSource CreateBatchSource(TrainOptions options) =>
        new ShuffledBatchSource<EncodedExample>(train, options.BatchSize, options.Seed, g => Collate(g, padId, model.Config.IsRegression, model.Device));

    public Tensor Forward(TrainBatch batch) => model.Forward(batch.InputIds, batch.AttentionMask, batch.TokenTypeIds);

    public (Tensor Loss, long Tokens) Loss(Tensor output, TrainBatch batch) =>
        (EncoderClassifier.Loss(output, batch.Labels, model.Config.IsRegression), batch.Labels.shape[0]);

    public EvalReport Evaluate(Trainer trainer, int step, TrainOptions options)
    {
        var r = Run(model, _eval, padId, options.BatchSize, trainer.EvalMaxBatches);
        double? acc = r.Metrics.TryGetValue("accuracy", out var a) ? a : null;
        return new EvalReport(step, r.Loss, double.NaN, acc, r.Predicted.Count)
        {
            Metrics = r.Metrics.Where(kv => kv.Key != "accuracy").ToDictionary(kv => kv.Key, kv => kv.Value),
        };
    }

    /// <summary>Pads a group to its longest member: ids, mask, segments, and labels (int64 classes or float32 values).</summary>
    public static TrainBatch Collate(IReadOnlyList<EncodedExample> group, int padId, bool regression, Device? device = null)
    {
        int t = group.Max(e => e.Input.Ids.Length), b = group.Count;
        var ids = new long[b * t];
        var mask = new long[b * t];
        var types = new long[b * t];
        Array.Fill(ids, padId);
        for (int i = 0; i < b; i++)
        {
            var e = group[i].Input;
            for (int j = 0; j < e.Ids.Length; j++)
            {
                ids[i * t + j] = e.Ids[j];
                mask[i * t + j] = 1;
                types[i * t + j] = e.TypeIds[j];
            }
        }
        var dev = device ?? torch.CPU;
        Tensor labels = regression
            ? torch.tensor(group.Select(e => e.Value).ToArray(), device: dev)
            : torch.tensor(group.Select(e => (long)e.Label).ToArray(), device: dev);
        return new TrainBatch(torch.tensor(ids, new long[] { b, t }, device: dev), torch.tensor(mask, new long[] { b, t }, device: dev), labels,
            torch.tensor(types, new long[] { b, t }, device: dev));
    }

    /// <summary>
    /// Predicts every example (eval mode, no gradients, the model's mode restored) and scores the predictions against the
    /// gold labels; <paramref name="maxBatches"/> &gt; 0 stops early (periodic evaluation during training).
    /// </summary>
    public static ClassificationResult Run(EncoderClassifier model, IReadOnlyList<EncodedExample> examples, int padId, int batchSize, int maxBatches = 0)
    {
        bool regression = model.Config.IsRegression;
        bool wasTraining = model.training;
        using var noGrad = torch.no_grad();
        model.eval();
        var predicted = new List<int>();
        var values = new List<float>();
        var probs = regression ? null : new List<IReadOnlyList<float>>();
        double lossSum = 0;
        int seen = 0, batches = 0;
        try
        {
            for (int i = 0; i < examples.Count; i += batchSize)
            {
                using var scope = torch.NewDisposeScope();
                var group = examples.Skip(i).Take(batchSize).ToList();
                using var batch = Collate(group, padId, regression, model.Device);
                var logits = model.Forward(batch.InputIds, batch.AttentionMask, batch.TokenTypeIds).to_type(ScalarType.Float32);
                lossSum += EncoderClassifier.Loss(logits, batch.Labels, regression).item<float>() * group.Count;
                seen += group.Count;
                if (regression) values.AddRange(logits.squeeze(-1).cpu().data<float>().ToArray());
                else
                {
                    var p = nn.functional.softmax(logits, -1).cpu();
                    predicted.AddRange(logits.argmax(-1).cpu().data<long>().Select(x => (int)x));
                    int n = (int)p.shape[1];
                    var flat = p.data<float>().ToArray();
                    for (int r = 0; r < group.Count; r++) probs!.Add(flat.AsSpan(r * n, n).ToArray());
                }
                if (maxBatches > 0 && ++batches >= maxBatches) break;
            }
        }
        finally
        {
            if (wasTraining) model.train();
        }
        var scored = examples.Take(seen).ToList();
        var metrics = regression
            ? ClassificationMetrics.MetricsFor(scored.Select(e => (double)e.Value).ToList(), values.Select(v => (double)v).ToList())
            : ClassificationMetrics.MetricsFor(model.Config.NumLabels, scored.Select(e => e.Label).ToList(), predicted);
        return new ClassificationResult(predicted, values, probs, seen > 0 ? lossSum / seen : double.NaN, metrics);
    }
}
