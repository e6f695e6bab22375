// The ResLora side of bench/loglik-check.sh: writes a tiny model folder and our per-choice log-likelihoods for the
// PyTorch peer (loglik_peer.py) to recompute, or times shared-context against naive scoring on a preset's shape.
//   check --model DIR --out FILE        (DIR is made, random float32 Qwen2-style weights, when it has no config.json)
//   bench --preset NAME [--layers N] [--questions Q] [--choices C] [--context T] [--choice-tokens K] [--threads N] [--batch B] [--repeats R]
using System.Globalization;
using System.Text.Json;
using ResLora;
using ResLora.Models;
using ResLora.Scoring;
using TorchSharp;
using static TorchSharp.torch;

string Arg(string name, string fallback)
{
    int i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : fallback;
}
int IntArg(string name, int fallback) => int.Parse(Arg(name, fallback.ToString(CultureInfo.InvariantCulture)), CultureInfo.InvariantCulture);

try
{
    switch (args.FirstOrDefault())
    {
        case "check":
        {
            string dir = Arg("--model", "");
            string output = Arg("--out", "");
            if (dir.Length == 0 || output.Length == 0) throw new UserInputException("check needs --model DIR and --out FILE.");
            if (!File.Exists(Path.Combine(dir, ModelFolder.ConfigFile))) MakeTiny(dir);
            using var model = ResLora.Pipelines.ModelSessions.LoadBase(dir, new RuntimeOptions { Threads = 1 });
            model.eval();
            LoglikelihoodBench.WriteCheck(model, output, IntArg("--max-length", 48));
            Console.Error.WriteLine($"wrote {output}");
            return 0;
        }
        case "bench":
        {
            var config = ModelPresets.Get(Arg("--preset", "qwen2.5-0.5b"));
            config = config with { NumHiddenLayers = IntArg("--layers", config.NumHiddenLayers) };
            using var model = ModelFamilies.CreateCausalLM(config, null, ScalarType.Float32, torch.CPU);
            model.InitializeWeights(1);
            model.eval();
            var r = LoglikelihoodBench.Run(model, IntArg("--questions", 8), IntArg("--choices", 4), IntArg("--context", 64), IntArg("--choice-tokens", 8),
                IntArg("--threads", 2), IntArg("--batch", 16), IntArg("--repeats", 3));
            Console.Out.WriteLine(JsonSerializer.Serialize(new { r.Questions, r.Choices, r.NaiveQuestionsPerSecond, r.SharedQuestionsPerSecond, r.Speedup, r.MaxAbsDifference, r.Threads }));
            return 0;
        }
        default:
            throw new UserInputException("usage: check --model DIR --out FILE | bench --preset NAME [--layers N] [--questions Q] [--choices C] [--context T] [--choice-tokens K] [--threads N] [--batch B] [--repeats R]");
    }
}
catch (UserInputException e)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}

// A Qwen2-style tiny model (q/k/v biases, grouped-query attention, untied head) with random non-trivial weights.
static void MakeTiny(string dir)
{
    var config = new ModelConfig
    {
        ModelType = "qwen2", VocabSize = 96, HiddenSize = 64, IntermediateSize = 96, NumHiddenLayers = 3, NumAttentionHeads = 4,
        NumKeyValueHeadsRaw = 2, RmsNormEps = 1e-6, RopeTheta = 10000, MaxPositionEmbeddings = 128, TieWordEmbeddings = false,
        BosTokenId = 1, EosTokenIds = new[] { 2 },
    };
    using var model = ModelFamilies.CreateCausalLM(config, null, ScalarType.Float32, torch.CPU);
    model.InitializeWeights(7, std: 0.2);
    using (torch.no_grad())
    using (var gen = new torch.Generator(8))
        foreach (var (name, p) in model.BaseParameters())
            if (name.EndsWith("norm.weight", StringComparison.Ordinal) || name.EndsWith(".bias", StringComparison.Ordinal))
            {
                using var r = torch.rand(p.shape, generator: gen) * 0.5 + (name.EndsWith(".bias", StringComparison.Ordinal) ? -0.25 : 0.75);
                p.copy_(r);
            }
    ModelFolder.Save(dir, config, model.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)));
}
