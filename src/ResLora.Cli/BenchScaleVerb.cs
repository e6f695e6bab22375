using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using ResLora.Bench;
using ResLora.Models;

namespace ResLora.Cli;

/// <summary>
/// <c>reslora bench scale</c> (issue 15): LoRA r 16 on q,k,v,o over a real-size random model, for fp32, bf16, 8-bit and
/// 4-bit bases, with and without activation checkpointing, at each batch size; every configuration in its own child
/// process (<c>bench scale worker</c>), so each peak RSS is that configuration's. <c>bench scale make-model</c> writes
/// the model folder.
/// </summary>
internal static class BenchScaleVerb
{
    private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = false };

    public static Command Build()
    {
        var preset = new Option<string>("--preset") { Description = $"Model shape: {string.Join(", ", ModelPresets.Names)}.", DefaultValueFactory = _ => "tinyllama-1.1b" };
        var model = new Option<string?>("--model") { Description = "Use this model folder instead of making one from --preset." };
        var work = new Option<string>("--work") { Description = "Where the preset's model folder is made (reused when present).", DefaultValueFactory = _ => Path.Combine(Path.GetTempPath(), "reslora-scale") };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "tokenizer.json for a model made from --preset (bench/scale.sh passes Llama-2's or Llama-3's)." };
        var seqLen = new Option<int>("--seq-len") { Description = "Tokens per sequence.", DefaultValueFactory = _ => 512 };
        var batches = new Option<string>("--batches") { Description = "Comma-separated batch sizes.", DefaultValueFactory = _ => "1,4" };
        var bases = new Option<string>("--bases") { Description = "Comma-separated bases: fp32, bf16, 8 (int8), 4 (NF4).", DefaultValueFactory = _ => "fp32,bf16,8,4" };
        var checkpoint = new Option<string>("--checkpoint") { Description = "off, on, or off,on (both).", DefaultValueFactory = _ => "off,on" };
        var steps = new Option<int>("--steps") { Description = "Timed training steps per configuration (after one warm-up step).", DefaultValueFactory = _ => 3 };
        var genTokens = new Option<int>("--gen-tokens") { Description = "Tokens generated with the merged model (0 = skip).", DefaultValueFactory = _ => 32 };
        var threads = new Option<int>("--threads") { Description = "Torch threads per child (0 = libtorch's default).", DefaultValueFactory = _ => 0 };
        var heap = new Option<string>("--heap") { Description = "Heap policy of every child, as reslora train --heap: fast (default), balanced or lean.", DefaultValueFactory = _ => "fast" };
        var forceBf16 = new Option<bool>("--force-bf16") { Description = "Run bf16 (and the 8-/4-bit bases' bf16 compute) even on a CPU without a fast bf16 matmul, where it is about 10× slower than float32." };
        var liveHeap = new Option<bool>("--live-heap") { Description = "Also sample glibc's live bytes every 2 ms during the steps (the tensors' own peak, without freed memory the heap keeps); the sampling slows steps, so step times are not comparable with runs without it." };
        var quick = new Option<bool>("--quick") { Description = "Checks the benchmark runs: sequence 64, batch 1, one timed step, 4 generated tokens (use with --preset smollm2-135m)." };
        var output = new Option<string>("--out") { Description = "Folder for scale.json and scale.md.", DefaultValueFactory = _ => "reslora-bench" };
        var cmd = new Command("scale", "Peak RSS, time to load and tokens/s of LoRA training on a real-size model (a preset's shape, random weights) for fp32, bf16, 8-bit and 4-bit bases, with and without --grad-checkpoint; each configuration in its own process.");
        foreach (var o in new Option[] { preset, model, work, tokenizer, seqLen, batches, bases, checkpoint, steps, genTokens, threads, heap, forceBf16, liveHeap, quick, output }) cmd.Options.Add(o);
        cmd.Subcommands.Add(BuildMakeModel());
        cmd.Subcommands.Add(BuildWorker());
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            bool q = r.GetValue(quick);
            string dir = r.GetValue(model) ?? MakeOrReuse(r.GetValue(preset)!, r.GetValue(work)!, r.GetValue(tokenizer));
            // Checked here, before any child starts, so a wrong --model is a one-line error and not a failed worker.
            if (r.GetValue(model) is { } m && !File.Exists(Path.Combine(m, ModelFolder.ConfigFile)))
                throw new UserInputException($"--model {m}: {(Directory.Exists(m) ? "no config.json in this folder" : "no such folder")}; pass a Hugging Face model folder, or leave --model out to make one from --preset (bench/scale.sh makes and caches it).");
            bool? fast = RuntimeOptions.CpuHasFastBf16();
            bool bf16 = fast != false || r.GetValue(forceBf16);
            string half = bf16 ? "bfloat16" : "float32";
            if (!bf16)
                Console.Error.WriteLine("note: this CPU has no fast bf16 matmul (RuntimeOptions.CpuHasFastBf16 is false): the bf16 row runs as float32, as `reslora train --dtype bfloat16` does here, and the 8-/4-bit bases compute in float32; --force-bf16 runs real bf16 (about 10× slower here).");
            string heapMode = r.GetValue(heap)!.Trim().ToLowerInvariant();
            _ = RuntimeOptions.ParseHeap(heapMode);
            var rows = new List<ScaleConfig>();
            int[] bs = q ? new[] { 1 } : Ints(r.GetValue(batches)!, "--batches");
            var ck = r.GetValue(checkpoint)!.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
                .Select(s => s switch { "off" => false, "on" => true, _ => throw new UserInputException($"--checkpoint '{s}': use off, on or off,on.") }).ToList();
            foreach (var b in r.GetValue(bases)!.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            {
                var (label, dtype, bits) = b.ToLowerInvariant() switch
                {
                    "fp32" or "float32" => ("fp32", "float32", "16"),
                    "bf16" or "bfloat16" => ("bf16", half, "16"),
                    "8" or "int8" => ("8-bit", half, "8"),
                    "4" or "nf4" => ("4-bit nf4", half, "nf4"),
                    "int4" => ("4-bit int4", half, "int4"),
                    _ => throw new UserInputException($"--bases '{b}': use fp32, bf16, 8, 4 (nf4) or int4."),
                };
                foreach (bool c in ck)
                    foreach (int batch in bs)
                        rows.Add(new ScaleConfig
                        {
                            Label = label,
                            Dtype = dtype,
                            BaseBits = bits,
                            GradCheckpoint = c,
                            Batch = batch,
                            SeqLen = q ? 64 : r.GetValue(seqLen),
                            Steps = q ? 1 : r.GetValue(steps),
                            GenTokens = q ? Math.Min(4, r.GetValue(genTokens)) : r.GetValue(genTokens),
                            Threads = r.GetValue(threads),
                            Heap = heapMode,
                            LiveHeap = r.GetValue(liveHeap),
                        });
            }
            var results = new List<ScaleResult>();
            foreach (var (c, i) in rows.Select((c, i) => (c, i)))
            {
                Console.Error.WriteLine($"[{i + 1}/{rows.Count}] {c.Label} ({c.Dtype}), checkpointing {(c.GradCheckpoint ? "on" : "off")}, batch {c.Batch} × {c.SeqLen}");
                results.Add(RunChild(dir, c));
            }
            string md = Table(dir, results, bf16, heapMode);
            Console.Out.Write(md);
            string outDir = r.GetValue(output)!;
            Directory.CreateDirectory(outDir);
            IO.AtomicFile.WriteAllText(Path.Combine(outDir, "scale.json"), JsonSerializer.Serialize(new
            {
                date = DateTime.UtcNow.ToString("u", CultureInfo.InvariantCulture),
                machine = $"{Environment.ProcessorCount} cores, {Environment.OSVersion}, fast bf16: {fast?.ToString() ?? "unknown"}",
                model = Path.GetFullPath(dir),
                command = "reslora " + string.Join(' ', Environment.GetCommandLineArgs().Skip(1)),
                results,
            }, new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = true }));
            IO.AtomicFile.WriteAllText(Path.Combine(outDir, "scale.md"), md);
            Console.Out.WriteLine($"wrote {Path.Combine(outDir, "scale.json")} and scale.md");
            return 0;
        }));
        return cmd;
    }

    private static Command BuildMakeModel()
    {
        var preset = new Option<string>("--preset") { Description = $"Model shape: {string.Join(", ", ModelPresets.Names)}.", Required = true };
        var output = new Option<string>("--out") { Description = "The model folder to write.", Required = true };
        var tokenizer = new Option<string>("--tokenizer") { Description = "tokenizer.json to put beside the weights (not more ids than the preset's vocab_size).", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "Stored dtype: bfloat16 (as the hub's checkpoints) or float32.", DefaultValueFactory = _ => "bfloat16" };
        var shardGb = new Option<double>("--shard-gb") { Description = "Largest shard in GB (Hugging Face's save_pretrained default is 2 GB before transformers 4.45, 5 GB after).", DefaultValueFactory = _ => 2.0 };
        var seed = new Option<long>("--seed") { DefaultValueFactory = _ => 1L };
        var layers = new Option<int?>("--layers") { Description = "Override num_hidden_layers (a small model of the preset's family and tokenizer, for checks)." };
        var hidden = new Option<int?>("--hidden") { Description = "Override hidden_size." };
        var intermediate = new Option<int?>("--intermediate") { Description = "Override intermediate_size." };
        var heads = new Option<int?>("--heads") { Description = "Override num_attention_heads." };
        var kvHeads = new Option<int?>("--kv-heads") { Description = "Override num_key_value_heads." };
        var headDim = new Option<int?>("--head-dim") { Description = "Override head_dim (Qwen3 and Gemma set it explicitly)." };
        var cmd = new Command("make-model", "Write a random-init model of a preset's shape (or a smaller one of its family: --layers, --hidden, …) as a Hugging Face folder (sharded safetensors, a real tokenizer).");
        foreach (var o in new Option[] { preset, output, tokenizer, dtype, shardGb, seed, layers, hidden, intermediate, heads, kvHeads, headDim }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var c = ModelPresets.Get(r.GetValue(preset)!);
            c = c with
            {
                NumHiddenLayers = r.GetValue(layers) ?? c.NumHiddenLayers,
                HiddenSize = r.GetValue(hidden) ?? c.HiddenSize,
                IntermediateSize = r.GetValue(intermediate) ?? c.IntermediateSize,
                NumAttentionHeads = r.GetValue(heads) ?? c.NumAttentionHeads,
                NumKeyValueHeadsRaw = r.GetValue(kvHeads) ?? c.NumKeyValueHeadsRaw,
                HeadDimRaw = r.GetValue(headDim) ?? c.HeadDimRaw,
                MaxWindowLayers = r.GetValue(layers) is int n && c.MaxWindowLayers is not null ? n : c.MaxWindowLayers,
            };
            c.Validate("--preset " + r.GetValue(preset) + " with the overrides");
            var st = RuntimeOptions.ParseDtype(r.GetValue(dtype)!);
            var sw = Stopwatch.StartNew();
            ScaleBench.MakeModel(c, r.GetValue(output)!, r.GetValue(tokenizer)!, st, r.GetValue(seed), (long)(r.GetValue(shardGb) * 1e9), m => Console.Error.WriteLine(m));
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"wrote {r.GetValue(output)}: {r.GetValue(preset)} family, {c.NumHiddenLayers} layers × hidden {c.HiddenSize}, {ModelPresets.ParameterCount(c):N0} parameters as {st.ToString().ToLowerInvariant()}, random weights, in {sw.Elapsed.TotalSeconds:0.0}s"));
            return 0;
        }));
        return cmd;
    }

    private static Command BuildWorker()
    {
        var model = new Option<string>("--model") { Required = true };
        var config = new Option<string>("--config") { Description = "ScaleConfig as JSON.", Required = true };
        var loadOnly = new Option<bool>("--load-only") { Description = "Load the base model (no adapter), report and exit." };
        var cmd = new Command("worker", "(internal) one configuration of bench scale; prints one JSON line.") { Hidden = true };
        foreach (var o in new Option[] { model, config, loadOnly }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var c = JsonSerializer.Deserialize<ScaleConfig>(r.GetValue(config)!, Json) ?? throw new UserInputException("--config: empty.");
            var result = r.GetValue(loadOnly) ? ScaleBench.LoadOnly(r.GetValue(model)!, c) : ScaleBench.Run(r.GetValue(model)!, c);
            Console.Out.WriteLine(JsonSerializer.Serialize(result, Json));
            return 0;
        }));
        return cmd;
    }

    private static string MakeOrReuse(string preset, string work, string? tokenizer)
    {
        var c = ModelPresets.Get(preset);
        string dir = Path.Combine(work, preset.ToLowerInvariant() + "-bf16");
        if (File.Exists(Path.Combine(dir, ModelFolder.ConfigFile))) return dir;
        if (tokenizer is null) throw new UserInputException($"--tokenizer is needed to make the {preset} model in {dir} (bench/scale.sh installs Llama-2's and Llama-3's); or pass --model.");
        Directory.CreateDirectory(work);
        Console.Error.WriteLine($"making a random {preset} model in {dir}");
        ScaleBench.MakeModel(c, dir, tokenizer, ScalarType.BFloat16, 1, 2_000_000_000, m => Console.Error.WriteLine(m), "--work");
        return dir;
    }

    private static int[] Ints(string csv, string flag) =>
        csv.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .Select(s => int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int v) && v > 0 ? v : throw new UserInputException($"{flag} '{s}' is not a positive integer."))
            .ToArray();

    /// <summary>Runs one configuration in a child process of this executable and reads its JSON line.</summary>
    internal static ScaleResult RunChild(string modelDir, ScaleConfig c, bool loadOnly = false)
    {
        var args = new List<string> { "bench", "scale", "worker", "--model", modelDir, "--config", JsonSerializer.Serialize(c, Json) };
        if (loadOnly) args.Add("--load-only");
        return JsonSerializer.Deserialize<ScaleResult>(ChildProcess.LastLine(ChildProcess.Self(args), $"bench scale worker ({c.Label}, batch {c.Batch})"), Json)!;
    }

    private static string Table(string dir, IReadOnlyList<ScaleResult> rs, bool realBf16, string heap)
    {
        static string F(double v, string f) => double.IsNaN(v) ? "-" : v.ToString(f, CultureInfo.InvariantCulture);
        static string G(long b) => F(b / 1e9, "0.00");
        ScaleResult? Fp32(ScaleResult x) => rs.FirstOrDefault(y => y.Label == "fp32" && !y.GradCheckpoint && y.Batch == x.Batch);
        var sb = new StringBuilder();
        var first = rs.FirstOrDefault();
        if (first is not null)
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $"model {dir}: {first.Parameters:N0} parameters; LoRA r 16 on q,k,v,o; --heap {heap}; huge pages {(RuntimeOptions.HugePagesRequested ? "requested" : "off")}; ratios against fp32 without checkpointing at the same batch")).AppendLine();
        sb.AppendLine("| base | dtype | checkpointing | batch × seq | load (s) | model (GB) | peak RSS after load (GB) | peak RSS training (GB) | × fp32 RSS | peak live heap (GB) | × fp32 live | step (s) | tokens/s | × fp32 tokens/s | loss first → last | merged generation tokens/s | peak RSS with generation (GB) |");
        sb.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var x in rs)
        {
            var b = Fp32(x);
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {x.Label} | {x.Dtype} | {(x.GradCheckpoint ? "on" : "off")} | {x.Batch} × {x.SeqLen} | {F(x.LoadSeconds, "0.0")} | {G(x.ModelBytes)} | {G(x.PeakRssAfterLoad)} | {G(x.PeakRss)} | {(b is null ? "-" : F((double)x.PeakRss / b.PeakRss, "0.00"))} | {(x.PeakLiveHeap is { } l ? G(l) : "-")} | {(x.PeakLiveHeap is { } l2 && b?.PeakLiveHeap is { } bl ? F((double)l2 / bl, "0.00") : "-")} | {F(x.MedianStepSeconds, "0.00")} | {F(x.TokensPerSecond, "0.0")} | {(b is null ? "-" : F(x.TokensPerSecond / b.TokensPerSecond, "0.00"))} | {F(x.FirstLoss, "0.000")} → {F(x.LastLoss, "0.000")} | {(x.GenTokensPerSecond is { } g ? F(g, "0.0") : "-")} | {G(x.PeakRssWithGeneration)} |"));
        }
        sb.AppendLine();
        void Target(string what, ScaleResult? x, Func<ScaleResult, ScaleResult, double> ratio, double limit, bool atMost)
        {
            if (x is null || Fp32(x) is not { } b) return;
            double v = ratio(x, b);
            bool ok = atMost ? v <= limit : v >= limit;
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $"- {what}: {v:0.00}× ({(atMost ? "≤" : "≥")} {limit:0.00}× wanted) {(ok ? "met" : "NOT met")}"));
        }
        int big = rs.Count == 0 ? 0 : rs.Max(x => x.Batch);
        Target($"4-bit + checkpointing, batch {big}, peak RSS vs fp32", rs.FirstOrDefault(x => x.Label.StartsWith("4-bit", StringComparison.Ordinal) && x.GradCheckpoint && x.Batch == big), (x, b) => (double)x.PeakRss / b.PeakRss, 0.35, true);
        Target($"bf16, batch {big}, peak RSS vs fp32", rs.FirstOrDefault(x => x.Label == "bf16" && !x.GradCheckpoint && x.Batch == big), (x, b) => (double)x.PeakRss / b.PeakRss, 0.5, true);
        Target($"bf16, batch {big}, tokens/s vs fp32", rs.FirstOrDefault(x => x.Label == "bf16" && !x.GradCheckpoint && x.Batch == big), (x, b) => x.TokensPerSecond / b.TokensPerSecond, 2.5, false);
        if (!realBf16) sb.AppendLine("- bf16 ran as float32 on this CPU (no fast bf16 matmul): its row measures the fallback, not bf16.");
        return sb.ToString();
    }
}
