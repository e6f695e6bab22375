using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using ResLora.Bench;
using Spectre.Console;

namespace ResLora.Cli;

/// <summary><c>reslora bench adapters</c>: a mixed-adapter batch against one adapter after another (issue 18).</summary>
internal static class BenchAdaptersVerb
{
    public static Command Build()
    {
        var quick = new Option<bool>("--quick") { Description = "Tiny model, 4 new tokens, one round: checks the benchmark runs; numbers mean little." };
        var output = new Option<string>("--out") { Description = "Folder for the random adapters, adapters.json and adapters.md.", DefaultValueFactory = _ => "reslora-bench-adapters" };
        var adapters = new Option<int>("--adapters") { Description = "Adapters the batch is spread over (row i uses adapter i mod N).", DefaultValueFactory = _ => 4 };
        var batch = new Option<int>("--batch") { Description = "Prompts in the batch.", DefaultValueFactory = _ => 16 };
        var rank = new Option<int>("--rank") { Description = "Rank of every adapter (all-linear).", DefaultValueFactory = _ => 16 };
        var promptLength = new Option<int>("--prompt-length") { Description = "Tokens per prompt.", DefaultValueFactory = _ => 32 };
        var newTokens = new Option<int>("--new-tokens") { Description = "Tokens generated per prompt (greedy).", DefaultValueFactory = _ => 32 };
        var rounds = new Option<int>("--rounds") { Description = "Timed rounds (after one warm-up round); the median is reported.", DefaultValueFactory = _ => 3 };
        var threads = new Option<int>("--threads") { Description = "Torch threads.", DefaultValueFactory = _ => 1 };
        var cmd = new Command("adapters", "Generation over a batch whose rows use different LoRA adapters of one base: one mixed batch vs one sub-batch per adapter vs one prompt at a time; tokens/s and the ratio.");
        foreach (var o in new Option[] { quick, output, adapters, batch, rank, promptLength, newTokens, rounds, threads }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            int th = r.GetValue(threads);
            if (th < 1) throw new UserInputException($"--threads must be at least 1, got {th}.");
            new RuntimeOptions { Threads = th }.Apply();
            bool q = r.GetValue(quick);
            var shape = (q ? BenchShape.Quick : new BenchShape()) with { Batch = r.GetValue(batch) };
            int n = q ? 1 : r.GetValue(rounds), toks = q ? 4 : r.GetValue(newTokens), plen = q ? 8 : r.GetValue(promptLength);
            if (n < 1 || toks < 1 || plen < 1 || shape.Batch < 1 || r.GetValue(rank) < 1)
                throw new UserInputException("--rounds, --new-tokens, --prompt-length, --batch and --rank must be at least 1.");
            string dir = r.GetValue(output)!;
            Console.Error.WriteLine($"bench adapters: d={shape.Hidden}, {shape.Layers} layers, batch {shape.Batch} over {r.GetValue(adapters)} adapters (r {r.GetValue(rank)}), prompt {plen}, {toks} new tokens, {n} round(s), {th} thread(s)");
            var rows = AdapterBench.Run(shape, r.GetValue(adapters), r.GetValue(rank), plen, toks, n, Path.Combine(dir, "adapters"));
            double mixed = rows[0].TokensPerSecond;
            var t = new Table().AddColumns("serving", "what", "median (s)", "tokens/s", "mixed ×");
            foreach (var x in rows) t.AddRow(x.Label, x.What, F(x.MedianSeconds, "0.000"), F(x.TokensPerSecond, "0.0"), F(mixed / x.TokensPerSecond, "0.00"));
            CliConsole.Out().Write(t);
            var md = new StringBuilder().AppendLine("| serving | what | median (s) | tokens/s | mixed batch × |").AppendLine("|---|---|---|---|---|");
            foreach (var x in rows) md.AppendLine($"| {x.Label} | {x.What} | {F(x.MedianSeconds, "0.000")} | {F(x.TokensPerSecond, "0.0")} | {F(mixed / x.TokensPerSecond, "0.00")} |");
            IO.AtomicFile.WriteAllText(Path.Combine(dir, "adapters.md"), md.ToString());
            var json = new
            {
                date = DateTime.UtcNow.ToString("u", CultureInfo.InvariantCulture),
                machine = $"{Environment.ProcessorCount} cores, {Environment.OSVersion}",
                threads = th,
                shape,
                adapters = r.GetValue(adapters),
                rank = r.GetValue(rank),
                prompt_length = plen,
                new_tokens = toks,
                rounds = n,
                results = rows,
                command = "reslora " + string.Join(' ', Environment.GetCommandLineArgs().Skip(1)),
            };
            IO.AtomicFile.WriteAllText(Path.Combine(dir, "adapters.json"), JsonSerializer.Serialize(json, IO.Json.ReportJson.Indented));
            Console.Out.WriteLine($"wrote {Path.Combine(dir, "adapters.md")} and adapters.json");
            return 0;
        }));
        return cmd;
    }

    private static string F(double v, string fmt) => v.ToString(fmt, CultureInfo.InvariantCulture);
}
