using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using ResLora.Adapters;
using ResLora.Bench;
using Spectre.Console;

namespace ResLora.Cli;

internal static class BenchVerb
{
    public static Command Build()
    {
        var quick = new Option<bool>("--quick") { Description = "Tiny shapes and few rounds: checks the benchmark runs (CI); numbers mean little." };
        var output = new Option<string>("--out") { Description = "Folder for bench.json and bench.md.", DefaultValueFactory = _ => "reslora-bench" };
        var methods = new Option<string>("--methods") { Description = "Comma-separated methods to time against LoRA (full = full fine-tuning).", DefaultValueFactory = _ => string.Join(",", AdapterMethods.Contenders(8).Select(c => c.Label).Append("full")) };
        var rounds = new Option<int>("--rounds") { Description = "Timed training steps per method (interleaved round-robin).", DefaultValueFactory = _ => 20 };
        var threads = new Option<int>("--threads") { Description = "Torch threads.", DefaultValueFactory = _ => 1 };
        var cmd = new Command("bench", "Measure training step time per method relative to LoRA, merged-inference speed relative to the base model, and achieved GFLOP/s against this machine's matmul ceiling.");
        foreach (var o in new Option[] { quick, output, methods, rounds, threads }) cmd.Options.Add(o);
        cmd.Subcommands.Add(BenchPytorchVerb.Build());
        cmd.Subcommands.Add(BenchMemoryVerb.Build());
        cmd.Subcommands.Add(BenchOutliersVerb.Build());
        cmd.Subcommands.Add(BenchMergesVerb.Build());
        cmd.Subcommands.Add(BenchNluVerb.Build());
        cmd.Subcommands.Add(BenchAdaptersVerb.Build());
        cmd.Subcommands.Add(BenchServeVerb.Build());
        cmd.Subcommands.Add(BenchScaleVerb.Build());
        cmd.Subcommands.Add(BenchMemoryVerb.BuildWorker());
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            int th = r.GetValue(threads);
            if (th < 1) throw new UserInputException($"--threads must be at least 1, got {th}.");
            new RuntimeOptions { Threads = th }.Apply();
            bool q = r.GetValue(quick);
            int n = q ? 3 : r.GetValue(rounds);
            if (n < 1) throw new UserInputException($"--rounds must be at least 1, got {n}.");
            var shape = q ? BenchShape.Quick : new BenchShape();
            var names = r.GetValue(methods)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
            if (!names.Contains("lora")) names.Insert(0, "lora");
            var contenders = names.Select(m => (Label: m, Spec: m == "full" ? null : SpecFor(m))).ToList();
            foreach (var (label, spec) in contenders) if (spec is not null) AdapterMethods.Build(spec);

            Console.Error.WriteLine($"bench: matmul ceiling, then {contenders.Count} methods × {n} interleaved steps on d={shape.Hidden}, {shape.Layers} layers, seq {shape.SeqLen}, batch {shape.Batch}, {th} thread(s)");
            double ceiling = Benchmarks.MatmulGflops(q ? 256 : 1024);
            var steps = Benchmarks.TrainSteps(shape, contenders, warmup: q ? 1 : 3, rounds: n);
            var gen = Benchmarks.Generation(shape, new MethodSpec { Method = "lora" }, q ? 8 : 64, q ? 1 : 5);
            double loraTime = steps.First(s => s.Label == "lora").MedianSeconds;
            double baseGen = gen.First(g => g.Label == "base").TokensPerSecond;

            var t = new Table().AddColumns("method", "median step (s)", "× LoRA", "tokens/s", "GFLOP/s", "% of ceiling", "trainable params");
            foreach (var s in steps)
                t.AddRow(s.Label, F(s.MedianSeconds, "0.0000"), F(s.MedianSeconds / loraTime, "0.000"), F(s.TokensPerSecond, "0"), F(s.EstimatedGflops, "0.0"), F(100 * s.EstimatedGflops / ceiling, "0"), s.TrainableParameters.ToString("N0", CultureInfo.InvariantCulture));
            CliConsole.Out().Write(t);
            var g = new Table().AddColumns("generation", "tokens/s", "× base");
            foreach (var x in gen) g.AddRow(x.Label, F(x.TokensPerSecond, "0.0"), F(x.TokensPerSecond / baseGen, "0.000"));
            CliConsole.Out().Write(g);
            CliConsole.Out().MarkupLine($"matmul ceiling (fp32 {(q ? 256 : 1024)}², {th} thread(s)): {ceiling:0.0} GFLOP/s");

            string dir = r.GetValue(output)!;
            Directory.CreateDirectory(dir);
            var result = new
            {
                date = DateTime.UtcNow.ToString("u", CultureInfo.InvariantCulture),
                machine = $"{Environment.ProcessorCount} cores, {Environment.OSVersion}",
                threads = th,
                shape,
                matmul_ceiling_gflops = ceiling,
                train_steps = steps,
                generation = gen,
                command = "reslora " + string.Join(' ', Environment.GetCommandLineArgs().Skip(1)),
            };
            IO.AtomicFile.WriteAllText(Path.Combine(dir, "bench.json"), JsonSerializer.Serialize(result, IO.Json.ReportJson.Indented));
            var md = new StringBuilder();
            md.AppendLine($"| method | median step (s) | × LoRA | tokens/s | GFLOP/s | % of {ceiling:0} GFLOP/s ceiling |").AppendLine("|---|---|---|---|---|---|");
            foreach (var s in steps) md.AppendLine($"| {s.Label} | {F(s.MedianSeconds, "0.0000")} | {F(s.MedianSeconds / loraTime, "0.000")} | {F(s.TokensPerSecond, "0")} | {F(s.EstimatedGflops, "0.0")} | {F(100 * s.EstimatedGflops / ceiling, "0")} |");
            md.AppendLine().AppendLine("| generation | tokens/s | × base |").AppendLine("|---|---|---|");
            foreach (var x in gen) md.AppendLine($"| {x.Label} | {F(x.TokensPerSecond, "0.0")} | {F(x.TokensPerSecond / baseGen, "0.000")} |");
            IO.AtomicFile.WriteAllText(Path.Combine(dir, "bench.md"), md.ToString());
            Console.Out.WriteLine($"wrote {Path.Combine(dir, "bench.json")} and bench.md");
            return 0;
        }));
        return cmd;
    }

    /// <summary>A contender label (every method's, see <see cref="AdapterMethods.Contenders"/>) or any method name; 1000 steps for schedules that need a length.</summary>
    internal static MethodSpec SpecFor(string label) =>
        (AdapterMethods.Contenders(8).FirstOrDefault(c => c.Label == label)?.Spec ?? new MethodSpec { Method = label }) with { TotalSteps = 1000 };

    private static string F(double v, string fmt) => v.ToString(fmt, CultureInfo.InvariantCulture);
}
