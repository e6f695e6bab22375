using System.Globalization;
using ResLora.Plots;
using ResLora.Training;
using Spectre.Console;

namespace ResLora.Cli;

/// <summary>
/// Shows training progress: a live Spectre.Console bar (step, loss, tokens/s, ETA) on a terminal; plain periodic
/// lines on stderr when output is redirected (CI logs, pipes), since Spectre's bar prints nothing there.
/// </summary>
internal static class ProgressDisplay
{
    public static bool Interactive => !Console.IsErrorRedirected && !Console.IsOutputRedirected && AnsiConsole.Profile.Capabilities.Interactive;

    public static T Run<T>(string title, Func<ITrainObserver, T> work)
    {
        if (!Interactive) return work(new LineObserver(title));
        T result = default!;
        AnsiConsole.Progress()
            .AutoClear(false)
            .HideCompleted(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(Markup.Escape(title), autoStart: true, maxValue: 1);
                result = work(new BarObserver(task, title));
            });
        return result;
    }

    private static string F(double v) => v.ToString("0.0000", CultureInfo.InvariantCulture);

    private sealed class BarObserver(ProgressTask task, string title) : ITrainObserver
    {
        public void OnStart(int totalSteps, int startStep)
        {
            task.MaxValue = totalSteps;
            task.Value = startStep;
        }

        public void OnStep(StepReport r)
        {
            task.Value = r.Step;
            task.Description = Markup.Escape($"{title} step {r.Step}/{r.TotalSteps} loss {F(r.Loss)} {r.TokensPerSecond:0} tok/s");
        }

        public void OnEval(EvalReport r) =>
            AnsiConsole.MarkupLine(Markup.Escape($"  eval @ {r.Step}: loss {F(r.Loss)} ppl {r.Perplexity:0.00}" + (r.Accuracy is { } a ? $" accuracy {a:P1}" : "")));

        public void OnMessage(string message) => AnsiConsole.MarkupLine(Markup.Escape("  " + message));

        public void OnFinish(TrainSummary summary, string outDir) => LossPlot.SaveRun(summary, outDir);
    }

    private sealed class LineObserver(string title) : ITrainObserver
    {
        public void OnFinish(TrainSummary summary, string outDir) => LossPlot.SaveRun(summary, outDir);

        private int _total;
        private DateTime _start = DateTime.UtcNow;
        private int _startStep;

        public void OnStart(int totalSteps, int startStep)
        {
            _total = totalSteps;
            _startStep = startStep;
            _start = DateTime.UtcNow;
        }

        public void OnStep(StepReport r)
        {
            double secs = (DateTime.UtcNow - _start).TotalSeconds;
            int done = r.Step - _startStep;
            double eta = done > 0 ? secs / done * (_total - r.Step) : 0;
            Console.Error.WriteLine($"[{title}] step {r.Step}/{r.TotalSteps} loss {F(r.Loss)} lr {r.LearningRate:0.###e0} {r.TokensPerSecond:0} tok/s eta {eta:0}s");
        }

        public void OnEval(EvalReport r) =>
            Console.Error.WriteLine($"[{title}] eval @ {r.Step}: loss {F(r.Loss)} ppl {r.Perplexity:0.00}" + (r.Accuracy is { } a ? $" accuracy {a:P1}" : ""));

        public void OnMessage(string message) => Console.Error.WriteLine($"[{title}] {message}");
    }
}
