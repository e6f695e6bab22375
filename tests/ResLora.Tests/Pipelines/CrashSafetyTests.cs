using System.Diagnostics;
using System.Text.Json;
using ResLora.Adapters;
using ResLora.IO;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Training;
using Xunit.Abstractions;
using static ResLora.Tests.Infrastructure.CliHarness;

namespace ResLora.Tests.Pipelines;

/// <summary>
/// A short training run is killed at every fsync, rename and folder removal of its checkpoints and its final save (the
/// fault-injection seam in <see cref="Durable"/>; a simulated kill skips every clean-up, as a real one would), then
/// resumed as a user would: every kill point ends byte-identical to the uninterrupted run, with nothing left over.
/// </summary>
[Collection(TorchRngCollection.Name)]
public sealed class CrashSafetyTests(ITestOutputHelper output) : IDisposable
{
    /// <summary>In memory where possible: the test makes ~100 short runs, each with ~30 fsyncs.</summary>
    private readonly string _dir = TestDirs.InMemory("reslora-crash-");

    public void Dispose()
    {
        Durable.FaultHook = null;
        Directory.Delete(_dir, recursive: true);
    }

    /// <summary>The files a finished run leaves that must not depend on where it was killed.</summary>
    private static readonly string[] Finished = { AdapterFolder.WeightsFileName, AdapterFolder.ConfigFileName, TrainingDataRecord.FileName };

    private FineTuneRequest Request(string model, string data, string outDir, bool resume, bool overwrite = false) => new()
    {
        ModelDir = model,
        DataPath = data,
        EvalFraction = 0.25,
        Templates = new DataTemplates("{Body}", " {Answer}"),
        Method = new MethodSpec { Method = "lora", Dropout = 0.1 }, // dropout: the RNG state must survive too
        // Two steps, a checkpoint after the first: a periodic checkpoint, the final one replacing it, the final save.
        Train = new TrainOptions { Steps = 2, BatchSize = 4, LearningRate = 3e-3, LogEvery = 1, SaveEvery = 1, EvalGenerateExamples = 0 },
        OutDir = outDir,
        Resume = resume,
        Overwrite = overwrite,
    };

    /// <summary>Loss and evaluation figures by line (timings left out: they differ between runs).</summary>
    private static List<string> Losses(string outDir) => File.ReadAllLines(Path.Combine(outDir, TrainLoop.MetricsFile)).Select(l =>
    {
        using var d = JsonDocument.Parse(l);
        return string.Join(",", d.RootElement.EnumerateObject().Where(p => p.Name is "step" or "loss" or "lr" or "eval_loss").Select(p => $"{p.Name}={p.Value}"));
    }).ToList();

    [Fact]
    public void KilledAtEveryRenameAndFsync_ThenResumed_EndsByteIdenticalToTheUninterruptedRun()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "d.jsonl"), 24, 1);
        var clock = Stopwatch.StartNew();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        string whole = Path.Combine(_dir, "whole");
        var points = new List<string>();
        Durable.FaultHook = (kind, path) => points.Add($"{kind} {Path.GetRelativePath(whole, path)}");
        FineTuning.Run(Request(model, data, whole, resume: false));
        Durable.FaultHook = null;
        var expected = Finished.ToDictionary(f => f, f => File.ReadAllBytes(Path.Combine(whole, f)));
        var expectedLosses = Losses(whole);
        Assert.True(points.Count >= 40, $"only {points.Count} kill points: {string.Join("; ", points)}");

        int resumed = 0, restarted = 0;
        for (int n = 1; n <= points.Count; n++)
        {
            string dir = Path.Combine(_dir, $"kill-{n:D3}");
            int calls = 0;
            Durable.FaultHook = (kind, path) =>
            {
                if (++calls == n) throw new CrashPoint($"killed before {kind} {path}");
            };
            try
            {
                Assert.Throws<CrashPoint>(() => FineTuning.Run(Request(model, data, dir, resume: false)));
            }
            finally
            {
                Durable.FaultHook = null;
            }
            // As a user would: --resume, or a restart with --overwrite when the kill came before the first checkpoint
            // (the killed run's metrics and event files are there, and a plain run refuses to replace them).
            bool hasCheckpoint = TrainCheckpoint.Find(dir) is not null;
            if (hasCheckpoint) resumed++;
            else restarted++;
            FineTuning.Run(Request(model, data, dir, resume: hasCheckpoint, overwrite: !hasCheckpoint));

            string where = $"killed at point {n} of {points.Count} ({points[n - 1]})";
            foreach (var (file, bytes) in expected)
                Assert.True(bytes.AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(dir, file))), $"{where}: {file} differs from the uninterrupted run's");
            Assert.True(expectedLosses.SequenceEqual(Losses(dir)), $"{where}: metrics.jsonl differs:\n{string.Join("\n", Losses(dir))}");
            var left = Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName).Where(f => AtomicFile.IsLeftover(f!) || f is "checkpoint.prev" or RunLock.FileName).ToList();
            Assert.True(left.Count == 0, $"{where}: left {string.Join(", ", left)}");
            Directory.Delete(dir, recursive: true);
        }
        output.WriteLine($"{points.Count} kill points ({resumed} resumed, {restarted} restarted before the first checkpoint) in {clock.Elapsed.TotalSeconds:0.0} s ({(Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalSeconds:0.0} s CPU): {string.Join("; ", points)}");
    }
}
