using System.Globalization;
using ResLora.Demo;
using Spectre.Console;

namespace ResLora.Cli;

/// <summary>
/// The demo's overall progress: on a terminal one live bar (run k of n, its step, percent of the whole job and the time
/// left); when output is redirected, a line on stderr whenever the stage or run changes and at most every 15 s between.
/// </summary>
internal static class DemoProgressDisplay
{
    private static ProgressTask? _bar;
    private static readonly object Gate = new();

    public static T Run<T>(Func<Action<DemoProgress>, T> work)
    {
        if (!ProgressDisplay.Interactive)
        {
            var lines = new LineSink();
            return work(lines.Report);
        }
        T result = default!;
        AnsiConsole.Progress()
            .AutoClear(false)
            .HideCompleted(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new SpinnerColumn())
            .Start(ctx =>
            {
                lock (Gate) _bar = ctx.AddTask("demo", autoStart: true, maxValue: 1000);
                try
                {
                    result = work(p =>
                    {
                        lock (Gate)
                        {
                            _bar!.Value = p.Fraction * 1000;
                            _bar.Description = Markup.Escape(Describe(p));
                        }
                    });
                    lock (Gate) _bar!.Value = 1000;
                }
                finally
                {
                    lock (Gate) _bar = null;
                }
            });
        return result;
    }

    /// <summary>A message line (above the live bar on a terminal, on stderr otherwise).</summary>
    public static void Message(string message)
    {
        lock (Gate)
        {
            if (_bar is not null) AnsiConsole.MarkupLine(Markup.Escape("  " + message));
            else Console.Error.WriteLine($"[demo] {message}");
        }
    }

    /// <summary>"run 3/10 reslora-is step 120/200 · 2 min 10 s elapsed · about 4 min 05 s left".</summary>
    public static string Describe(DemoProgress p)
    {
        string what = p.Runs > 0 && p.Stage == "fine-tuning" ? $"run {p.Run}/{p.Runs} {p.RunLabel}" : p.Stage;
        if (p.Steps > 0) what += string.Create(CultureInfo.InvariantCulture, $" step {p.Step}/{p.Steps}");
        string left = p.RemainingSeconds is { } r ? $" · about {DemoProgress.Clock(r)} left" : "";
        return $"{what} · {DemoProgress.Clock(p.ElapsedSeconds)} elapsed{left}";
    }


    private sealed class LineSink
    {
        private string _last = "";
        private double _lastAt = double.NegativeInfinity;

        public void Report(DemoProgress p)
        {
            string key = $"{p.Stage}|{p.Run}";
            if (key == _last && p.ElapsedSeconds - _lastAt < 15) return;
            (_last, _lastAt) = (key, p.ElapsedSeconds);
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[demo {p.Fraction * 100:0} %] {Describe(p)}"));
        }
    }
}
