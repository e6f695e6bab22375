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
        var cmd = new Command("pytorch", "Train identical steps here and in PyTorch (bench/pytorch/peer.py), alternately; check the losses agree and print time ratios.");
        foreach (var o in new Option[] { dir, method, structure, preNum, steps, repeats, threads, python, quick }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string d = r.GetValue(dir)!;
            string m = r.GetValue(method)!;
            var spec = new MethodSpec { Method = m, Options = m == "reslora" ? new ResLoraOptions(r.GetValue(structure)!, r.GetValue(preNum)) : null };
            int th = r.GetValue(threads), n = r.GetValue(steps), reps = r.GetValue(repeats);
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

    private static ParityRun RunPeer(string python, string script, string dir, int threads)
    {
        if (!File.Exists(python)) throw new FileNotFoundException($"--python {python}: not found; bench/compare-pytorch.sh installs python3-torch and libopenblas0-pthread.");
        var psi = new ProcessStartInfo(python) { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(script);
        psi.ArgumentList.Add("--dir");
        psi.ArgumentList.Add(dir);
        psi.ArgumentList.Add("--threads");
        psi.ArgumentList.Add("1");
        psi.Environment["OPENBLAS_NUM_THREADS"] = threads.ToString(CultureInfo.InvariantCulture);
        psi.Environment["OMP_NUM_THREADS"] = "1";
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {python}.");
        string stdout = p.StandardOutput.ReadToEnd();
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{script} failed (exit {p.ExitCode}): {stderr.Trim()}");
        using var doc = JsonDocument.Parse(stdout.Trim().Split('\n')[^1]);
        var root = doc.RootElement;
        return new ParityRun("pytorch", threads, root.GetProperty("losses").EnumerateArray().Select(x => x.GetDouble()).ToList(), root.GetProperty("step_seconds").EnumerateArray().Select(x => x.GetDouble()).ToList());
    }
}
