using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using ResLora.Bench;
using Spectre.Console;

namespace ResLora.Cli;

/// <summary><c>reslora bench serve</c>: load on <c>reslora serve</c> with concurrent clients over several adapters (issue 18).</summary>
internal static class BenchServeVerb
{
    public static Command Build()
    {
        var quick = new Option<bool>("--quick") { Description = "Tiny model, 2 clients × 4 requests of 4 tokens: checks the benchmark runs; numbers mean little." };
        var output = new Option<string>("--out") { Description = "Folder for the bench model, its adapters, serve.json and serve.md.", DefaultValueFactory = _ => "reslora-bench-serve" };
        var clients = new Option<int>("--clients") { Description = "Concurrent clients (each sends its requests one after another).", DefaultValueFactory = _ => 8 };
        var requests = new Option<int>("--requests") { Description = "Requests per client.", DefaultValueFactory = _ => 50 };
        var maxTokens = new Option<int>("--max-tokens") { Description = "max_tokens of every request (greedy).", DefaultValueFactory = _ => 32 };
        var maxBatch = new Option<int>("--max-batch") { Description = "The server's --max-batch.", DefaultValueFactory = _ => 8 };
        var adapters = new Option<int>("--adapters") { Description = "Adapters served beside the base (requests cycle over all models).", DefaultValueFactory = _ => 4 };
        var rank = new Option<int>("--rank") { Description = "Rank of every adapter (all-linear).", DefaultValueFactory = _ => 16 };
        var sequential = new Option<bool>("--sequential") { Description = "Also run the same load with --max-batch 1 (one request at a time) for comparison.", DefaultValueFactory = _ => true };
        var wholeBatches = new Option<bool>("--whole-batches") { Description = "Also run the same load with whole batches (the batch runs to its end before queued requests start: serve --batching whole) to compare with continuous batching." };
        var threads = new Option<int>("--threads") { Description = "Torch threads.", DefaultValueFactory = _ => 1 };
        var cmd = new Command("serve", "Load test of reslora serve: C concurrent clients × R requests over HTTP (completions and chat, half streamed, mixing the base and adapters) on the bench model; checks every answer, prints requests/s, tokens/s and p50/p95 latency, batched against one request at a time.");
        foreach (var o in new Option[] { quick, output, clients, requests, maxTokens, maxBatch, adapters, rank, sequential, wholeBatches, threads }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            int th = r.GetValue(threads);
            if (th < 1) throw new UserInputException($"--threads must be at least 1, got {th}.");
            var runtime = new RuntimeOptions { Threads = th };
            runtime.Apply();
            bool q = r.GetValue(quick);
            var load = new ServeLoad
            {
                Clients = q ? 2 : r.GetValue(clients),
                RequestsPerClient = q ? 4 : r.GetValue(requests),
                MaxTokens = q ? 4 : r.GetValue(maxTokens),
                PromptChars = q ? 12 : 48,
                Adapters = r.GetValue(adapters),
                Rank = r.GetValue(rank),
                MaxBatch = r.GetValue(maxBatch),
            };
            if (load.Clients < 1 || load.RequestsPerClient < 1 || load.MaxTokens < 1 || load.MaxBatch < 1 || load.Rank < 1 || load.Adapters < 0)
                throw new UserInputException("--clients, --requests, --max-tokens, --max-batch and --rank must be at least 1, --adapters at least 0.");
            var shape = q ? BenchShape.Quick : new BenchShape();
            string dir = r.GetValue(output)!;
            Directory.CreateDirectory(dir);
            Console.Error.WriteLine($"bench serve: d={shape.Hidden}, {shape.Layers} layers, {load.Adapters} adapters (r {load.Rank}), {load.Clients} clients × {load.RequestsPerClient} requests, max_tokens {load.MaxTokens}, {th} thread(s)");
            string modelDir = ServeBench.Prepare(dir, shape, load.Adapters, load.Rank);
            var rows = new List<ServeLoadResult> { ServeBench.Run("batched", modelDir, dir, load, runtime, Console.Error.WriteLine) };
            if (r.GetValue(wholeBatches) && load.MaxBatch > 1)
                rows.Add(ServeBench.Run("whole batches", modelDir, dir, load with { Continuous = false }, runtime, Console.Error.WriteLine));
            if (r.GetValue(sequential) && load.MaxBatch > 1)
                rows.Add(ServeBench.Run("sequential", modelDir, dir, load with { MaxBatch = 1 }, runtime, Console.Error.WriteLine));

            var t = new Table().AddColumns("server", "max batch", "requests", "streamed", "seconds", "requests/s", "tokens/s", "p50 (ms)", "p95 (ms)", "mean batch");
            foreach (var x in rows)
                t.AddRow(x.Label, x.MaxBatch.ToString(CultureInfo.InvariantCulture), x.Requests.ToString(CultureInfo.InvariantCulture), x.Streamed.ToString(CultureInfo.InvariantCulture),
                    F(x.Seconds, "0.00"), F(x.RequestsPerSecond, "0.00"), F(x.TokensPerSecond, "0.0"), F(x.P50Ms, "0"), F(x.P95Ms, "0"), F(x.MeanBatch, "0.00"));
            CliConsole.Out().Write(t);
            var md = new StringBuilder().AppendLine("| server | max batch | requests | streamed | seconds | requests/s | tokens/s | p50 (ms) | p95 (ms) | mean batch |").AppendLine("|---|---|---|---|---|---|---|---|---|---|");
            foreach (var x in rows)
                md.AppendLine($"| {x.Label} | {x.MaxBatch} | {x.Requests} | {x.Streamed} | {F(x.Seconds, "0.00")} | {F(x.RequestsPerSecond, "0.00")} | {F(x.TokensPerSecond, "0.0")} | {F(x.P50Ms, "0")} | {F(x.P95Ms, "0")} | {F(x.MeanBatch, "0.00")} |");
            foreach (var x in rows.Skip(1)) md.AppendLine().AppendLine($"batched / {x.Label}: {F(rows[0].RequestsPerSecond / x.RequestsPerSecond, "0.00")}× requests/s");
            IO.AtomicFile.WriteAllText(Path.Combine(dir, "serve.md"), md.ToString());
            var json = new
            {
                date = DateTime.UtcNow.ToString("u", CultureInfo.InvariantCulture),
                machine = $"{Environment.ProcessorCount} cores, {Environment.OSVersion}",
                threads = th,
                shape,
                load,
                results = rows,
                command = "reslora " + string.Join(' ', Environment.GetCommandLineArgs().Skip(1)),
            };
            IO.AtomicFile.WriteAllText(Path.Combine(dir, "serve.json"), JsonSerializer.Serialize(json, IO.Json.ReportJson.Indented));
            foreach (var x in rows.Skip(1)) Console.Out.WriteLine($"batched / {x.Label}: {F(rows[0].RequestsPerSecond / x.RequestsPerSecond, "0.00")}× requests/s");
            Console.Out.WriteLine($"wrote {Path.Combine(dir, "serve.md")} and serve.json");
            return 0;
        }));
        return cmd;
    }

    private static string F(double v, string fmt) => v.ToString(fmt, CultureInfo.InvariantCulture);
}
