using System.Diagnostics;
using System.Text.Json.Nodes;
using ResLora.IO;
using ResLora.Models;

namespace ResLora.Scoring;

/// <summary>Questions per second of shared-context scoring against naive per-choice scoring, and the largest difference between their scores.</summary>
/// <param name="Questions">Questions scored per mode.</param>
/// <param name="Choices">Choices per question.</param>
/// <param name="NaiveQuestionsPerSecond">Naive mode (every choice its own row of context + choice).</param>
/// <param name="SharedQuestionsPerSecond">Shared-context mode (one context forward per question, KV cache reused).</param>
/// <param name="MaxAbsDifference">Largest |naive − shared| summed log-likelihood over all choices.</param>
/// <param name="Threads">Intra-op threads used.</param>
public sealed record LoglikelihoodBenchResult(int Questions, int Choices, double NaiveQuestionsPerSecond, double SharedQuestionsPerSecond, double MaxAbsDifference, int Threads)
{
    /// <summary>Shared over naive questions per second.</summary>
    public double Speedup => SharedQuestionsPerSecond / NaiveQuestionsPerSecond;
}

/// <summary>
/// Benchmark and diagnostic entry points of log-likelihood scoring (never used by the tests): timing of shared-context vs
/// naive scoring on random multiple-choice questions, and the per-choice scores the PyTorch peer
/// (bench/pytorch/loglik_peer.py) recomputes.
/// </summary>
public static class LoglikelihoodBench
{
    /// <summary>
    /// Random multiple-choice token questions: <paramref name="questions"/> contexts of <paramref name="contextTokens"/>
    /// ids, each with <paramref name="choices"/> continuations of 1 to <paramref name="choiceTokens"/> ids (choice c of a
    /// question has <c>choiceTokens − c mod choiceTokens</c> tokens, so lengths differ as real choices do). Ids avoid 0-2.
    /// </summary>
    public static List<LoglikelihoodTokens> RandomQuestions(int vocab, int questions, int choices, int contextTokens, int choiceTokens, int seed = 1)
    {
        if (questions < 1 || choices < 1 || contextTokens < 1 || choiceTokens < 1)
            throw new UserInputException($"questions {questions}, choices {choices}, context tokens {contextTokens}, choice tokens {choiceTokens}: each must be at least 1.");
        var rng = new Random(seed);
        int Id() => 3 + rng.Next(Math.Max(1, vocab - 3));
        var list = new List<LoglikelihoodTokens>(questions * choices);
        for (int q = 0; q < questions; q++)
        {
            int[] ctx = Enumerable.Range(0, contextTokens).Select(_ => Id()).ToArray();
            for (int c = 0; c < choices; c++)
                list.Add(new LoglikelihoodTokens(ctx, Enumerable.Range(0, choiceTokens - c % choiceTokens).Select(_ => Id()).ToArray()));
        }
        return list;
    }

    /// <summary>
    /// Scores the same random questions naively and with shared contexts (one warm-up question each first), alternating
    /// the modes <paramref name="repeats"/> times, and reports questions per second of each mode's fastest run. The numbers
    /// are wall-clock: run it on an otherwise idle machine.
    /// </summary>
    /// <param name="model">The model (eval mode).</param>
    /// <param name="questions">Questions timed per mode.</param>
    /// <param name="choices">Choices per question (4 for ARC).</param>
    /// <param name="contextTokens">Context length in tokens.</param>
    /// <param name="choiceTokens">Longest choice in tokens.</param>
    /// <param name="threads">Intra-op threads for the run (restored after); null keeps the current setting.</param>
    /// <param name="batchSize">Rows per forward in both modes.</param>
    /// <param name="repeats">Timed runs per mode (alternating; the fastest of each counts).</param>
    public static LoglikelihoodBenchResult Run(CausalLM model, int questions, int choices, int contextTokens, int choiceTokens, int? threads = null, int batchSize = 16, int repeats = 3)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (repeats < 1) throw new UserInputException($"--repeats {repeats}: must be at least 1.");
        if (threads is < 1) throw new UserInputException($"--threads {threads}: must be at least 1.");
        int before = torch.get_num_threads();
        if (threads is { } t) torch.set_num_threads(t);
        try
        {
            var warm = RandomQuestions(model.Config.VocabSize, 1, choices, contextTokens, choiceTokens, seed: 2);
            var timed = RandomQuestions(model.Config.VocabSize, questions, choices, contextTokens, choiceTokens, seed: 3);
            var naiveScorer = new LoglikelihoodScorer(model, new LoglikelihoodOptions { SharedContext = false, BatchSize = batchSize });
            var sharedScorer = new LoglikelihoodScorer(model, new LoglikelihoodOptions { SharedContext = true, BatchSize = batchSize });
            naiveScorer.ScoreTokens(warm);
            sharedScorer.ScoreTokens(warm);
            // The modes alternate and each keeps its fastest run, so a burst of other load on the machine biases neither.
            double naiveSeconds = double.MaxValue, sharedSeconds = double.MaxValue, diff = 0;
            for (int rep = 0; rep < repeats; rep++)
            {
                var sw = Stopwatch.StartNew();
                var naive = naiveScorer.ScoreTokens(timed);
                naiveSeconds = Math.Min(naiveSeconds, sw.Elapsed.TotalSeconds);
                sw.Restart();
                var shared = sharedScorer.ScoreTokens(timed);
                sharedSeconds = Math.Min(sharedSeconds, sw.Elapsed.TotalSeconds);
                diff = Math.Max(diff, naive.Zip(shared).Max(p => Math.Abs(p.First.Logprob - p.Second.Logprob)));
            }
            double naivePerSecond = questions / naiveSeconds, sharedPerSecond = questions / sharedSeconds;
            return new LoglikelihoodBenchResult(questions, choices, naivePerSecond, sharedPerSecond, diff, torch.get_num_threads());
        }
        finally
        {
            torch.set_num_threads(before);
        }
    }

    /// <summary>
    /// Diagnostic for the PyTorch peer: scores random questions (several choices of different lengths, one of a single
    /// token, one context longer than <paramref name="maxLength"/> so the naive fallback is covered) in both modes and
    /// writes <c>{"max_length", "requests": [{"context", "continuation", "shared", "naive", "is_greedy"}]}</c> as JSON.
    /// </summary>
    /// <param name="model">The model (eval mode).</param>
    /// <param name="outPath">The JSON file to write.</param>
    /// <param name="maxLength">The scorer's max length (lm-eval's left truncation beyond it).</param>
    public static void WriteCheck(CausalLM model, string outPath, int maxLength = 48)
    {
        ArgumentNullException.ThrowIfNull(model);
        var requests = RandomQuestions(model.Config.VocabSize, 6, 4, 9, 5, seed: 11);
        requests.AddRange(RandomQuestions(model.Config.VocabSize, 3, 3, 17, 3, seed: 12));
        requests.AddRange(RandomQuestions(model.Config.VocabSize, 1, 2, maxLength + 6, 4, seed: 13)); // cut from the left
        var options = new LoglikelihoodOptions { MaxLength = maxLength, BatchSize = 8 };
        var shared = new LoglikelihoodScorer(model, options).ScoreTokens(requests);
        var naive = new LoglikelihoodScorer(model, options with { SharedContext = false }).ScoreTokens(requests);
        var list = new JsonArray();
        for (int i = 0; i < requests.Count; i++)
            list.Add(new JsonObject
            {
                ["context"] = new JsonArray(requests[i].Context.Select(x => (JsonNode)x).ToArray()),
                ["continuation"] = new JsonArray(requests[i].Continuation.Select(x => (JsonNode)x).ToArray()),
                ["shared"] = shared[i].Logprob,
                ["naive"] = naive[i].Logprob,
                ["is_greedy"] = shared[i].IsGreedy,
            });
        AtomicFile.WriteAllText(outPath, new JsonObject { ["max_length"] = maxLength, ["requests"] = list }.ToJsonString());
    }
}
