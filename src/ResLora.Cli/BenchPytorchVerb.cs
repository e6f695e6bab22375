using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using ResLora.Adapters;
using ResLora.Bench;

namespace ResLora.Cli;

/// <summary><c>reslora bench pytorch</c>: the same training steps here and in bench/pytorch/peer.py, alternately, losses compared, time ratio printed.</summary>
internal static class BenchPytorchVerb
{
    public static Command Build()
    {
        var dir = new Option<string>("--dir") { Description = "Work folder for the shared inputs.", DefaultValueFactory = _ => "reslora-parity" };
        var method = new Option<string>("--method") { Description = "lora or reslora.", DefaultValueFactory = _ => "lora" };
        var structure = new Option<string>("--structure") { Description = "ResLoRA structure: is, bs or ms.", DefaultValueFactory = _ => "is" };
        var preNum = new Option<int>("--pre-num") { Description = "ResLoRA previous blocks (bs/ms; -1 = all).", DefaultValueFactory = _ => 1 };
        var steps = new Option<int>("--steps") { Description = "Training steps per run.", DefaultValueFactory = _ => 20 };
        var repeats = new Option<int>("--repeats") { Description = "Alternating runs of each implementation.", DefaultValueFactory = _ => 2 };
        var threads = new Option<int>("--threads") { Description = "Torch threads for our side (PyTorch runs with torch threads 1 + OpenBLAS threads = this).", DefaultValueFactory = _ => 2 };
        var python = new Option<string>("--python") { Description = "Python with torch (Debian: python3-torch + libopenblas0-pthread).", DefaultValueFactory = _ => "/usr/bin/python3" };
        var quick = new Option<bool>("--quick") { Description = "Tiny shapes." };
        var model = new Option<string?>("--model") { Description = "Compare on this Hugging Face model folder (its config.json decides the shape; the weights are read in place, never copied) instead of the bench's own float32 shape." };
        var batch = new Option<int>("--batch") { Description = "With --model: sequences per step.", DefaultValueFactory = _ => 1 };
        var seqLen = new Option<int>("--seq-len") { Description = "With --model: tokens per sequence.", DefaultValueFactory = _ => 512 };
        var rank = new Option<int>("--rank") { Description = "With --model: adapter rank r (alpha = 2r).", DefaultValueFactory = _ => 16 };
        var targets = new Option<string>("--targets") { Description = "With --model: modules to adapt.", DefaultValueFactory = _ => "q_proj,k_proj,v_proj,o_proj" };
        var dtype = new Option<string>("--dtype") { Description = "With --model: float32, or bfloat16 (a bf16 frozen base, float32 adapters, on both sides).", DefaultValueFactory = _ => "float32" };
        var cmd = new Command("pytorch", "Train identical steps here and in PyTorch (bench/pytorch/peer.py), alternately; check the losses agree and print time ratios.");
        foreach (var o in new Option[] { dir, method, structure, preNum, steps, repeats, threads, python, quick, model, batch, seqLen, rank, targets, dtype }) cmd.Options.Add(o);
        cmd.Subcommands.Add(BuildWorker());
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string d = r.GetValue(dir)!;
            string m = r.GetValue(method)!;
            var spec = new MethodSpec { Method = m, Options = m == "reslora" ? new ResLoraOptions(r.GetValue(structure)!, r.GetValue(preNum)) : null };
            int th = r.GetValue(threads), n = r.GetValue(steps), reps = r.GetValue(repeats);
            if (r.GetValue(model) is { } modelDir)
            {
                if (r.GetValue(quick)) throw new UserInputException("--quick picks the bench's own tiny shape; with --model the folder's config.json decides the shape: drop one of them.");
                return CompareOnModel(r.GetValue(python)!, d, modelDir, spec, r.GetValue(batch), r.GetValue(seqLen), r.GetValue(rank), r.GetValue(targets)!, r.GetValue(dtype)!, n, reps, th);
            }
            foreach (var o in new Option[] { batch, seqLen, rank, targets, dtype })
                if (r.GetResult(o) is { Implicit: false })
                    throw new UserInputException($"{o.Name} applies with --model only; without --model bench pytorch trains its own float32 shape (--quick for a tiny one).");
            string peer = FindPeer();
            var shape = r.GetValue(quick) ? BenchShape.Quick : new BenchShape();
            PytorchParity.WriteInputs(d, shape, spec, n, 1e-3, 1);
            var ours = new List<ParityRun>();
            var theirs = new List<ParityRun>();
            for (int i = 0; i < reps; i++)
            {
                ours.Add(PytorchParity.Train(d, spec, th));
                theirs.Add(RunPeer(r.GetValue(python)!, peer, d, th));
                Console.Error.WriteLine($"round {i + 1}/{reps}: torchsharp median {Median(ours[^1].StepSeconds):0.000}s, pytorch median {Median(theirs[^1].StepSeconds):0.000}s");
            }
            double maxDiff = ours[0].Losses.Zip(theirs[0].Losses, (a, b) => Math.Abs(a - b)).Max();
            double tsMed = Median(ours.SelectMany(o => o.StepSeconds.Skip(2)).ToList()), ptMed = Median(theirs.SelectMany(o => o.StepSeconds.Skip(2)).ToList());
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{spec.Method}{(spec.Options is ResLoraOptions ro ? $" ({ro.Structure}, pre_num {ro.PreNum})" : "")}: d={shape.Hidden}, {shape.Layers} layers, seq {shape.SeqLen}, batch {shape.Batch}, {n} steps × {reps} alternating runs"));
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"losses: first {ours[0].Losses[0]:0.000000} vs {theirs[0].Losses[0]:0.000000}, last {ours[0].Losses[^1]:0.000000} vs {theirs[0].Losses[^1]:0.000000}, max |Δ| {maxDiff:0.##e0}"));
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"median step: torchsharp ({th} threads) {tsMed * 1000:0.0} ms, pytorch (1 torch thread + {th} OpenBLAS) {ptMed * 1000:0.0} ms, ratio torchsharp/pytorch {tsMed / ptMed:0.000}"));
            if (maxDiff > 1e-3) { Console.Error.WriteLine($"error: the loss curves disagree (max |Δ| {maxDiff:0.###e0} > 1e-3)."); return 1; }
            return 0;
        }));
        return cmd;
    }

    private static double Median(IReadOnlyList<double> xs) => Benchmarks.Median(xs);

    private static string FindPeer()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            string p = Path.Combine(d.FullName, "bench", "pytorch", "peer.py");
            if (File.Exists(p)) return p;
        }
        string cwd = Path.Combine(Directory.GetCurrentDirectory(), "bench", "pytorch", "peer.py");
        if (File.Exists(cwd)) return cwd;
        throw new FileNotFoundException("bench/pytorch/peer.py not found; run from the repository root.");
    }

    /// <summary>
    /// <c>--model</c>: inputs written for the folder, then each round our side and the peer, each in its own process (so
    /// each peak RSS is its own), losses compared within the dtype's tolerance, step times and peak RSS as ratios.
    /// </summary>
    private static int CompareOnModel(string python, string dir, string modelDir, MethodSpec spec, int batch, int seqLen, int rank, string targets, string dtype, int steps, int reps, int threads)
    {
        if (batch < 1) throw new UserInputException($"--batch must be at least 1, got {batch}.");
        if (seqLen < 2) throw new UserInputException($"--seq-len must be at least 2 (the loss predicts each next token), got {seqLen}.");
        if (rank < 1) throw new UserInputException($"--rank must be at least 1, got {rank}.");
        if (steps < 1) throw new UserInputException($"--steps must be at least 1, got {steps}.");
        if (reps < 1) throw new UserInputException($"--repeats must be at least 1, got {reps}.");
        if (threads < 1) throw new UserInputException($"--threads must be at least 1, got {threads}.");
        bool bf16 = RuntimeOptions.ParseDtype(dtype) == ScalarType.BFloat16;
        string dt = bf16 ? "bfloat16" : "float32";
        spec = spec with { Rank = rank, Alpha = 2 * rank, Targets = ModuleTargets.FromCommandLine(targets, "--targets") };
        PytorchParity.WriteInputs(dir, new ParityModelRun { ModelDir = modelDir, Batch = batch, SeqLen = seqLen, Dtype = dt, Targets = targets }, spec, steps, 1e-3, 1);
        string peer = FindPeer();
        if (!File.Exists(python)) throw new UserInputException($"--python {python}: not found; bench/compare-pytorch.sh installs python3-torch and libopenblas0-pthread.");
        var cfg = Models.ModelFolder.LoadConfig(modelDir);
        if (bf16 && RuntimeOptions.CpuHasFastBf16() == false)
            Console.Error.WriteLine("note: this CPU has no fast bf16 matmul: both sides run real bf16 on slow kernels here (`reslora train --dtype bfloat16` would fall back to float32).");
        // PyTorch 1.13 runs bf16 matmuls on oneDNN, whose threads are torch's own (OpenBLAS does float32 only): with bf16
        // the peer gets the same number of torch threads as we do, with float32 one torch thread + OpenBLAS's.
        int peerTorchThreads = bf16 ? threads : 1;
        string peerThreads = bf16 ? Threads(threads, "torch thread") : $"1 torch thread + {threads} OpenBLAS";
        Console.Error.WriteLine($"bench pytorch: {modelDir}, {dt}, batch {batch} × {seqLen}, {steps} steps × {reps} alternating runs, each side in its own process");
        var ours = new List<ParityRun>();
        var theirs = new List<ParityRun>();
        for (int i = 0; i < reps; i++)
        {
            ours.Add(RunOurs(dir, threads));
            theirs.Add(RunPeer(python, peer, dir, threads, peerTorchThreads));
            Console.Error.WriteLine($"round {i + 1}/{reps}: torchsharp median {Median(ours[^1].StepSeconds):0.000}s, pytorch median {Median(theirs[^1].StepSeconds):0.000}s");
        }
        var (o, t) = (ours[0].Losses, theirs[0].Losses);
        double maxAbs = o.Zip(t, (a, b) => Math.Abs(a - b)).Max();
        double maxRel = o.Zip(t, (a, b) => Math.Abs(a - b) / Math.Max(Math.Abs(b), 1e-12)).Max();
        // The first step is a warm-up (allocations, oneDNN's kernel choice) when there are more.
        int warm = steps > 1 ? 1 : 0;
        double tsMed = Median(ours.SelectMany(x => x.StepSeconds.Skip(warm)).ToList()), ptMed = Median(theirs.SelectMany(x => x.StepSeconds.Skip(warm)).ToList());
        long tsRss = ours.Max(x => x.PeakRss), ptRss = theirs.Max(x => x.PeakRss);
        double tokens = (double)batch * seqLen;
        double tolerance = bf16 ? Bf16Tolerance : Fp32Tolerance;
        string adapter = spec.Method + (spec.Options is ResLoraOptions ro ? $" ({ro.Structure}, pre_num {ro.PreNum})" : "");
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{adapter} r {rank} (alpha {2 * rank}) on {targets}: {modelDir} (hidden {cfg.HiddenSize}, {cfg.NumHiddenLayers} layers, vocab {cfg.VocabSize}), {dt}, batch {batch} × seq {seqLen}, {steps} steps × {reps} alternating runs"));
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"losses torchsharp: {string.Join(' ', o.Select(x => x.ToString("0.000000", CultureInfo.InvariantCulture)))}"));
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"losses pytorch:    {string.Join(' ', t.Select(x => x.ToString("0.000000", CultureInfo.InvariantCulture)))}"));
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"max |Δloss| {maxAbs:0.##e0}, relative {maxRel:0.##e0} (tolerance {tolerance:0.##e0} relative for {dt})"));
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"median step{(warm > 0 ? " after 1 warm-up" : "")}: torchsharp ({Threads(threads, "thread")}) {tsMed * 1000:0.0} ms ({tokens / tsMed:0.0} tokens/s), pytorch ({peerThreads}) {ptMed * 1000:0.0} ms ({tokens / ptMed:0.0} tokens/s), ratio torchsharp/pytorch {tsMed / ptMed:0.000}"));
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"peak RSS: torchsharp {tsRss / 1e9:0.00} GB, pytorch {ptRss / 1e9:0.00} GB, ratio {(double)tsRss / ptRss:0.000}; load: torchsharp {ours.Average(x => x.LoadSeconds):0.0} s, pytorch {theirs.Average(x => x.LoadSeconds):0.0} s"));
        if (maxRel > tolerance)
        {
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"error: the loss curves disagree (max relative |Δ| {maxRel:0.###e0} > {tolerance:0.##e0} for {dt})."));
            return 1;
        }
        return 0;
    }

    private static string Threads(int n, string what) => $"{n} {what}{(n == 1 ? "" : "s")}";

    /// <summary>Relative loss agreement required in float32: both sides do the same float32 arithmetic in a different order.</summary>
    private const double Fp32Tolerance = 1e-4;

    /// <summary>
    /// Relative loss agreement required with a bf16 base: bf16 rounds at every op and the two libraries' kernels round
    /// differently (measured 5e-5 on Qwen2.5-0.5B's shape, 1.4e-4 on SmolLM2-135M's, up to 1e-3 on a tiny model with large weights).
    /// </summary>
    private const double Bf16Tolerance = 5e-3;

    private static Command BuildWorker()
    {
        var dir = new Option<string>("--dir") { Required = true };
        var threads = new Option<int>("--threads") { DefaultValueFactory = _ => 2 };
        var cmd = new Command("worker", "(internal) our side of bench pytorch --model, in its own process; prints one JSON line.") { Hidden = true };
        cmd.Options.Add(dir);
        cmd.Options.Add(threads);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string d = r.GetValue(dir)!;
            var run = PytorchParity.Train(d, PytorchParity.SpecOf(d), r.GetValue(threads));
            Console.Out.WriteLine(JsonSerializer.Serialize(new { impl = "torchsharp", losses = run.Losses, step_seconds = run.StepSeconds, load_seconds = run.LoadSeconds, peak_rss = ProcessMemory.PeakRss() }));
            return 0;
        }));
        return cmd;
    }

    /// <summary>Our side in a child process of this executable (as bench scale's workers), so its peak RSS is its own.</summary>
    private static ParityRun RunOurs(string dir, int threads)
    {
        var psi = ChildProcess.Self(new[] { "bench", "pytorch", "worker", "--dir", dir, "--threads", threads.ToString(CultureInfo.InvariantCulture) });
        return Run(psi, "torchsharp", threads, "bench pytorch worker");
    }

    private static ParityRun RunPeer(string python, string script, string dir, int threads, int torchThreads = 1)
    {
        if (!File.Exists(python)) throw new FileNotFoundException($"--python {python}: not found; bench/compare-pytorch.sh installs python3-torch and libopenblas0-pthread.");
        var psi = new ProcessStartInfo(python) { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(script);
        psi.ArgumentList.Add("--dir");
        psi.ArgumentList.Add(dir);
        psi.ArgumentList.Add("--threads");
        psi.ArgumentList.Add(torchThreads.ToString(CultureInfo.InvariantCulture));
        psi.Environment["OPENBLAS_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture);
        psi.Environment["OMP_NUM_THREADS"] = "1";
        return Run(psi, "pytorch", threads, script);
    }

    /// <summary>Runs one side and reads its last stdout line: JSON with losses, step_seconds and (optionally) peak_rss, load_seconds.</summary>
    private static ParityRun Run(ProcessStartInfo psi, string impl, int threads, string what)
    {
        using var doc = JsonDocument.Parse(ChildProcess.LastLine(psi, what));
        var root = doc.RootElement;
        return new ParityRun(impl, threads, root.GetProperty("losses").EnumerateArray().Select(x => x.GetDouble()).ToList(), root.GetProperty("step_seconds").EnumerateArray().Select(x => x.GetDouble()).ToList())
        {
            PeakRss = root.TryGetProperty("peak_rss", out var rss) ? rss.GetInt64() : 0,
            LoadSeconds = root.TryGetProperty("load_seconds", out var ls) ? ls.GetDouble() : 0,
        };
    }
}
