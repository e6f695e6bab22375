using System.Diagnostics;
using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;

namespace ResLora.Bench;

/// <summary>Generation speed of one way of serving a batch whose rows use different adapters.</summary>
public sealed record AdapterServingTiming(string Label, string What, double MedianSeconds, double TokensPerSecond, int Tokens);

/// <summary>
/// <c>reslora bench adapters</c>: a batch of prompts spread over several LoRA adapters of one base, generated greedily
/// (a) as one mixed batch (rows grouped per adapter in every projection), (b) as one sub-batch per adapter after another,
/// (c) one prompt at a time with its adapter active, and (d) as one batch on the base alone (the floor). Contenders run
/// interleaved, after a warm-up round, on a random base and random adapters built in memory.
/// </summary>
public static class AdapterBench
{
    public static IReadOnlyList<AdapterServingTiming> Run(BenchShape shape, int adapters, int rank, int promptLength, int newTokens, int rounds, string workDir, long seed = 1)
    {
        if (adapters < 1) throw new UserInputException($"--adapters must be at least 1, got {adapters}.");
        if (shape.Batch < adapters) throw new UserInputException($"--batch ({shape.Batch}) must be at least --adapters ({adapters}) so every adapter has a row.");
        var cfg = shape.ToConfig();
        if (promptLength + newTokens > cfg.MaxPositionEmbeddings) throw new UserInputException($"--prompt-length + --new-tokens must stay within {cfg.MaxPositionEmbeddings} positions.");
        var plan = new MultiLoraPlan();
        var model = ModelFamilies.CreateCausalLM(cfg, plan, ScalarType.Float32, torch.CPU);
        using var set = AdapterSet.Create(model, plan);
        model.InitializeWeights(seed);
        Directory.CreateDirectory(workDir);
        var names = Enumerable.Range(0, adapters).Select(i => $"a{i}").ToList();
        for (int i = 0; i < adapters; i++) set.Add(names[i], WriteRandomAdapter(Path.Combine(workDir, names[i]), plan.Specs, rank, seed + 1 + i));

        var rng = new Random((int)seed);
        var prompts = Enumerable.Range(0, shape.Batch).Select(_ => (IReadOnlyList<int>)Enumerable.Range(0, promptLength).Select(_ => rng.Next(3, cfg.VocabSize)).ToArray()).ToList();
        var perRow = Enumerable.Range(0, shape.Batch).Select(i => (string?)names[i % adapters]).ToList();
        var options = new GenerationOptions { MaxNewTokens = newTokens };
        int tokens = shape.Batch * newTokens;

        var contenders = new (string Label, string What, Action Body)[]
        {
            ("mixed batch", $"{shape.Batch} rows over {adapters} adapters in one batch", () => set.Generate(prompts, perRow, options)),
            ("per adapter", $"{adapters} sub-batches of {shape.Batch / adapters}, one adapter after another", () =>
            {
                foreach (var n in names)
                {
                    var rows = Enumerable.Range(0, shape.Batch).Where(i => perRow[i] == n).ToList();
                    set.Generate(rows.Select(i => prompts[i]).ToList(), rows.Select(_ => (string?)n).ToList(), options);
                }
            }),
            ("one at a time", $"{shape.Batch} prompts alone, the row's adapter active", () =>
            {
                for (int i = 0; i < shape.Batch; i++)
                {
                    set.Active = perRow[i];
                    TextGenerator.Generate(set.Model, prompts[i], options);
                }
                set.Active = null;
            }),
            ("base batch", $"{shape.Batch} rows, no adapter (the floor)", () => set.Generate(prompts, perRow.Select(_ => (string?)null).ToList(), options)),
        };
        var times = contenders.Select(_ => new List<double>()).ToArray();
        for (int round = 0; round <= rounds; round++)
            for (int c = 0; c < contenders.Length; c++)
            {
                var sw = Stopwatch.StartNew();
                contenders[c].Body();
                if (round > 0) times[c].Add(sw.Elapsed.TotalSeconds); // round 0 warms up
            }
        return contenders.Select((c, i) =>
        {
            double med = Benchmarks.Median(times[i]);
            return new AdapterServingTiming(c.Label, c.What, med, tokens / med, tokens);
        }).ToList();
    }

    /// <summary>A PEFT LoRA folder (all-linear, rank r, α = r) with random A and small random B on every decoder projection.</summary>
    private static string WriteRandomAdapter(string dir, IReadOnlyList<LinearSpec> specs, int rank, long seed)
    {
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
        Directory.CreateDirectory(dir);
        using var gen = new torch.Generator((ulong)seed);
        using var scope = torch.NewDisposeScope();
        var tensors = new List<KeyValuePair<string, Tensor>>();
        foreach (var s in specs.Where(s => s.LayerIndex >= 0))
        {
            tensors.Add(new(AdapterFolder.KeyPrefix + s.Name + ".lora_A.weight", torch.randn(new long[] { rank, s.InFeatures }, generator: gen).div(Math.Sqrt(s.InFeatures))));
            tensors.Add(new(AdapterFolder.KeyPrefix + s.Name + ".lora_B.weight", torch.randn(new long[] { s.OutFeatures, rank }, generator: gen).mul(0.01)));
        }
        SafetensorsWriter.Write(Path.Combine(dir, AdapterFolder.WeightsFileName), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        File.WriteAllText(Path.Combine(dir, AdapterFolder.ConfigFileName), AdapterConfigJson.Serialize(new LoraConfig { R = rank, LoraAlpha = rank, TargetModules = ModuleTargets.AllLinear }));
        return dir;
    }
}
