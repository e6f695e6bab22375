using System.Diagnostics;
using ResLora.Adapters;
using ResLora.Models;
using ResLora.Training;

namespace ResLora.Bench;

/// <summary>Shapes of a benchmark run. The default is the benchmark model of torchsharp-notes.md (d 256, 4 layers, seq 128, batch 16).</summary>
public sealed record BenchShape
{
    public int Hidden { get; init; } = 256;
    public int Layers { get; init; } = 4;
    public int Heads { get; init; } = 4;
    public int KvHeads { get; init; } = 4;
    public int Intermediate { get; init; } = 688;
    public int Vocab { get; init; } = 512;
    public int SeqLen { get; init; } = 128;
    public int Batch { get; init; } = 16;

    public static BenchShape Quick => new() { Hidden = 64, Layers = 2, Intermediate = 172, Vocab = 128, SeqLen = 32, Batch = 4 };

    /// <summary>Qwen2.5-0.5B's width and vocabulary on 4 layers: the LM head is most of the work and of the logits.</summary>
    public static BenchShape Large => new() { Hidden = 896, Layers = 4, Heads = 14, KvHeads = 2, Intermediate = 4864, Vocab = 151_936, SeqLen = 256, Batch = 8 };

    public ModelConfig ToConfig() => new()
    {
        VocabSize = Vocab,
        HiddenSize = Hidden,
        IntermediateSize = Intermediate,
        NumHiddenLayers = Layers,
        NumAttentionHeads = Heads,
        NumKeyValueHeadsRaw = KvHeads,
        MaxPositionEmbeddings = Math.Max(256, SeqLen * 2),
        RmsNormEps = 1e-5,
        BosTokenId = 1,
        EosTokenIds = new[] { 2 },
    };

    public long Tokens => (long)Batch * SeqLen;
}

/// <summary>Median step time of one method and what it implies.</summary>
public sealed record StepTiming(string Label, double MedianSeconds, double MinSeconds, double TokensPerSecond, double EstimatedGflops, long TrainableParameters, long LiveTensorsAfter);

/// <summary>Generation speed of one model variant.</summary>
public sealed record GenerationTiming(string Label, double TokensPerSecond, int Tokens);

/// <summary>Micro-benchmarks; every comparison runs its contenders interleaved in one process so noise hits all alike.</summary>
public static class Benchmarks
{
    /// <summary>fp32 n×n matmul throughput (GFLOP/s, the best of <paramref name="reps"/>): the machine's ceiling for step efficiency.</summary>
    public static double MatmulGflops(int n = 1024, int reps = 15)
    {
        using var scope = torch.NewDisposeScope();
        var a = torch.randn(n, n);
        var b = torch.randn(n, n);
        a.matmul(b).Dispose();
        var times = new List<double>();
        for (int i = 0; i < reps; i++)
        {
            var sw = Stopwatch.StartNew();
            a.matmul(b).Dispose();
            times.Add(sw.Elapsed.TotalSeconds);
        }
        // The ceiling is the best the machine did, not a typical run: noise only ever slows a matmul down.
        return 2.0 * n * n * n / times.Min() / 1e9;
    }

    /// <summary>
    /// Matmul FLOPs of one training step: the forward costs 2·N·T (N = weights in linear layers incl. lm_head, T tokens)
    /// plus attention scores and values 4·L·B·S²·d; backward costs twice that when weights train (full fine-tuning) and
    /// once when only input gradients flow through frozen weights (adapters; their own small matmuls are ignored).
    /// </summary>
    public static double StepFlops(BenchShape s, bool fullFineTune)
    {
        var c = s.ToConfig();
        double n = ModelFamilies.ExpectedWeights(c).Where(kv => kv.Value.Length == 2 && !kv.Key.Contains("embed", StringComparison.Ordinal)).Sum(kv => (double)kv.Value[0] * kv.Value[1]);
        double forward = 2 * n * s.Tokens + 4.0 * s.Layers * s.Batch * (double)s.SeqLen * s.SeqLen * s.Hidden;
        return forward * (fullFineTune ? 3 : 2);
    }

    /// <summary>
    /// Times training steps of several methods on the same random model and batches, round-robin (one step of each per
    /// round) after <paramref name="warmup"/> rounds. A null <see cref="MethodSpec"/> is full fine-tuning.
    /// </summary>
    public static IReadOnlyList<StepTiming> TrainSteps(BenchShape shape, IReadOnlyList<(string Label, MethodSpec? Spec)> methods, int warmup, int rounds, long seed = 1)
    {
        var cfg = shape.ToConfig();
        var runs = new List<(string Label, CausalLM Model, optim.Optimizer Opt, Trainer Trainer, bool Full, List<double> Times, IDisposable? Gen)>();
        try
        {
            foreach (var (label, spec) in methods)
            {
                torch.manual_seed(seed);
                var gen = new torch.Generator((ulong)seed);
                var setup = spec is null ? null : AdapterMethods.Build(spec);
                ILinearFactory? factory = setup is null ? null : new AdapterPlan(setup.Config, gen);
                var model = ModelFamilies.CreateCausalLM(cfg, factory, ScalarType.Float32, torch.CPU);
                model.InitializeWeights(seed);
                if (spec is not null)
                {
                    AdapterModel.OnBaseWeightsLoaded(model);
                    AdapterModel.FreezeAllButAdapters(model);
                    // Non-zero B so every path does real work.
                    using var noGrad = torch.no_grad();
                    foreach (var (name, p) in model.named_parameters())
                        if (p.requires_grad && name.Contains("lora_B", StringComparison.Ordinal)) p.normal_(0, 0.01, gen);
                }
                var caps = setup?.TrainingExtras?.Invoke(model) ?? Array.Empty<object>();
                var found = AdapterModel.CollectCapabilities(model, caps.ToArray());
                var trainer = new Trainer(model, new TrainOptions { Steps = warmup + rounds, BatchSize = shape.Batch, LearningRate = 1e-4, MaxGradNorm = 1.0 }, found.ExtraLossTerms.Cast<object>().Concat(found.StepHooks));
                runs.Add((label, model, trainer.CreateOptimizer(), trainer, spec is null, new List<double>(), gen));
            }
            var data = new RandomBatches(shape, seed);
            for (int round = 0; round < warmup + rounds; round++)
            {
                foreach (var run in runs)
                {
                    var sw = Stopwatch.StartNew();
                    run.Trainer.Step(run.Opt, data, round + 1, warmup + rounds);
                    if (round >= warmup) run.Times.Add(sw.Elapsed.TotalSeconds);
                }
            }
            long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
            return runs.Select(r =>
            {
                double med = Median(r.Times);
                return new StepTiming(r.Label, med, r.Times.Min(), shape.Tokens / med, StepFlops(shape, r.Full) / med / 1e9, r.Trainer.TrainableParameters.Sum(p => p.numel()), live);
            }).ToList();
        }
        finally
        {
            foreach (var r in runs)
            {
                r.Opt.Dispose();
                r.Model.Dispose();
                r.Gen?.Dispose();
            }
        }
    }

    /// <summary>Greedy generation speed (tokens/s with the KV cache) of the base model, and of a trained-looking adapter merged and unmerged.</summary>
    public static IReadOnlyList<GenerationTiming> Generation(BenchShape shape, MethodSpec method, int newTokens, int reps, long seed = 1)
    {
        var cfg = shape.ToConfig();
        using var gen = new torch.Generator((ulong)seed);
        using var baseModel = ModelFamilies.CreateCausalLM(cfg, null, ScalarType.Float32, torch.CPU);
        baseModel.InitializeWeights(seed);
        using var adapted = ModelFamilies.CreateCausalLM(cfg, new AdapterPlan(AdapterMethods.Build(method).Config, gen), ScalarType.Float32, torch.CPU);
        adapted.InitializeWeights(seed);
        AdapterModel.OnBaseWeightsLoaded(adapted);
        using (torch.no_grad())
            foreach (var (name, p) in adapted.named_parameters())
                if (name.Contains("lora_B", StringComparison.Ordinal)) p.normal_(0, 0.01, gen);
        var prompt = Enumerable.Range(3, 16).ToArray();
        var o = new GenerationOptions { MaxNewTokens = newTokens };
        var times = new Dictionary<string, List<double>> { ["base"] = new(), [$"{method.Method} unmerged"] = new(), [$"{method.Method} merged"] = new() };
        TextGenerator.Generate(baseModel, prompt, o);
        TextGenerator.Generate(adapted, prompt, o);
        for (int i = 0; i < reps; i++)
        {
            times["base"].Add(Time(() => TextGenerator.Generate(baseModel, prompt, o)));
            times[$"{method.Method} unmerged"].Add(Time(() => TextGenerator.Generate(adapted, prompt, o)));
            AdapterModel.MergeAll(adapted);
            times[$"{method.Method} merged"].Add(Time(() => TextGenerator.Generate(adapted, prompt, o)));
            AdapterModel.UnmergeAll(adapted);
        }
        return times.Select(kv => new GenerationTiming(kv.Key, newTokens / Median(kv.Value), newTokens)).ToList();
    }

    /// <summary>Trains one contender for <paramref name="steps"/> steps; returns trainable parameters and live tensor counts after the first and last step.</summary>
    /// <remarks>
    /// With <paramref name="objective"/> the steps are preference steps over random pairs: shape.Batch / 2 pairs per batch,
    /// so the forward holds the same shape.Batch sequences as a supervised step (each response all but its first token),
    /// DPO/IPO with the reference computed per step by the same model with its adapters off.
    /// </remarks>
    public static (long Trainable, long LiveFirst, long LiveLast) MemoryRun(BenchShape shape, MethodSpec? spec, int steps, long seed = 1,
        Training.Preference.PreferenceObjective? objective = null)
    {
        if (objective is not null && (spec is null || shape.Batch < 2))
            throw new UserInputException("a preference contender needs an adapter method (its reference is the model with the adapters off) and a batch of at least 2 sequences.");
        var cfg = shape.ToConfig();
        using var gen = new torch.Generator((ulong)seed);
        var setup = spec is null ? null : AdapterMethods.Build(spec);
        using var model = ModelFamilies.CreateCausalLM(cfg, setup is null ? null : new AdapterPlan(setup.Config, gen), ScalarType.Float32, torch.CPU);
        model.InitializeWeights(seed);
        if (spec is not null) AdapterModel.FreezeAllButAdapters(model);
        var found = AdapterModel.CollectCapabilities(model, (setup?.TrainingExtras?.Invoke(model) ?? Array.Empty<object>()).ToArray());
        var caps = found.ExtraLossTerms.Cast<object>().Concat(found.StepHooks);
        Trainer trainer;
        ITrainBatchSource data;
        if (objective is { } obj)
        {
            var o = new Training.Preference.PreferenceOptions { Objective = obj };
            var task = new Training.Preference.PreferenceTask(model, RandomPairs(shape, seed), Array.Empty<Training.Preference.PreferencePair>(), 0, o,
                o.NeedsReference ? Training.Preference.PreferenceReference.AdapterOff(model) : null);
            var options = new TrainOptions { Steps = steps, BatchSize = shape.Batch / 2, LearningRate = 1e-4 };
            trainer = new Trainer(model, task.Forward, options, caps, task.Loss);
            data = task.CreateBatchSource(options);
        }
        else
        {
            trainer = new Trainer(model, new TrainOptions { Steps = steps, BatchSize = shape.Batch, LearningRate = 1e-4 }, caps);
            data = new RandomBatches(shape, seed);
        }
        using var opt = trainer.CreateOptimizer();
        long first = 0;
        for (int s = 1; s <= steps; s++)
        {
            trainer.Step(opt, data, s, steps);
            if (s == 1) first = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        }
        return (trainer.TrainableParameters.Sum(p => p.numel()), first, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    private static double Time(Action a)
    {
        var sw = Stopwatch.StartNew();
        a();
        return sw.Elapsed.TotalSeconds;
    }

    public static double Median(IReadOnlyList<double> xs)
    {
        if (xs.Count == 0) return double.NaN;
        var s = xs.OrderBy(x => x).ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : 0.5 * (s[s.Length / 2 - 1] + s[s.Length / 2]);
    }

    /// <summary>Eight batches' worth of seeded random pairs of shape.SeqLen tokens: a one-token prompt and two different responses.</summary>
    private static List<Training.Preference.PreferencePair> RandomPairs(BenchShape shape, long seed)
    {
        var r = new Random((int)seed);
        int[] Row(int first) => Enumerable.Range(0, shape.SeqLen).Select(i => i == 0 ? first : r.Next(3, shape.Vocab)).ToArray();
        int[] Labels(int[] ids) => ids.Select((t, i) => i == 0 ? -100 : t).ToArray();
        return Enumerable.Range(0, 8 * Math.Max(1, shape.Batch / 2)).Select(_ =>
        {
            int p = r.Next(3, shape.Vocab);
            var (c, j) = (Row(p), Row(p));
            return new Training.Preference.PreferencePair(new[] { p }, c, Labels(c), j, Labels(j));
        }).ToList();
    }

    /// <summary>Seeded random token batches of the benchmark shape (every position carries loss).</summary>
    private sealed class RandomBatches(BenchShape shape, long seed) : ITrainBatchSource
    {
        private readonly torch.Generator _gen = new((ulong)seed + 99);

        public TrainBatch Next()
        {
            var ids = torch.randint(3, shape.Vocab, new long[] { shape.Batch, shape.SeqLen }, generator: _gen, dtype: ScalarType.Int64).DetachFromDisposeScope();
            var mask = torch.ones_like(ids).DetachFromDisposeScope();
            var labels = ids.clone().DetachFromDisposeScope();
            return new TrainBatch(ids, mask, labels);
        }

        public string SavePosition() => "{}";

        public void RestorePosition(string json)
        {
        }
    }
}
