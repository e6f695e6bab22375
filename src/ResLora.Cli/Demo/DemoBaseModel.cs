using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using ResLora.Models;
using ResLora.Text;
using ResLora.Training;

namespace ResLora.Demo;

/// <summary>Size and pre-training budget of the demo's base model; the cache key is derived from all of it.</summary>
public sealed record DemoBaseSettings
{
    public int HiddenSize { get; init; } = 128;
    public int Layers { get; init; } = 4;
    public int Heads { get; init; } = 4;
    public int KvHeads { get; init; } = 2;
    public int IntermediateSize { get; init; } = 344;
    public int PretrainTexts { get; init; } = 6000;
    public int PretrainSteps { get; init; } = 600;
    public int BatchSize { get; init; } = 32;
    public double LearningRate { get; init; } = 3e-3;
    public int Seed { get; init; } = 1234;
    /// <summary>Bumped whenever the corpus, tokenizer or model code changes what a cached model means.</summary>
    public int Version { get; init; } = 3;

    /// <summary>A small, fast setting for --quick (CI): the pipeline runs end to end, the numbers mean little.</summary>
    public static DemoBaseSettings Quick => new() { HiddenSize = 64, Layers = 2, Heads = 4, KvHeads = 2, IntermediateSize = 160, PretrainTexts = 1500, PretrainSteps = 150, BatchSize = 16 };

    public string CacheKey()
    {
        var json = JsonSerializer.Serialize(this);
        return Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(json)))[..16].ToLowerInvariant();
    }

    public ModelConfig ToConfig() => new()
    {
        Architectures = new[] { "LlamaForCausalLM" },
        ModelType = "llama",
        VocabSize = DemoTokenizerFiles.VocabSize,
        HiddenSize = HiddenSize,
        IntermediateSize = IntermediateSize,
        NumHiddenLayers = Layers,
        NumAttentionHeads = Heads,
        NumKeyValueHeadsRaw = KvHeads,
        RmsNormEps = 1e-5,
        RopeTheta = 10000,
        MaxPositionEmbeddings = 256,
        TieWordEmbeddings = false,
        TorchDtype = "float32",
        BosTokenId = DemoTokenizerFiles.BosId,
        EosTokenIds = new[] { DemoTokenizerFiles.EosId },
    };
}

/// <summary>
/// The demo's base model: a small LLaMA pre-trained (all weights) on <see cref="DemoCorpus.PretrainTexts"/>, saved as
/// a Hugging Face folder under the user's cache, keyed by its settings, so a second run loads it instead.
/// </summary>
public static class DemoBaseModel
{
    private const string DoneMarker = "reslora_demo_base.json";

    /// <summary>The default cache root: $XDG_CACHE_HOME/reslora or ~/.cache/reslora (LocalApplicationData on Windows).</summary>
    public static string DefaultCacheRoot()
    {
        string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        if (!string.IsNullOrEmpty(xdg)) return Path.Combine(xdg, "reslora");
        if (OperatingSystem.IsWindows()) return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData), "reslora");
        return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "reslora");
    }

    /// <summary>
    /// Deletes pre-training folders a killed run left behind (<c>demo-base-*.tmp-*</c> untouched for six hours: a live run
    /// writes its folder within minutes), so they neither fill the cache nor match a <c>demo-base-*</c> glob.
    /// </summary>
    private static void RemoveAbandoned(string cacheRoot)
    {
        if (!Directory.Exists(cacheRoot)) return;
        foreach (var d in Directory.EnumerateDirectories(cacheRoot, "demo-base-*.tmp-*"))
        {
            try
            {
                var newest = Directory.EnumerateFileSystemEntries(d, "*", SearchOption.AllDirectories).Select(File.GetLastWriteTimeUtc).Append(Directory.GetLastWriteTimeUtc(d)).Max();
                if (DateTime.UtcNow - newest > TimeSpan.FromHours(6)) Directory.Delete(d, recursive: true);
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>Whether <paramref name="cacheRoot"/> already holds the complete base model of these settings.</summary>
    public static bool IsCached(DemoBaseSettings s, string cacheRoot) => File.Exists(Path.Combine(cacheRoot, $"demo-base-{s.CacheKey()}", DoneMarker));

    /// <summary>Returns the folder of a complete base model, pre-training it first when the cache has none.</summary>
    public static string Ensure(DemoBaseSettings s, string cacheRoot, RuntimeOptions runtime, ITrainObserver? observer = null)
    {
        string dir = Path.Combine(cacheRoot, $"demo-base-{s.CacheKey()}");
        if (File.Exists(Path.Combine(dir, DoneMarker))) return dir;
        RemoveAbandoned(cacheRoot);
        observer?.OnMessage($"pre-training the demo base model once ({s.Layers} layers, hidden {s.HiddenSize}, {s.PretrainSteps} steps); cached in {dir}");
        string tmp = dir + $".tmp-{Guid.NewGuid():N}";
        try
        {
            Directory.CreateDirectory(tmp);
            DemoTokenizerFiles.Write(tmp);
            var tokenizer = TokenizerLoader.Load(tmp);
            var config = s.ToConfig();
            runtime.Apply();
            using var model = ModelFamilies.CreateCausalLM(config, null, runtime.ScalarType, runtime.TorchDevice);
            model.InitializeWeights(s.Seed);
            var texts = DemoCorpus.PretrainTexts(s.PretrainTexts, s.Seed).Select(t => new TextExample("", t)).ToList();
            var tokenized = Tokenization.Tokenize(texts, tokenizer, 128).Examples;
            var work = Path.Combine(tmp, ".pretrain");
            TrainLoop.Run(new TrainRunSpec
            {
                Task = new CausalLmTask(model, tokenizer, tokenized),
                Options = new TrainOptions { Steps = s.PretrainSteps, BatchSize = s.BatchSize, LearningRate = s.LearningRate, WarmupSteps = Math.Min(100, s.PretrainSteps / 10), WeightDecay = 0.01, LogEvery = Math.Max(1, s.PretrainSteps / 20), Seed = s.Seed, EvalGenerateExamples = 0 },
                OutDir = work,
                Method = "pretrain",
                SaveWeights = _ => { },
                LoadWeights = _ => throw new InvalidOperationException("pre-training does not resume"),
            }, observer);
            Directory.Delete(work, recursive: true);
            ModelFolder.Save(tmp, config, model.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)));
            File.WriteAllText(Path.Combine(tmp, DoneMarker), JsonSerializer.Serialize(s, new JsonSerializerOptions { WriteIndented = true }));
            if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
            Directory.CreateDirectory(Path.GetDirectoryName(dir)!);
            Directory.Move(tmp, dir);
            return dir;
        }
        finally
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        }
    }
}
