using ResLora.Training;
using ScottPlot;

namespace ResLora.Plots;

/// <summary>Loss curves against steps as a PNG (ScottPlot, headless).</summary>
public static class LossPlot
{
    /// <summary>The plot <c>reslora train</c> writes beside the adapter.</summary>
    public const string FileName = "loss.png";

    /// <summary>Writes <see cref="FileName"/> for one finished run into <paramref name="outDir"/>.</summary>
    public static string SaveRun(TrainSummary summary, string outDir)
    {
        string path = Path.Combine(outDir, FileName);
        Save(path, new[] { new Series(summary.Method, summary.Curve.Select(c => (c.Step, c.Loss)).ToList(), summary.Evals.Select(e => (e.Step, e.Loss)).ToList()) }, $"{summary.Method}: loss");
        return path;
    }

    /// <summary>One method's training curve and (optionally) its evaluation points.</summary>
    public sealed record Series(string Name, IReadOnlyList<(int Step, double Loss)> Train, IReadOnlyList<(int Step, double Loss)> Eval);

    public static void Save(string path, IReadOnlyList<Series> series, string title, int width = 900, int height = 540)
    {
        var plot = new Plot();
        // One distinct colour per method (Category10 has ten); a method's eval points share its colour, and with several
        // methods they carry no legend entry of their own (the legend lists methods, to the right of the plot).
        var palette = new ScottPlot.Palettes.Category10();
        for (int i = 0; i < series.Count; i++)
        {
            var s = series[i];
            var color = palette.GetColor(i);
            if (s.Train.Count > 0)
            {
                var line = plot.Add.Scatter(s.Train.Select(p => (double)p.Step).ToArray(), s.Train.Select(p => p.Loss).ToArray());
                line.LegendText = series.Count > 1 ? s.Name : "train";
                line.MarkerSize = 0;
                line.Color = color;
            }
            if (s.Eval.Count > 0)
            {
                var ev = plot.Add.Scatter(s.Eval.Select(p => (double)p.Step).ToArray(), s.Eval.Select(p => p.Loss).ToArray());
                if (series.Count == 1) ev.LegendText = "eval";
                ev.LinePattern = LinePattern.Dashed;
                ev.MarkerSize = 7;
                ev.Color = color;
            }
        }
        plot.Title(title);
        plot.XLabel("step");
        plot.YLabel("loss");
        if (series.Count > 1) plot.ShowLegend(Edge.Right);
        else plot.ShowLegend(Alignment.UpperRight);
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
