using System.Diagnostics;
using System.Text.Json;
using ResLora.Tests.Infrastructure;

namespace ResLora.Tests.Distributed;

/// <summary>
/// <c>mpirun -np 2 reslora train</c> against the same run in one process, on a tiny model (one torch thread per rank,
/// loopback): the loss curve and the saved adapter agree to float tolerance, for LoRA, ResLoRA-is and AdaLoRA; a killed
/// rank ends the job and leaves a checkpoint that one process resumes on the same curve.
/// </summary>
[Collection("console")]
public sealed class MpiTrainingTests : IDisposable
{
    private const double Rel = 2e-4, Abs = 2e-5;
    private readonly string _dir = TestDirs.InMemory("reslora-mpi-");

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); }
        catch (IOException) { }
    }

    private (string Model, string Data) Fixture(int examples = 32)
    {
        string model = CliHarness.ModelFolder(Path.Combine(_dir, "model"));
        return (model, CliHarness.Data(Path.Combine(_dir, "train.jsonl"), examples, 1));
    }

    private static string[] TrainArgs(string model, string data, string outDir, int steps, IEnumerable<string> method, params string[] more) =>
        new[] { "--model", model, "--data", data, "--out", outDir, "--steps", steps.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "--batch-size", "8", "--lr", "3e-3", "--log-every", "1", "--eval-fraction", "0", "--threads", "1" }
            .Concat(CliHarness.Templates).Concat(method).Concat(more).ToArray();

    public static TheoryData<string, string> Methods => new()
    {
        { "lora", "--method lora --targets all-linear" },
        { "reslora-is", "--method reslora --structure is --targets q_proj,v_proj" },
        { "adalora", "--method adalora --rank 4 --targets q_proj,v_proj" },
    };

    [MpiTheory]
    [MemberData(nameof(Methods))]
    public void TwoRanks_EqualOneProcess_LossCurveAndAdapter(string name, string method)
    {
        var (model, data) = Fixture();
        string one = Path.Combine(_dir, name + "-1"), two = Path.Combine(_dir, name + "-2");
        var m = method.Split(' ');
        var (rc1, out1, err1) = CliHarness.Run(new[] { "train" }.Concat(TrainArgs(model, data, one, 10, m)).ToArray());
        Assert.True(rc1 == 0, out1 + err1);
        var (rc2, out2) = MpiHarness.Train(2, TrainArgs(model, data, two, 10, m));
        Assert.True(rc2 == 0, out2);
        Assert.Contains("data-parallel over 2 ranks", out2);
        Assert.Single(System.Text.RegularExpressions.Regex.Matches(out2, "done: 10 steps")); // rank 0 alone reports

        var (l1, l2) = (MpiHarness.Losses(one), MpiHarness.Losses(two));
        Assert.Equal(l1.Keys, l2.Keys);
        foreach (var (step, loss) in l1) MpiHarness.Close(loss, l2[step], Rel, Abs, $"{name} loss at step {step}");

        var (a1, a2) = (MpiHarness.AdapterTensors(one), MpiHarness.AdapterTensors(two));
        Assert.Equal(a1.Keys.Order(), a2.Keys.Order());
        foreach (var (key, v1) in a1)
            for (int i = 0; i < v1.Length; i++) MpiHarness.Close(v1[i], a2[key][i], 1e-3, 1e-5, $"{name} {key}[{i}]");

        // Method state that steers merging or training: ResLoRA's window means and α, AdaLoRA's rank pattern.
        using var c1 = JsonDocument.Parse(File.ReadAllText(Path.Combine(one, "adapter_config.json")));
        using var c2 = JsonDocument.Parse(File.ReadAllText(Path.Combine(two, "adapter_config.json")));
        if (c1.RootElement.TryGetProperty("statistics", out var s1))
            foreach (var module in s1.EnumerateObject())
                foreach (var field in module.Value.EnumerateObject())
                    MpiHarness.Close(field.Value.GetDouble(), c2.RootElement.GetProperty("statistics").GetProperty(module.Name).GetProperty(field.Name).GetDouble(), Rel, Abs, $"{name} statistics {module.Name}.{field.Name}");
        if (c1.RootElement.TryGetProperty("rank_pattern", out var r1))
        {
            if (name == "adalora") Assert.Contains("false", r1.GetRawText()); // the allocator masked ranks: not a vacuous comparison
            Assert.Equal(r1.GetRawText(), c2.RootElement.GetProperty("rank_pattern").GetRawText());
        }
        if (name == "reslora-is") Assert.NotEmpty(c1.RootElement.GetProperty("statistics").EnumerateObject());
        Assert.False(Directory.Exists(Path.Combine(two, "rank1")));
    }

    [MpiFact]
    public void Dpo_TwoRanks_EqualOneProcess_PairsStayWhole()
    {
        string model = CliHarness.ModelFolder(Path.Combine(_dir, "model"));
        string data = Path.Combine(_dir, "pairs.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 24).Select(i => JsonSerializer.Serialize(new { prompt = $"{i} times 3 is", chosen = $" {3 * i}", rejected = $" {3 * i + 1 + i % 5}" })));
        string[] Args(string outDir) => new[] { "--model", model, "--data", data, "--out", outDir, "--steps", "6", "--batch-size", "6", "--lr", "3e-3",
            "--log-every", "1", "--eval-fraction", "0", "--threads", "1", "--objective", "dpo", "--method", "lora", "--targets", "all-linear" };
        string one = Path.Combine(_dir, "dpo-1"), two = Path.Combine(_dir, "dpo-2");
        var (rc1, out1, err1) = CliHarness.Run(new[] { "train" }.Concat(Args(one)).ToArray());
        Assert.True(rc1 == 0, out1 + err1);
        // 6 pairs over 2 ranks: 3 whole pairs (6 rows) each; splitting rows would pair chosen with another pair's rejected.
        var (rc2, out2) = MpiHarness.Train(2, Args(two));
        Assert.True(rc2 == 0, out2);
        var (l1, l2) = (MpiHarness.Losses(one), MpiHarness.Losses(two));
        Assert.Equal(6, l1.Count);
        Assert.True(l1.Values.Last() < l1.Values.First() - 0.01, "the DPO loss must move for the comparison to mean something");
        foreach (var (step, loss) in l1) MpiHarness.Close(loss, l2[step], Rel, Abs, $"dpo loss at step {step}");
        var (a1, a2) = (MpiHarness.AdapterTensors(one), MpiHarness.AdapterTensors(two));
        foreach (var (key, v1) in a1)
            for (int i = 0; i < v1.Length; i++) MpiHarness.Close(v1[i], a2[key][i], 1e-3, 1e-5, $"dpo {key}[{i}]");
    }

    [MpiFact]
    public void KilledRank_EndsTheJobWithinSeconds_AndOneProcessResumesTheSameCurve()
    {
        var (model, data) = Fixture(64);
        string reference = Path.Combine(_dir, "ref"), run = Path.Combine(_dir, "run");
        const int steps = 400;
        var lora = new[] { "--method", "lora", "--targets", "all-linear" };
        var (rc, o, e) = CliHarness.Run(new[] { "train" }.Concat(TrainArgs(model, data, reference, steps, lora, "--schedule", "linear")).ToArray());
        Assert.True(rc == 0, o + e);

        string tag = Guid.NewGuid().ToString("N");
        using var job = MpiHarness.Start(MpiHarness.MpiRun!, MpiHarness.MpiArgs(2).Concat(new[] { "-x", "RESLORA_TEST_TAG" }).Append(MpiHarness.Cli).Append("train")
            .Concat(TrainArgs(model, data, run, steps, lora, "--schedule", "linear", "--save-every", "5")), new Dictionary<string, string> { ["RESLORA_TEST_TAG"] = tag }, out var output);
        string state = Path.Combine(run, "checkpoint", "state.json");
        var wait = Stopwatch.StartNew();
        while (!File.Exists(state) && !job.HasExited && wait.Elapsed < TimeSpan.FromSeconds(120)) Thread.Sleep(20);
        Assert.True(File.Exists(state), "no checkpoint appeared: " + output());
        Assert.False(job.HasExited, "the run ended before a rank could be killed: " + output());
        int victim = RankPid(tag, 1);
        var killed = Stopwatch.StartNew();
        Process.GetProcessById(victim).Kill();
        bool ended = job.WaitForExit(30_000);
        double seconds = killed.Elapsed.TotalSeconds;
        if (!ended) job.Kill(entireProcessTree: true);
        job.WaitForExit();
        Assert.True(ended && seconds < 15, $"the job did not end within 15 s of the kill ({seconds:0.0} s): {output()}");
        Assert.NotEqual(0, job.ExitCode);
        Assert.Contains("rank 1", output());

        // The last checkpoint is usable: one process resumes it and continues the uninterrupted curve.
        var (rc2, o2, e2) = CliHarness.Run(new[] { "train" }.Concat(TrainArgs(model, data, run, steps, lora, "--schedule", "linear", "--resume")).ToArray());
        Assert.True(rc2 == 0, o2 + e2);
        Assert.Contains("resuming from step", o2 + e2);
        var (want, got) = (MpiHarness.Losses(reference), MpiHarness.Losses(run));
        Assert.Equal(want.Keys, got.Keys);
        foreach (var (step, loss) in want) MpiHarness.Close(loss, got[step], 1e-3, 1e-4, $"loss at step {step}");
    }

    [MpiFact]
    public void OneProcessCheckpoint_ResumedOnTwoRanks_ContinuesTheSameCurve()
    {
        var (model, data) = Fixture();
        string reference = Path.Combine(_dir, "ref"), run = Path.Combine(_dir, "run");
        var more = new[] { "--schedule", "linear", "--grad-accum", "2" };
        var (rc, o, e) = CliHarness.Run(new[] { "train" }.Concat(TrainArgs(model, data, reference, 12, Array.Empty<string>(), more)).ToArray());
        Assert.True(rc == 0, o + e);
        // The same run in one process through the library function behind the verb, interrupted at step 8 (checkpoint at 6).
        var req = new ResLora.Pipelines.FineTuneRequest
        {
            ModelDir = model,
            DataPath = data,
            EvalFraction = 0,
            Templates = new ResLora.Training.DataTemplates("{Body}", " {Answer}"),
            Method = new ResLora.Adapters.MethodSpec(),
            Runtime = new RuntimeOptions { Threads = 1 },
            Train = new ResLora.Training.TrainOptions { Steps = 12, BatchSize = 8, GradAccum = 2, LearningRate = 3e-3, LogEvery = 1, SaveEvery = 6, Schedule = "linear" },
            OutDir = run,
        };
        Assert.Throws<OperationCanceledException>(() => ResLora.Pipelines.FineTuning.Run(req, new StopAt(8)));

        var (rc2, output) = MpiHarness.Train(2, TrainArgs(model, data, run, 12, Array.Empty<string>(), more.Append("--resume").ToArray()));
        Assert.True(rc2 == 0, output);
        Assert.Contains("resuming from step 6", output);
        var (want, got) = (MpiHarness.Losses(reference), MpiHarness.Losses(run));
        Assert.Equal(want.Keys, got.Keys);
        foreach (var (step, loss) in want) MpiHarness.Close(loss, got[step], Rel, Abs, $"loss at step {step}");
    }

    private sealed class StopAt(int step) : ResLora.Training.ITrainObserver
    {
        public void OnStep(ResLora.Training.StepReport report)
        {
            if (report.Step == step) throw new OperationCanceledException($"stopped at step {step}");
        }
    }

    [MpiFact]
    public void NaNLoss_StopsEveryRankTogether_WithOneMessage()
    {
        string model = CliHarness.ModelFolder(Path.Combine(_dir, "model"), p => p["model.embed_tokens.weight"].fill_(double.NaN));
        string data = CliHarness.Data(Path.Combine(_dir, "train.jsonl"), 16, 1);
        var (rc, output) = MpiHarness.Train(2, TrainArgs(model, data, Path.Combine(_dir, "nan"), 4, new[] { "--method", "lora" }));
        Assert.Equal(2, rc);
        Assert.Single(System.Text.RegularExpressions.Regex.Matches(output, "training loss became NaN at step 1"));
        Assert.DoesNotContain("MPI_ABORT", output);
    }

    /// <summary>The pid of the rank of our job (tagged through its environment) with the given MPI rank.</summary>
    private static int RankPid(string tag, int rank)
    {
        foreach (var d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), out int pid)) continue;
            string env;
            try { env = File.ReadAllText(Path.Combine(d, "environ")); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { continue; }
            var vars = env.Split('\0');
            if (vars.Contains($"RESLORA_TEST_TAG={tag}") && vars.Contains($"OMPI_COMM_WORLD_RANK={rank}")) return pid;
        }
        throw new InvalidOperationException($"no process of rank {rank} found");
    }
}

/// <summary>What a launch without a usable MPI library, and the launcher environment, do (no mpirun needed).</summary>
public sealed class MpiLaunchTests
{
    [Fact]
    public void MissingMpiLibrary_UnderALauncher_IsOneLineSayingHowToInstall()
    {
        string dir = TestDirs.InMemory("reslora-nompi-");
        try
        {
            string model = CliHarness.ModelFolder(Path.Combine(dir, "model"));
            string data = CliHarness.Data(Path.Combine(dir, "train.jsonl"), 8, 1);
            var env = new Dictionary<string, string>
            {
                ["OMPI_COMM_WORLD_SIZE"] = "2",
                ["OMPI_COMM_WORLD_RANK"] = "0",
                ["RESLORA_MPI_LIBRARY"] = Path.Combine(dir, "no-such-libmpi.so"),
            };
            var (rc, output) = MpiHarness.Run(MpiHarness.Cli, new[] { "train", "--model", model, "--data", data, "--out", Path.Combine(dir, "out"), "--steps", "2" }.Concat(CliHarness.Templates), env);
            Assert.Equal(2, rc);
            var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Single(lines);
            Assert.StartsWith("error: MPI launch detected but RESLORA_MPI_LIBRARY=", lines[0]);
            Assert.Contains("apt-get install openmpi-bin libopenmpi-dev", lines[0]);
            Assert.False(Directory.Exists(Path.Combine(dir, "out")), "nothing is written before MPI is joined");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void LaunchEnvironment_OpenMpiThenPmi_NoneForAPlainProcess()
    {
        Dictionary<string, string> env = new();
        string? Get(string k) => env.TryGetValue(k, out var v) ? v : null;
        Assert.Null(ResLora.Training.Distributed.MpiCommunicator.DetectLaunch(Get));
        env = new() { ["PMI_SIZE"] = "4", ["PMI_RANK"] = "3" };
        Assert.Equal(new ResLora.Training.Distributed.MpiLaunch(3, 4, "PMI_SIZE"), ResLora.Training.Distributed.MpiCommunicator.DetectLaunch(Get));
        env = new() { ["OMPI_COMM_WORLD_SIZE"] = "2", ["OMPI_COMM_WORLD_RANK"] = "1", ["PMI_SIZE"] = "9" };
        Assert.Equal(new ResLora.Training.Distributed.MpiLaunch(1, 2, "OMPI_COMM_WORLD_SIZE"), ResLora.Training.Distributed.MpiCommunicator.DetectLaunch(Get));
        env = new() { ["OMPI_COMM_WORLD_SIZE"] = "2", ["OMPI_COMM_WORLD_RANK"] = "2" };
        Assert.Throws<UserInputException>(() => ResLora.Training.Distributed.MpiCommunicator.DetectLaunch(Get));
    }
}
