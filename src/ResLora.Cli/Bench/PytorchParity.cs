using System.Diagnostics;
using System.Text.Json;
using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Training;

namespace ResLora.Bench;

/// <summary>Our side of the PyTorch comparison: its losses and step times on the shared inputs.</summary>
public sealed record ParityRun(string Impl, int Threads, IReadOnlyList<double> Losses, IReadOnlyList<double> StepSeconds);

/// <summary>
/// Writes the inputs of <c>bench/pytorch/peer.py</c> (a Hugging Face model folder, the initial adapter factors, the
/// token batches and <c>parity.json</c>) and trains the same steps here: same weights, same batches, AdamW without a
/// schedule or clipping, so the two loss curves must agree and the step times compare like for like.
/// </summary>
public static class PytorchParity
{
    public static void WriteInputs(string dir, BenchShape shape, MethodSpec method, int steps, double lr, long seed)
    {
        if (AdapterMethods.Resolve(method.Method).Method is not (LoraMethod or ResLoraMethod) || method.Method == "dora")
            throw new UserInputException($"--method {method.Method}: the PyTorch peer implements lora and reslora only.");
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
        AtomicFile.WriteAllText(Path.Combine(dir, "parity.json"), JsonSerializer.Serialize(spec, new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>Trains on the inputs <see cref="WriteInputs"/> wrote, reading everything back from the folder.</summary>
    public static ParityRun Train(string dir, MethodSpec method, int threads)
    {
        torch.set_num_threads(threads);
        using var p = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "parity.json")));
        double lr = p.RootElement.GetProperty("lr").GetDouble();
        int steps = p.RootElement.GetProperty("steps").GetInt32();
        long seed = p.RootElement.GetProperty("seed").GetInt64();
        var plan = new AdapterPlan(AdapterMethods.Build(method).Config);
        using var model = ModelSessions.LoadBase(Path.Combine(dir, "model"), new RuntimeOptions { Threads = threads }, plan);
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
        return new ParityRun("torchsharp", threads, losses, times);
    }

    private static LlamaForCausalLM Build(ModelConfig cfg, MethodSpec method, long seed, out AdapterPlan plan)
    {
        torch.manual_seed(seed);
        using var gen = new torch.Generator((ulong)seed);
        plan = new AdapterPlan(AdapterMethods.Build(method).Config, gen);
        var model = new LlamaForCausalLM(cfg, plan, ScalarType.Float32, torch.CPU);
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
