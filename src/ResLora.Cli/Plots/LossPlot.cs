using ResLora.Training;
using ScottPlot;

namespace ResLora.Plots;

/// <summary>Loss curves against steps as a PNG (ScottPlot, headless).</summary>
public static class LossPlot
{
    /// <summary>The plot <c>reslora train</c> writes beside the adapter.</summary>
    public const string FileName = ResLora.Pipelines.FineTuning.LossPlotFile;

    /// <summary>Writes <see cref="FileName"/> for one finished run into <paramref name="outDir"/>.</summary>
    public static string SaveRun(TrainSummary summary, string outDir)
    {
        string path = Path.Combine(outDir, FileName);
        Save(path, new[] { new Series(summary.Method, summary.Curve.Select(c => (c.Step, c.Loss)).ToList(), summary.Evals.Select(e => (e.Step, e.Loss)).ToList()) }, $"{summary.Method}: loss");
        return path;
    }

    /// <summary>One method's training curve and (optionally) its evaluation points.</summary>
    public sealed record Series(string Name, IReadOnlyList<(int Step, double Loss)> Train, IReadOnlyList<(int Step, double Loss)> Eval);

    /// <summary>One run: the logged training loss as a line, the evaluations as dots, each with its legend entry.</summary>
    public static void Save(string path, IReadOnlyList<Series> series, string title, int width = 900, int height = 540)
    {
        var plot = new Plot();
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
                ev.LegendText = series.Count > 1 ? $"{s.Name} (eval)" : "eval";
                ev.LinePattern = LinePattern.Dashed;
                ev.MarkerSize = 7;
                ev.Color = color;
            }
        }
        plot.Title(title);
        plot.XLabel("step");
        plot.YLabel("loss");
        plot.ShowLegend(Alignment.UpperRight);
        WritePng(path, tmp => plot.SavePng(tmp, width, height));
    }

    /// <summary>
    /// Several methods side by side, made to be read: the left panel shows every method's training loss (smoothed by
    /// <see cref="Smooth"/>, so the noise of single batches does not hide the trend) and its held-out evaluations as
    /// dots; the right panel zooms on the <paramref name="zoomCount"/> methods with the lowest final training loss over
    /// the last 60 % of the steps, where the best methods differ by less than the left panel can show. Every method has
    /// one colour in both panels; the legend lists every method and says what the dots are.
    /// </summary>
    public static void SaveComparison(string path, IReadOnlyList<Series> series, string title, int zoomCount = 4, int width = 1400, int height = 600)
    {
        var palette = new ScottPlot.Palettes.Category10();
        var multi = new Multiplot();
        multi.AddPlots(2);
        multi.Layout = new ScottPlot.MultiplotLayouts.Columns();
        Plot all = multi.GetPlot(0), zoom = multi.GetPlot(1);
        var smoothed = series.Select(s => Smooth(s.Train)).ToList();
        int maxStep = series.SelectMany(s => s.Train.Select(p => p.Step).Concat(s.Eval.Select(p => p.Step))).DefaultIfEmpty(1).Max();
        double zoomFrom = 0.4 * maxStep;
        var best = Enumerable.Range(0, series.Count).Where(i => smoothed[i].Count > 0)
            .OrderBy(i => smoothed[i][^1].Loss).Take(Math.Max(1, zoomCount)).ToHashSet();
        double zMin = double.MaxValue, zMax = double.MinValue;
        for (int i = 0; i < series.Count; i++)
        {
            var color = palette.GetColor(i % palette.Colors.Length);
            var pattern = i < palette.Colors.Length ? LinePattern.Solid : LinePattern.Dotted;
            AddLine(all, smoothed[i], color, pattern, series[i].Name);
            AddDots(all, series[i].Eval, color);
            if (!best.Contains(i)) continue;
            var tail = smoothed[i].Where(p => p.Step >= zoomFrom).ToList();
            AddLine(zoom, tail, color, pattern, series[i].Name);
            var evalTail = series[i].Eval.Where(p => p.Step >= zoomFrom).ToList();
            AddDots(zoom, evalTail, color);
            foreach (var (_, loss) in tail.Concat(evalTail)) { zMin = Math.Min(zMin, loss); zMax = Math.Max(zMax, loss); }
        }
        all.Title(title);
        all.XLabel("step");
        all.YLabel("training loss (smoothed); dots: held-out eval loss");
        all.ShowLegend(Alignment.UpperRight);
        if (series.Any(s => s.Eval.Count > 0))
            all.Legend.ManualItems.Add(new LegendItem { LabelText = "dots: held-out eval loss", MarkerShape = MarkerShape.FilledCircle, MarkerSize = 7, MarkerColor = Colors.Gray, LineWidth = 0 });
        zoom.Title(best.Count > 1 ? $"zoom: the {best.Count} lowest final training losses, steps {zoomFrom:0}–{maxStep}" : $"zoom: steps {zoomFrom:0}–{maxStep}");
        zoom.XLabel("step");
        zoom.YLabel("loss");
        zoom.ShowLegend(Alignment.UpperRight);
        if (zMin < zMax)
        {
            double pad = 0.08 * (zMax - zMin);
            zoom.Axes.SetLimits(zoomFrom, maxStep + 0.02 * maxStep, zMin - pad, zMax + pad);
        }
        WritePng(path, tmp => multi.SavePng(tmp, width, height));
    }

    /// <summary>
    /// An exponential moving average over the logged points (weight 0.3 on the newest), bias-corrected as Adam's moments
    /// are, so the first point is the first loss and the curve does not start at zero.
    /// </summary>
    public static List<(int Step, double Loss)> Smooth(IReadOnlyList<(int Step, double Loss)> points, double weight = 0.3)
    {
        var result = new List<(int, double)>(points.Count);
        double m = 0, decay = 1;
        foreach (var (step, loss) in points)
        {
            if (!double.IsFinite(loss)) continue;
            m = (1 - weight) * m + weight * loss;
            decay *= 1 - weight;
            result.Add((step, m / (1 - decay)));
        }
        return result;
    }

    private static void AddLine(Plot plot, IReadOnlyList<(int Step, double Loss)> points, Color color, LinePattern pattern, string name)
    {
        if (points.Count == 0) return;
        var line = plot.Add.Scatter(points.Select(p => (double)p.Step).ToArray(), points.Select(p => p.Loss).ToArray());
        line.LegendText = name;
        line.MarkerSize = 0;
        line.LineWidth = 2;
        line.LinePattern = pattern;
        line.Color = color;
    }

    private static void AddDots(Plot plot, IReadOnlyList<(int Step, double Loss)> points, Color color)
    {
        if (points.Count == 0) return;
        var ev = plot.Add.Scatter(points.Select(p => (double)p.Step).ToArray(), points.Select(p => p.Loss).ToArray());
        ev.LineWidth = 0;
        ev.MarkerSize = 8;
        ev.MarkerShape = MarkerShape.FilledCircle;
        ev.Color = color;
    }

    private static void WritePng(string path, Action<string> save)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir, $".{Path.GetFileNameWithoutExtension(path)}.tmp-{Guid.NewGuid():N}.png");
        try
        {
            save(tmp);
            File.Move(tmp, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }
}
