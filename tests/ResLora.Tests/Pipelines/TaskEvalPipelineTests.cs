using ResLora.Adapters;
using ResLora.Demo;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.Pipelines;

/// <summary>
/// <c>eval --tasks</c> as a library call: several adapters in one pass equal each adapter alone, shared-context scoring
/// equals per-choice rows, the metrics follow from the per-question log-likelihoods, and generate tasks extract answers.
/// </summary>
public sealed class TaskEvalPipelineTests : IClassFixture<MultiAdapterFixture>, IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("reslora-taskeval-").FullName;
    private readonly MultiAdapterFixture _f;
    private readonly string _model;

    public TaskEvalPipelineTests(MultiAdapterFixture f)
    {
        _f = f;
        _model = f.ModelDir;
        File.WriteAllText(Path.Combine(_root, "mc.json"), """
            {"name": "sums", "output_type": "multiple_choice", "data": "mc.jsonl", "choices_field": "options",
             "context_template": "What is {q}? Answer:", "gold_field": "label"}
            """);
        var rng = new Random(3);
        File.WriteAllLines(Path.Combine(_root, "mc.jsonl"), Enumerable.Range(0, 12).Select(i =>
        {
            int a = rng.Next(10), b = rng.Next(10), gold = rng.Next(3);
            var opts = new[] { a + b + 1, a + b + 12, a * b + 3 };
            opts[gold] = a + b;
            return $$"""{"q": "{{a}} plus {{b}}", "options": ["{{opts[0]}}", "{{opts[1]}} apples", "{{opts[2]}}"], "label": {{gold}}}""";
        }));
        File.WriteAllText(Path.Combine(_root, "gen.json"), """
            {"name": "numbers", "output_type": "generate", "data": "gen.jsonl", "prompt_template": "Q: {q}\nA:",
             "extraction": "last_number", "max_new_tokens": 6}
            """);
        File.WriteAllLines(Path.Combine(_root, "gen.jsonl"), Enumerable.Range(0, 5).Select(i => $$"""{"q": "{{i}} and {{i + 1}}", "answer": "{{i}}"}"""));
    }

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private TaskEvalRequest Request(params string[] tasks) => new()
    {
        ModelDir = _model,
        Tasks = tasks.Select(t => Path.Combine(_root, t)).ToList(),
        DataRoot = _root,
        BatchSize = 5,
    };

    [Fact]
    public void SeveralAdaptersInOnePass_EqualEachAdapterAlone_AndTheMetricsFollowFromTheLogprobs()
    {
        var together = TaskEvalPipeline.Run(Request("mc.json") with { ScoredAdapters = new[] { ("a", _f.Dir("lora")), ("b", _f.Dir("lora8")) } });
        Assert.Equal(new[] { "a", "b" }, together.Adapters);
        foreach (var name in new[] { "a", "b" })
        {
            var alone = TaskEvalPipeline.Run(Request("mc.json") with { AdapterDir = _f.Dir(name == "a" ? "lora" : "lora8") });
            var mine = together.Predictions.Where(p => p.Adapter == name).ToList();
            Assert.Equal(12, mine.Count);
            for (int q = 0; q < 12; q++)
                for (int c = 0; c < 3; c++)
                    Assert.True(Math.Abs(mine[q].Logprobs![c] - alone.Predictions[q].Logprobs![c]) < 1e-4, $"{name} q{q} c{c}");
            Assert.Equal(alone.Metrics.Select(m => m.Value), together.Metrics.Where(m => m.Adapter == name).Select(m => m.Value));
            // acc is the share of questions whose arg-max is the gold choice; acc_norm divides by the choice's characters.
            var acc = together.Metrics.Single(m => m.Adapter == name && m.Metric == "acc");
            Assert.Equal(mine.Count(p => Array.IndexOf(p.Logprobs!.ToArray(), p.Logprobs!.Max()) == p.Gold) / 12.0, acc.Value, 12);
            double p0 = acc.Value;
            Assert.Equal(Math.Sqrt(p0 * (1 - p0) * 12 / 11 / 12), acc.Stderr, 9);
        }
        // The adapters change the answers' scores: the two differ from each other.
        var a0 = together.Predictions.First(p => p.Adapter == "a").Logprobs!;
        var b0 = together.Predictions.First(p => p.Adapter == "b").Logprobs!;
        Assert.True(Math.Abs(a0[0] - b0[0]) > 1e-3);
    }

    [Fact]
    public void SharedContextScoring_EqualsPerChoiceRows()
    {
        var shared = TaskEvalPipeline.Run(Request("mc.json"));
        var naive = TaskEvalPipeline.Run(Request("mc.json") with { SharedContext = false });
        Assert.Equal("base", Assert.Single(shared.Adapters));
        for (int q = 0; q < 12; q++)
            for (int c = 0; c < 3; c++)
                Assert.True(Math.Abs(shared.Predictions[q].Logprobs![c] - naive.Predictions[q].Logprobs![c]) < 1e-4);
        Assert.Equal(naive.Metrics.Select(m => (m.Metric, m.Value)), shared.Metrics.Select(m => (m.Metric, m.Value)));
    }

    [Fact]
    public void GenerateTasks_ExtractTheLastNumberOfTheGreedyAnswer()
    {
        var res = TaskEvalPipeline.Run(Request("gen.json") with { ScoredAdapters = new[] { ("a", _f.Dir("lora")) } });
        Assert.Equal(5, res.Predictions.Count);
        using var model = ModelSessions.Load(_model, _f.Dir("lora"), new RuntimeOptions());
        var tok = ResLora.Text.TokenizerLoader.Load(_model);
        foreach (var p in res.Predictions)
        {
            // The same greedy answer as generating the prompt alone.
            var ids = tok.Encode(p.Prompt!).ToList();
            if (tok.AddBosToken && tok.BosTokenId is { } bos) ids.Insert(0, bos);
            var alone = TextGenerator.Generate(model, ids, new GenerationOptions { MaxNewTokens = 6, EosTokenIds = tok.EosTokenIds });
            Assert.Equal(tok.Decode(alone), p.Generated);
            var numbers = System.Text.RegularExpressions.Regex.Matches(p.Generated!.Replace(",", ""), @"-?\d+\.?\d*");
            Assert.Equal(numbers.Count == 0 ? null : numbers[^1].Value, p.Extracted is null ? null : p.Extracted);
            Assert.Equal(numbers.Count > 0 && Math.Abs(double.Parse(numbers[^1].Value, System.Globalization.CultureInfo.InvariantCulture) - double.Parse(p.Reference!, System.Globalization.CultureInfo.InvariantCulture)) <= 0.001, p.Correct);
        }
        Assert.Equal(res.Predictions.Count(p => p.Correct) / 5.0, res.Metrics.Single().Value, 12);
    }

    [Fact]
    public void BadRequests_AreRefusedBeforeTheModelLoads()
    {
        var e = Assert.Throws<UserInputException>(() => TaskEvalPipeline.Run(Request("mc.json", "gen.json") with { DataFile = Path.Combine(_root, "mc.jsonl") }));
        Assert.Contains("--data names one file", e.Message);
        e = Assert.Throws<UserInputException>(() => TaskEvalPipeline.Run(Request("mc.json") with { NumFewshot = 12 }));
        Assert.Contains("--num-fewshot", e.Message);
        e = Assert.Throws<UserInputException>(() => TaskEvalPipeline.Run(Request("mc.json") with { ScoredAdapters = new[] { ("a", _f.Dir("lora")) }, Quantize = new ResLora.Quantization.QuantizeOptions { WBits = 4, ABits = 16 } }));
        Assert.Contains("--wbits", e.Message);
    }
}
