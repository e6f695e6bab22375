using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using ResLora.Adapters;
using ResLora.Bench;

namespace ResLora.Cli;

/// <summary>
/// <c>reslora bench memory</c>: peak RSS and live tensor counts of LoRA versus full fine-tuning. Each contender runs in
/// a fresh child process (peak RSS is per process), on the benchmark shape, for the same number of steps.
/// </summary>
internal static class BenchMemoryVerb
{
    public static Command Build()
    {
        var steps = new Option<int>("--steps") { Description = "Training steps per contender.", DefaultValueFactory = _ => 30 };
        var quick = new Option<bool>("--quick") { Description = "Tiny shapes." };
        var methods = new Option<string>("--methods") { Description = "Contenders (full = full fine-tuning; METHOD+dpo, +ipo, +orpo or +simpo = preference steps at the same sequences per batch, e.g. lora,lora+dpo).", DefaultValueFactory = _ => "lora,full" };
        var large = new Option<bool>("--large") { Description = "A wide model with a Qwen2.5-sized vocabulary (hidden 896, 4 layers, vocab 151,936, 8 × 256 tokens): where the LM head's logits would dominate." };
        var cmd = new Command("memory", "Peak RSS and live tensors of adapter training versus full fine-tuning (or versus preference steps), each in its own process.");
        foreach (var o in new Option[] { steps, quick, large, methods }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            int n = r.GetValue(steps);
            bool q = r.GetValue(quick);
            var rows = new List<JsonElement>();
            foreach (var m in r.GetValue(methods)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                var args = new List<string> { "bench", "memory-worker", "--method", m, "--steps", n.ToString(CultureInfo.InvariantCulture) };
                if (q) args.Add("--quick");
                if (r.GetValue(large)) args.Add("--large");
                rows.Add(RunSelf(args));
            }
            long baseline = rows[0].GetProperty("peak_rss").GetInt64();
            Console.Out.WriteLine($"| contender | trainable params | peak RSS (MiB) | × {rows[0].GetProperty("method").GetString()} | live tensors after step 1 | after last step |");
            Console.Out.WriteLine("|---|---|---|---|---|---|");
            foreach (var x in rows)
                Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {x.GetProperty("method").GetString()} | {x.GetProperty("trainable").GetInt64():N0} | {x.GetProperty("peak_rss").GetInt64() / 1048576.0:0} | {x.GetProperty("peak_rss").GetInt64() / (double)baseline:0.00} | {x.GetProperty("live_first").GetInt64()} | {x.GetProperty("live_last").GetInt64()} |"));
            return 0;
        }));
        return cmd;
    }

    /// <summary>The hidden child: trains one contender and prints one JSON line.</summary>
    public static Command BuildWorker()
    {
        var method = new Option<string>("--method") { Required = true };
        var steps = new Option<int>("--steps") { DefaultValueFactory = _ => 30 };
        var quick = new Option<bool>("--quick");
        var large = new Option<bool>("--large");
        var cmd = new Command("memory-worker", "(internal) one contender of bench memory.") { Hidden = true };
        foreach (var o in new Option[] { method, steps, quick, large }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            torch.set_num_threads(1);
            string m = r.GetValue(method)!;
            var shape = r.GetValue(quick) ? BenchShape.Quick : r.GetValue(large) ? BenchShape.Large : new BenchShape();
            int plus = m.LastIndexOf('+');
            var objective = plus > 0 ? Training.Preference.PreferenceOptions.Parse(m[(plus + 1)..]) : null;
            string adapterMethod = plus > 0 ? m[..plus] : m;
            var (trainable, first, last) = Benchmarks.MemoryRun(shape, adapterMethod == "full" ? null : BenchVerb.SpecFor(adapterMethod), r.GetValue(steps), objective: objective);
            Console.Out.WriteLine(JsonSerializer.Serialize(new { method = m, trainable, live_first = first, live_last = last, peak_rss = Process.GetCurrentProcess().PeakWorkingSet64 }));
            return 0;
        }));
        return cmd;
    }

    private static JsonElement RunSelf(IEnumerable<string> args) =>
        JsonDocument.Parse(ChildProcess.LastLine(ChildProcess.Self(args), "bench memory worker")).RootElement.Clone();
}
