using ScottPlot;

namespace ResLora.Training;

/// <summary>Loss curves against steps as a PNG (ScottPlot, headless).</summary>
public static class LossPlot
{
    /// <summary>One method's training curve and (optionally) its evaluation points.</summary>
    public sealed record Series(string Name, IReadOnlyList<(int Step, double Loss)> Train, IReadOnlyList<(int Step, double Loss)> Eval);

    public static void Save(string path, IReadOnlyList<Series> series, string title, int width = 900, int height = 540)
    {
        var plot = new Plot();
        foreach (var s in series)
        {
            if (s.Train.Count > 0)
            {
                var line = plot.Add.Scatter(s.Train.Select(p => (double)p.Step).ToArray(), s.Train.Select(p => p.Loss).ToArray());
                line.LegendText = series.Count > 1 ? s.Name : "train";
                line.MarkerSize = 0;
            }
            if (s.Eval.Count > 0)
            {
                var ev = plot.Add.Scatter(s.Eval.Select(p => (double)p.Step).ToArray(), s.Eval.Select(p => p.Loss).ToArray());
                ev.LegendText = series.Count > 1 ? $"{s.Name} (eval)" : "eval";
                ev.LinePattern = LinePattern.Dashed;
                ev.MarkerSize = 6;
            }
        }
        plot.Title(title);
        plot.XLabel("step");
        plot.YLabel("loss");
        plot.ShowLegend(Alignment.UpperRight);
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir, $".{Path.GetFileNameWithoutExtension(path)}.tmp-{Guid.NewGuid():N}.png");
        try
        {
            plot.SavePng(tmp, width, height);
            File.Move(tmp, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }
}
