using System.Text.Json.Nodes;
using ResLora.Scoring;
using ResLora.Tests.Infrastructure;

namespace ResLora.Tests.Scoring;

/// <summary>The benchmark's questions and the peer check's file (what they contain, never how fast).</summary>
public sealed class LoglikelihoodBenchTests
{
    [Fact]
    public void RandomQuestions_HaveSharedContextsAndChoicesOfDifferentLengths()
    {
        var q = LoglikelihoodBench.RandomQuestions(64, questions: 3, choices: 4, contextTokens: 10, choiceTokens: 3);
        Assert.Equal(12, q.Count);
        Assert.Equal(3, q.Select(r => string.Join(',', r.Context)).Distinct().Count());
        Assert.Equal(new[] { 3, 2, 1, 3 }, q.Take(4).Select(r => r.Continuation.Count));
        Assert.All(q, r => Assert.All(r.Context.Concat(r.Continuation), t => Assert.InRange(t, 3, 63)));
        Assert.Throws<UserInputException>(() => LoglikelihoodBench.RandomQuestions(64, 0, 4, 10, 3));
    }

    [Fact]
    public void Run_ReportsBothModesAgreeing()
    {
        using var model = TinyModels.Build(TinyModels.Config(), seed: 51);
        var r = LoglikelihoodBench.Run(model, questions: 2, choices: 3, contextTokens: 12, choiceTokens: 4, threads: 1);
        Assert.Equal((2, 3, 1), (r.Questions, r.Choices, r.Threads));
        Assert.True(r.NaiveQuestionsPerSecond > 0 && r.SharedQuestionsPerSecond > 0);
        Assert.InRange(r.MaxAbsDifference, 0, 1e-5);
    }

    [Fact]
    public void WriteCheck_WritesEveryRequestWithBothScores()
    {
        using var model = TinyModels.Build(TinyModels.Config(), seed: 52);
        string path = Path.Combine(Directory.CreateTempSubdirectory("reslora-loglik-check-").FullName, "scores.json");
        try
        {
            LoglikelihoodBench.WriteCheck(model, path, maxLength: 20);
            var root = JsonNode.Parse(File.ReadAllText(path))!;
            Assert.Equal(20, (int)root["max_length"]!);
            var requests = root["requests"]!.AsArray();
            Assert.Equal(6 * 4 + 3 * 3 + 2, requests.Count);
            Assert.All(requests, r => Assert.InRange(Math.Abs((double)r!["shared"]! - (double)r["naive"]!), 0, 1e-5));
            // The last question's context (26 tokens) is longer than the max length: its requests are cut from the left.
            Assert.Equal(26, requests[^1]!["context"]!.AsArray().Count);
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(path)!, recursive: true);
        }
    }
}
