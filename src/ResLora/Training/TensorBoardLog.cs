using System.Globalization;
using System.Text.Json;
using TorchSharp.Modules;

namespace ResLora.Training;

/// <summary>
/// Writes what a run reports to TensorBoard event files (<c>events.out.tfevents.*</c>) in its output folder, beside
/// metrics.jsonl, through TorchSharp's <c>torch.utils.tensorboard.SummaryWriter</c>: <c>train/loss</c>,
/// <c>train/learning_rate</c>, <c>train/tokens_per_second</c> at each logged step, and <c>eval/loss</c>,
/// <c>eval/perplexity</c>, <c>eval/accuracy</c> and the task's further <c>eval/*</c> scores at each evaluation, so
/// <c>tensorboard --logdir OUT</c> shows the run. An observer around the caller's own, so the loop is unchanged.
/// </summary>
/// <remarks>
/// A resumed run starts a fresh event file: the old ones are deleted and the metrics kept in metrics.jsonl (already cut
/// back to the checkpoint) are written again, so steps logged after the checkpoint by the interrupted run do not appear
/// twice. Event files are a view of the run, not its record: when they cannot be written the run goes on, with a message.
/// </remarks>
internal sealed class TensorBoardLog(ITrainObserver inner, string outDir) : ITrainObserver
{
    /// <summary>The prefix of the event files this log writes (TensorBoard reads every file with it).</summary>
    public const string FilePrefix = "events.out.tfevents.";

    private SummaryWriter? _writer;
    private bool _failed;

    public void OnStart(int totalSteps, int startStep)
    {
        Try(() =>
        {
            foreach (var old in Directory.EnumerateFiles(outDir, FilePrefix + "*")) File.Delete(old);
            _writer = torch.utils.tensorboard.SummaryWriter(outDir, createRunName: false);
            if (startStep > 0) Replay(Path.Combine(outDir, TrainLoop.MetricsFile));
        });
        inner.OnStart(totalSteps, startStep);
    }

    public void OnStep(StepReport report)
    {
        Try(() =>
        {
            Step(report.Step, report.Loss, report.LearningRate, report.TokensPerSecond);
            foreach (var (k, v) in report.Metrics ?? new Dictionary<string, double>()) Scalar("train/" + k, v, report.Step);
        });
        inner.OnStep(report);
    }

    public void OnEval(EvalReport report)
    {
        Try(() => Eval(report.Step, report.Loss, report.Perplexity, report.Accuracy, report.Metrics));
        inner.OnEval(report);
    }

    public void OnMessage(string message) => inner.OnMessage(message);

    public void OnFinish(TrainSummary summary, string outDir) => inner.OnFinish(summary, outDir);

    private void Step(int step, double loss, double lr, double tokensPerSecond)
    {
        Scalar("train/loss", loss, step);
        Scalar("train/learning_rate", lr, step);
        Scalar("train/tokens_per_second", tokensPerSecond, step);
    }

    private void Eval(int step, double loss, double perplexity, double? accuracy, IReadOnlyDictionary<string, double>? metrics)
    {
        Scalar("eval/loss", loss, step);
        Scalar("eval/perplexity", perplexity, step);
        if (accuracy is { } a) Scalar("eval/accuracy", a, step);
        foreach (var (k, v) in metrics ?? new Dictionary<string, double>()) Scalar("eval/" + k, v, step);
    }

    private void Scalar(string tag, double value, int step) => _writer?.add_scalar(tag, (float)value, step);

    /// <summary>Writes the step and eval lines of metrics.jsonl (as <see cref="TrainLoop"/> writes them) into the new event file.</summary>
    private void Replay(string metricsPath)
    {
        if (!File.Exists(metricsPath)) return;
        foreach (var line in File.ReadLines(metricsPath))
        {
            if (line.Trim().Length == 0) continue;
            using var doc = JsonDocument.Parse(line);
            var r = doc.RootElement;
            int step = r.GetProperty("step").GetInt32();
            if (r.TryGetProperty("loss", out var loss))
            {
                Step(step, Number(loss), Number(r.GetProperty("lr")), Number(r.GetProperty("tokens_per_second")));
            }
            else if (r.TryGetProperty("eval_loss", out var evalLoss))
            {
                var metrics = r.EnumerateObject()
                    .Where(p => p.Name.StartsWith("eval_", StringComparison.Ordinal) && p.Name is not ("eval_loss" or "eval_perplexity" or "eval_accuracy" or "eval_tokens"))
                    .ToDictionary(p => p.Name["eval_".Length..], p => Number(p.Value), StringComparer.Ordinal);
                Eval(step, Number(evalLoss), Number(r.GetProperty("eval_perplexity")), r.TryGetProperty("eval_accuracy", out var a) ? Number(a) : null, metrics);
            }
        }
    }

    private static double Number(JsonElement e) => e.ValueKind == JsonValueKind.String
        ? double.Parse(e.GetString()!, CultureInfo.InvariantCulture)
        : e.GetDouble();

    /// <summary>Runs a write; the first failure turns the log off with one message (training never stops for it).</summary>
    private void Try(Action write)
    {
        if (_failed) return;
        try
        {
            write();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException or InvalidOperationException or FormatException
            or KeyNotFoundException or DllNotFoundException or EntryPointNotFoundException or TypeLoadException or TypeInitializationException)
        {
            _writer = null;
            _failed = true;
            inner.OnMessage($"TensorBoard event files are not written: {e.Message}");
        }
    }
}
