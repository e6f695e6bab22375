using System.Diagnostics;
using System.Text.Json;
using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Training;

namespace ResLora.Bench;

/// <summary>One side of the PyTorch comparison: its losses and step times on the shared inputs.</summary>
public sealed record ParityRun(string Impl, int Threads, IReadOnlyList<double> Losses, IReadOnlyList<double> StepSeconds)
{
    /// <summary>Peak resident bytes of the process that trained (0 when not measured: the in-process run without --model).</summary>
    public long PeakRss { get; init; }

    /// <summary>Seconds to load the model (0 when not measured).</summary>
    public double LoadSeconds { get; init; }
}

/// <summary>What <c>bench pytorch --model</c> trains on an existing Hugging Face folder (its config.json decides the shape).</summary>
public sealed record ParityModelRun
{
    /// <summary>The Hugging Face model folder; parity.json records its full path, the weights are never copied.</summary>
    public required string ModelDir { get; init; }

    /// <summary>Sequences per step.</summary>
    public int Batch { get; init; } = 1;

    /// <summary>Tokens per sequence.</summary>
    public int SeqLen { get; init; } = 512;

    /// <summary>float32, or bfloat16: a bf16 frozen base with float32 adapters on both sides.</summary>
    public string Dtype { get; init; } = "float32";

    /// <summary>The <c>--targets</c> text (comma-separated names, all-linear, or a regex), kept as given for the worker.</summary>
    public string Targets { get; init; } = "q_proj,k_proj,v_proj,o_proj";
}

/// <summary>
/// Writes the inputs of <c>bench/pytorch/peer.py</c> (a Hugging Face model folder, the initial adapter factors, the
/// token batches and <c>parity.json</c>) and trains the same steps here: same weights, same batches, AdamW without a
/// schedule or clipping, so the two loss curves must agree and the step times compare like for like.
/// </summary>
public static class PytorchParity
{
    /// <summary>Writes the peer's inputs for the bench's own float32 <paramref name="shape"/> (a model folder in <c>dir/model</c>).</summary>
    public static void WriteInputs(string dir, BenchShape shape, MethodSpec method, int steps, double lr, long seed)
    {
        RefuseUnsupported(method);
        Directory.CreateDirectory(dir);
        var cfg = shape.ToConfig();
        using var model = Build(cfg, method, seed, out var plan);
        ModelFolder.Save(Path.Combine(dir, "model"), cfg, model.BaseParameters().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)));
        var init = new List<KeyValuePair<string, Tensor>>();
        foreach (var (name, a) in AdapterModel.ByModulePath(model))
        {
            var pair = (ILowRankPair)a;
            init.Add(new(name + ".A", pair.LoraA));
            init.Add(new(name + ".B", pair.LoraB));
        }
        SafetensorsWriter.Write(Path.Combine(dir, "adapter_init.safetensors"), init);
        int nBatches = Math.Min(steps, 8);
        using var gen = new torch.Generator((ulong)seed + 7);
        using var ids = torch.randint(3, shape.Vocab, new long[] { nBatches, shape.Batch, shape.SeqLen }, generator: gen, dtype: ScalarType.Int64);
        using var mask = torch.ones_like(ids);
        SafetensorsWriter.Write(Path.Combine(dir, "batches.safetensors"), new Dictionary<string, Tensor> { ["input_ids"] = ids, ["attention_mask"] = mask, ["labels"] = ids });
        var spec = new Dictionary<string, object>
        {
            ["method"] = AdapterMethods.Resolve(method.Method).Method.Name,
            ["scaling"] = ((ILowRankPair)AdapterModel.ByModulePath(model).Values.First()).Scaling,
            ["lr"] = lr,
            ["weight_decay"] = 0.0,
            ["steps"] = steps,
            ["seed"] = seed,
        };
        if (plan.Config is ResLoraConfig rc)
        {
            spec["structure"] = rc.Structure;
            spec["pre_num"] = rc.PreNum;
        }
        spec["method_spec"] = method.Method;
        AtomicFile.WriteAllText(Path.Combine(dir, "parity.json"), JsonSerializer.Serialize(spec, IO.Json.ReportJson.Indented));
    }

    /// <summary>
    /// Writes the peer's inputs for an existing Hugging Face folder (<c>bench pytorch --model</c>): parity.json with the
    /// folder's full path (the weights are not copied), <paramref name="run"/>'s dtype, batch, sequence and the adapter
    /// (method, rank, alpha, targets, scaling), the initial adapter factors of every targeted projection (A as PEFT
    /// initialises it, B ~ N(0, 0.02) so the adapters shape the loss from step one) and min(steps, 8) batches of random
    /// ids in 3 … V − 1, V the smaller of the config's vocab_size and the ids tokenizer.json can produce.
    /// </summary>
    public static void WriteInputs(string dir, ParityModelRun run, MethodSpec method, int steps, double lr, long seed)
    {
        RefuseUnsupported(method);
        var cfg = CheckModelFolder(run.ModelDir);
        if (run.SeqLen > cfg.MaxPositionEmbeddings)
            throw new UserInputException($"--seq-len {run.SeqLen} is longer than the model's max_position_embeddings ({cfg.MaxPositionEmbeddings}); use at most that.");
        int vocab = Math.Min(cfg.VocabSize, TokenizerVocabOf(run.ModelDir));
        if (vocab <= 3) throw new UserInputException($"--model {run.ModelDir}: tokenizer.json produces only {vocab} ids; the random batches need ids from 3 up.");
        Directory.CreateDirectory(dir);

        var init = new List<KeyValuePair<string, Tensor>>();
        double scaling;
        using (var gen = new torch.Generator((ulong)seed))
        using (torch.no_grad())
        {
            var plan = new AdapterPlan(AdapterMethods.Build(method).Config, gen);
            double? s = null;
            // Only the targeted projections are built (each a small A and B beside a throwaway base), never the model.
            // ResLoRA's builder links each layer to its chain predecessor, so those stay alive until the last is built.
            var chained = new List<IDisposable>();
            try
            {
                foreach (var linear in LinearSpecs(cfg))
                {
                    if (!plan.Decide(linear).Adapted)
                    {
                        plan.DecideAll(new[] { linear });
                        continue;
                    }
                    var layer = plan.Create(linear, ScalarType.Float32, torch.CPU);
                    var pair = (ILowRankPair)layer;
                    pair.LoraB.normal_(0, 0.02, gen);
                    init.Add(new(linear.Name + ".A", pair.LoraA.detach().clone()));
                    init.Add(new(linear.Name + ".B", pair.LoraB.detach().clone()));
                    s ??= pair.Scaling;
                    if (plan.Config is ResLoraConfig) chained.Add(layer);
                    else layer.Dispose();
                }
            }
            finally
            {
                foreach (var l in chained) l.Dispose();
            }
            try
            {
                plan.EnsureAllPatternsMatched();
            }
            catch (UserInputException e)
            {
                throw new UserInputException($"--targets {run.Targets}: {e.Message}", e);
            }
            scaling = s!.Value;
        }
        try
        {
            SafetensorsWriter.Write(Path.Combine(dir, "adapter_init.safetensors"), init);
        }
        finally
        {
            foreach (var kv in init) kv.Value.Dispose();
        }

        int nBatches = Math.Min(steps, 8);
        using (var gen = new torch.Generator((ulong)seed + 7))
        using (var ids = torch.randint(3, vocab, new long[] { nBatches, run.Batch, run.SeqLen }, generator: gen, dtype: ScalarType.Int64))
        using (var mask = torch.ones_like(ids))
            SafetensorsWriter.Write(Path.Combine(dir, "batches.safetensors"), new Dictionary<string, Tensor> { ["input_ids"] = ids, ["attention_mask"] = mask, ["labels"] = ids });

        var spec = new Dictionary<string, object>
        {
            ["method"] = AdapterMethods.Resolve(method.Method).Method.Name,
            ["method_spec"] = method.Method,
            ["scaling"] = scaling,
            ["lr"] = lr,
            ["weight_decay"] = 0.0,
            ["steps"] = steps,
            ["seed"] = seed,
            ["model_dir"] = Path.GetFullPath(run.ModelDir),
            ["dtype"] = RuntimeOptions.ParseDtype(run.Dtype) == ScalarType.BFloat16 ? "bfloat16" : "float32",
            ["batch"] = run.Batch,
            ["seq_len"] = run.SeqLen,
            ["vocab_used"] = vocab,
            ["rank"] = method.Rank,
            ["alpha"] = method.Alpha,
            ["targets"] = run.Targets,
        };
        if (AdapterMethods.Build(method).Config is ResLoraConfig rc)
        {
            spec["structure"] = rc.Structure;
            spec["pre_num"] = rc.PreNum;
        }
        AtomicFile.WriteAllText(Path.Combine(dir, "parity.json"), JsonSerializer.Serialize(spec, IO.Json.ReportJson.Indented));
    }

    /// <summary>The adapter <see cref="WriteInputs(string, ParityModelRun, MethodSpec, int, double, long)"/> recorded in parity.json, for the worker process.</summary>
    public static MethodSpec SpecOf(string dir)
    {
        using var p = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "parity.json")));
        var r = p.RootElement;
        if (!r.TryGetProperty("model_dir", out _))
            throw new UserInputException($"{Path.Combine(dir, "parity.json")}: written without --model; the worker runs only --model inputs.");
        string m = r.GetProperty("method_spec").GetString()!;
        return new MethodSpec
        {
            Method = m,
            Rank = r.GetProperty("rank").GetInt32(),
            Alpha = r.GetProperty("alpha").GetDouble(),
            Targets = ModuleTargets.FromCommandLine(r.GetProperty("targets").GetString()!, "--targets"),
            Options = r.TryGetProperty("structure", out var st) ? new ResLoraOptions(st.GetString()!, r.GetProperty("pre_num").GetInt32()) : null,
        };
    }

    private static void RefuseUnsupported(MethodSpec method)
    {
        if (AdapterMethods.Resolve(method.Method).Method is not (LoraMethod or ResLoraMethod) || method.Method == "dora")
            throw new UserInputException($"--method {method.Method}: the PyTorch peer implements lora and reslora only.");
    }

    /// <summary>config.json of <c>--model</c>, checked against its safetensors; a missing folder or config.json is an error naming the flag.</summary>
    private static ModelConfig CheckModelFolder(string modelDir)
    {
        if (!Directory.Exists(modelDir))
            throw new UserInputException($"--model {modelDir}: no such folder; pass a Hugging Face model folder (config.json and safetensors weights), e.g. one made by `reslora bench scale make-model`.");
        if (!File.Exists(Path.Combine(modelDir, ModelFolder.ConfigFile)))
            throw new UserInputException($"--model {modelDir}: no {ModelFolder.ConfigFile} in this folder; pass a Hugging Face model folder (config.json and safetensors weights).");
        var (cfg, ckpt, _) = ModelFolder.OpenChecked(modelDir);
        ckpt.Dispose();
        return cfg;
    }

    /// <summary>Every projection of the decoder as the model asks its factory for it, from the base weights the config implies.</summary>
    private static IEnumerable<LinearSpec> LinearSpecs(ModelConfig cfg)
    {
        var expected = ModelFamilies.ExpectedWeights(cfg);
        foreach (var (key, shape) in expected)
        {
            if (shape.Length != 2 || key == "model.embed_tokens.weight" || !key.EndsWith(".weight", StringComparison.Ordinal)) continue;
            string name = key[..^".weight".Length];
            string[] parts = name.Split('.');
            int layer = parts.Length > 2 && parts[1] == "layers" ? int.Parse(parts[2], System.Globalization.CultureInfo.InvariantCulture) : -1;
            yield return new LinearSpec(name, parts[^1], layer, (int)shape[1], (int)shape[0], expected.ContainsKey(name + ".bias"));
        }
    }

    private static int TokenizerVocabOf(string modelDir)
    {
        string path = Path.Combine(modelDir, "tokenizer.json");
        return File.Exists(path) ? ScaleBench.TokenizerVocab(System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path))!.AsObject()) : int.MaxValue;
    }

    /// <summary>
    /// Trains on the inputs <see cref="WriteInputs(string, BenchShape, MethodSpec, int, double, long)"/> or
    /// <see cref="WriteInputs(string, ParityModelRun, MethodSpec, int, double, long)"/> wrote, reading everything back
    /// from the folder (the model from parity.json's <c>model_dir</c> when it names one, in its <c>dtype</c>).
    /// </summary>
    public static ParityRun Train(string dir, MethodSpec method, int threads)
    {
        torch.set_num_threads(threads);
        using var p = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "parity.json")));
        double lr = p.RootElement.GetProperty("lr").GetDouble();
        int steps = p.RootElement.GetProperty("steps").GetInt32();
        long seed = p.RootElement.GetProperty("seed").GetInt64();
        string modelDir = p.RootElement.TryGetProperty("model_dir", out var md) ? md.GetString()! : Path.Combine(dir, "model");
        string dtype = p.RootElement.TryGetProperty("dtype", out var dt) ? dt.GetString()! : "float32";
        var plan = new AdapterPlan(AdapterMethods.Build(method).Config);
        var load = Stopwatch.StartNew();
        using var model = ModelSessions.LoadBase(modelDir, new RuntimeOptions { Threads = threads, Dtype = dtype }, plan);
        double loadSeconds = load.Elapsed.TotalSeconds;
        AdapterModel.FreezeAllButAdapters(model);
        using (var init = SafetensorsFile.Open(Path.Combine(dir, "adapter_init.safetensors")))
        using (torch.no_grad())
            foreach (var (name, a) in AdapterModel.ByModulePath(model))
            {
                var pair = (ILowRankPair)a;
                using var ta = init.Load(name + ".A");
                using var tb = init.Load(name + ".B");
                pair.LoraA.copy_(ta);
                pair.LoraB.copy_(tb);
            }
        var caps = AdapterModel.CollectCapabilities(model, plan.Builder);
        var trainer = new Trainer(model, new TrainOptions { Steps = steps, LearningRate = lr, Schedule = "constant", MaxGradNorm = 0, WeightDecay = 0, Seed = seed }, caps.ExtraLossTerms.Cast<object>().Concat(caps.StepHooks));
        using var opt = trainer.CreateOptimizer();
        using var batches = SafetensorsFile.Open(Path.Combine(dir, "batches.safetensors"));
        using var ids = batches.Load("input_ids");
        using var mask = batches.Load("attention_mask");
        using var labels = batches.Load("labels");
        var source = new FixedBatches(ids, mask, labels);
        var losses = new List<double>();
        var times = new List<double>();
        for (int s = 1; s <= steps; s++)
        {
            var sw = Stopwatch.StartNew();
            var (loss, _, _) = trainer.Step(opt, source, s, steps);
            times.Add(sw.Elapsed.TotalSeconds);
            losses.Add(loss);
        }
        return new ParityRun("torchsharp", threads, losses, times) { LoadSeconds = loadSeconds };
    }

    private static CausalLM Build(ModelConfig cfg, MethodSpec method, long seed, out AdapterPlan plan)
    {
        torch.manual_seed(seed);
        using var gen = new torch.Generator((ulong)seed);
        plan = new AdapterPlan(AdapterMethods.Build(method).Config, gen);
        var model = ModelFamilies.CreateCausalLM(cfg, plan, ScalarType.Float32, torch.CPU);
        model.InitializeWeights(seed);
        // B starts non-zero so that the adapter (and ResLoRA's shortcuts) shape the loss from step one.
        using (torch.no_grad())
            foreach (var a in AdapterModel.ByModulePath(model).Values)
                ((ILowRankPair)a).LoraB.normal_(0, 0.02, gen);
        return model;
    }

    /// <summary>Batches in file order, cycling (the peer uses step % count).</summary>
    private sealed class FixedBatches(Tensor ids, Tensor mask, Tensor labels) : ITrainBatchSource
    {
        private int _i;

        public TrainBatch Next()
        {
            long n = ids.shape[0];
            int i = (int)(_i++ % n);
            return new TrainBatch(ids[i].clone().DetachFromDisposeScope(), mask[i].clone().DetachFromDisposeScope(), labels[i].clone().DetachFromDisposeScope());
        }

        public string SavePosition() => _i.ToString(System.Globalization.CultureInfo.InvariantCulture);

        public void RestorePosition(string json) => _i = int.Parse(json, System.Globalization.CultureInfo.InvariantCulture);
    }
}
