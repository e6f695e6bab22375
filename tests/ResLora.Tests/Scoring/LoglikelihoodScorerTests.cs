using ResLora.Models;
using ResLora.Scoring;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.Scoring;

/// <summary>Naive scoring against the per-token reference, shared-context scoring against naive, greedy flags, bad input.</summary>
public sealed class LoglikelihoodScorerTests
{
    private const double Tol = 1e-5;

    /// <summary>Questions of 2-5 choices of 1-5 tokens, contexts of different lengths; choices of one question share its context.</summary>
    internal static List<LoglikelihoodTokens> Questions(int vocab, long seed, int questions = 4, string?[]? adapters = null)
    {
        var rng = new Random((int)seed);
        var list = new List<LoglikelihoodTokens>();
        for (int q = 0; q < questions; q++)
        {
            int[] ctx = Enumerable.Range(0, 3 + rng.Next(9)).Select(_ => 3 + rng.Next(vocab - 3)).ToArray();
            int choices = 2 + (q % 4);
            for (int c = 0; c < choices; c++)
            {
                int[] cont = Enumerable.Range(0, 1 + (c + q) % 5).Select(_ => 3 + rng.Next(vocab - 3)).ToArray();
                list.Add(new LoglikelihoodTokens(ctx, cont, adapters?[(q + c) % adapters.Length]));
            }
        }
        return list;
    }

    private static LoglikelihoodScorer Scorer(CausalLM model, bool shared, int batch = 16, int? maxLength = null) =>
        new(model, new LoglikelihoodOptions { SharedContext = shared, BatchSize = batch, MaxLength = maxLength });

    [Fact]
    public void Naive_EqualsTokenLogprobsSummedOverTheContinuation()
    {
        using var model = TinyModels.Build(TinyModels.Config(), seed: 41);
        var requests = Questions(64, 1);
        // Batch 3: rows of different lengths padded together, and batches that break questions apart.
        var got = Scorer(model, shared: false, batch: 3).ScoreTokens(requests);
        for (int i = 0; i < requests.Count; i++)
        {
            var whole = requests[i].Context.Concat(requests[i].Continuation).ToList();
            var reference = TokenLogprobs.Score(TokenLogprobs.Of(model), whole, requests[i].Context.Count);
            Assert.Equal(reference.Sum(s => s.Logprob), got[i].Logprob, Tol);
            Assert.Equal(reference.All(s => s.IsGreedy), got[i].IsGreedy);
            Assert.Equal(requests[i].Continuation.Count, got[i].ContinuationTokens);
            Assert.True(got[i].Logprob < 0);
        }
    }

    [Fact]
    public void Naive_LongerThanMaxLength_KeepsTheLastMaxPlusOneTokensAsLmEval()
    {
        using var model = TinyModels.Build(TinyModels.Config(), seed: 42);
        int[] ctx = Enumerable.Range(5, 12).ToArray(), cont = { 40, 41, 42 };
        var got = Scorer(model, shared: false, maxLength: 8).ScoreTokens(new[] { new LoglikelihoodTokens(ctx, cont) })[0];
        // (ctx + cont)[-9:]: the last 9 tokens, of which the last 3 are the continuation.
        var kept = ctx.Concat(cont).TakeLast(9).ToList();
        var reference = TokenLogprobs.Score(TokenLogprobs.Of(model), kept, 6);
        Assert.Equal(reference.Sum(s => s.Logprob), got.Logprob, Tol);
        var untruncated = TokenLogprobs.Score(TokenLogprobs.Of(model), ctx.Concat(cont).ToList(), ctx.Length);
        Assert.True(Math.Abs(untruncated.Sum(s => s.Logprob) - got.Logprob) > 1e-4, "the cut context must change the score");
    }

    [Theory]
    [InlineData(1)]   // one question per batch (a question with more choices than the batch still goes whole)
    [InlineData(5)]   // some questions batched together
    [InlineData(64)]  // every question in one batch: contexts left-padded
    public void Shared_EqualsNaive_ForEveryBatching(int batch)
    {
        using var model = TinyModels.Build(TinyModels.Config(), seed: 43);
        var requests = Questions(64, 2, questions: 6);
        var naive = Scorer(model, shared: false).ScoreTokens(requests);
        var shared = Scorer(model, shared: true, batch: batch).ScoreTokens(requests);
        AssertSame(naive, shared);
        Assert.Contains(requests, r => r.Continuation.Count == 1);
        Assert.Contains(requests, r => r.Continuation.Count == 5);
    }

    [Fact]
    public void Shared_ForwardsEachContextOnce_AndTheChoicesInChunksOfSimilarLength()
    {
        using var model = TinyModels.Build(TinyModels.Config(), seed: 44);
        var requests = Questions(64, 3, questions: 3); // 2 + 3 + 4 choices
        var rows = new List<(long Rows, long Seq, long Past)>();
        LoglikelihoodForward counting = (ids, mask, adapters, cache) =>
        {
            rows.Add((ids.shape[0], ids.shape[1], cache?.Length ?? 0));
            return LoglikelihoodForwards.Of(model)(ids, mask, adapters, cache);
        };
        var scorer = new LoglikelihoodScorer(counting, model.Config, model.Device, new LoglikelihoodOptions { BatchSize = 64 });
        var shared = scorer.ScoreTokens(requests);
        // One forward of the 3 contexts (left-padded to the longest); then the continuations after them, in chunks of
        // similar length: every continuation longer than one token exactly once, padding at most 25 % of each chunk or less than ChunkSlack positions.
        int longestCtx = requests.Max(r => r.Context.Count);
        Assert.Equal((3L, (long)longestCtx, 0L), rows[0]);
        var cont = rows.Skip(1).ToList();
        Assert.Equal(requests.Count(r => r.Continuation.Count > 1), cont.Sum(c => c.Rows));
        Assert.All(cont, c => Assert.Equal(longestCtx, c.Past));
        long real = requests.Sum(r => r.Continuation.Count - 1), padded = cont.Sum(c => c.Rows * c.Seq);
        Assert.True(padded - real <= Math.Max(0.25 * real, LoglikelihoodScorer.ChunkSlack * cont.Count), $"{padded} padded for {real} real positions");
        AssertSame(Scorer(model, shared: false).ScoreTokens(requests), shared);
    }

    [Fact]
    public void Shared_ContextLongerThanMaxLength_FallsBackToNaiveForThoseRequests()
    {
        using var model = TinyModels.Build(TinyModels.Config(), seed: 45);
        var requests = Questions(64, 4, questions: 3);
        int[] longCtx = Enumerable.Range(3, 20).ToArray();
        requests.Add(new LoglikelihoodTokens(longCtx, new[] { 7, 8 }));
        requests.Add(new LoglikelihoodTokens(longCtx, new[] { 9 }));
        requests.Add(new LoglikelihoodTokens(longCtx.Take(10).ToArray(), new[] { 9, 10, 11 })); // 13 tokens: just fits 12 + 1
        var naive = Scorer(model, shared: false, maxLength: 12).ScoreTokens(requests);
        var shared = Scorer(model, shared: true, maxLength: 12).ScoreTokens(requests);
        AssertSame(naive, shared);
    }

    [Fact]
    public void IsGreedy_TrueForTheGreedyContinuation_FalseOnceOneTokenDiffers()
    {
        using var model = TinyModels.Build(TinyModels.Config(), seed: 46);
        var ctx = new List<int> { 1, 12, 30, 7 };
        var greedy = new List<int>();
        for (int i = 0; i < 4; i++)
        {
            var seq = ctx.Concat(greedy).Append(0).ToList();
            greedy.Add(TokenLogprobs.Score(TokenLogprobs.Of(model), seq, seq.Count - 1, topK: 1)[0].Top[0].Token);
        }
        var wrong = greedy.ToList();
        wrong[2] = (wrong[2] + 1) % 64;
        var wrongFirst = greedy.ToList();
        wrongFirst[0] = (wrongFirst[0] + 1) % 64;
        var requests = new[] { new LoglikelihoodTokens(ctx, greedy), new LoglikelihoodTokens(ctx, wrong), new LoglikelihoodTokens(ctx, wrongFirst), new LoglikelihoodTokens(ctx, greedy.Take(1).ToList()) };
        foreach (bool shared in new[] { true, false })
        {
            var got = Scorer(model, shared).ScoreTokens(requests);
            Assert.Equal(new[] { true, false, false, true }, got.Select(r => r.IsGreedy));
            Assert.True(got[0].Logprob > got[1].Logprob);
        }
    }

    [Fact]
    public void TextRequests_AreEncodedAsEncodePair_AndProgressReachesTheTotal()
    {
        var tok = new CharTokenizer { AddBosToken = false };
        using var model = TinyModels.Build(TinyModels.Config(vocab: tok.VocabSize), seed: 47);
        var requests = new[]
        {
            new LoglikelihoodRequest("Question: 1+1? Answer: ", "2"),
            new LoglikelihoodRequest("Question: 1+1? Answer: ", "two"),
            new LoglikelihoodRequest("", "hello"),
        };
        var progress = new List<(int Done, int Total)>();
        var got = Scorer(model, shared: true, batch: 2).Score(tok, requests, (d, t) => progress.Add((d, t)));
        // The trailing space is scored with the answer: " 2" is 2 characters, " two" 4; the empty context is BOS.
        Assert.Equal(new[] { 2, 4, 5 }, got.Select(r => r.ContinuationTokens));
        var reference = TokenLogprobs.Score(TokenLogprobs.Of(model), tok.Encode("Question: 1+1? Answer: 2").ToList(), tok.Encode("Question: 1+1? Answer:").Count);
        Assert.Equal(reference.Sum(s => s.Logprob), got[0].Logprob, Tol);
        var bos = TokenLogprobs.Score(TokenLogprobs.Of(model), tok.Encode("hello").Prepend(1).ToList(), 1);
        Assert.Equal(bos.Sum(s => s.Logprob), got[2].Logprob, Tol);
        Assert.Equal((3, 3), progress[^1]);
        Assert.True(progress.Zip(progress.Skip(1)).All(p => p.First.Done < p.Second.Done));
    }

    [Fact]
    public void BadInput_IsRefusedWithTheRequestNamed()
    {
        using var model = TinyModels.Build(TinyModels.Config(), seed: 48);
        var scorer = Scorer(model, shared: true, maxLength: 8);
        var empty = Assert.Throws<UserInputException>(() => scorer.ScoreTokens(new[] { new LoglikelihoodTokens(new[] { 1, 2 }, new[] { 5 }), new LoglikelihoodTokens(new[] { 1 }, Array.Empty<int>()) }));
        Assert.Contains("request 1", empty.Message);
        var tooLong = Assert.Throws<UserInputException>(() => scorer.ScoreTokens(new[] { new LoglikelihoodTokens(new[] { 1 }, Enumerable.Repeat(5, 9).ToArray()) }));
        Assert.Contains("max length is 8", tooLong.Message);
        var outOfVocab = Assert.Throws<UserInputException>(() => scorer.ScoreTokens(new[] { new LoglikelihoodTokens(new[] { 1 }, new[] { 64 }) }));
        Assert.Contains("token id 64", outOfVocab.Message);
        var adapter = Assert.Throws<UserInputException>(() => scorer.ScoreTokens(new[] { new LoglikelihoodTokens(new[] { 1 }, new[] { 5 }, "lora") }));
        Assert.Contains("'lora'", adapter.Message);
        Assert.Throws<UserInputException>(() => Scorer(model, shared: true, maxLength: 500));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void RepeatedScoring_LeavesNoLiveTensors(bool shared)
    {
        using var model = TinyModels.Build(TinyModels.Config(), seed: 49);
        var scorer = Scorer(model, shared, batch: 4, maxLength: 10);
        var requests = Questions(64, 5, questions: 4);
        requests.Add(new LoglikelihoodTokens(Enumerable.Range(3, 14).ToArray(), new[] { 5, 6 })); // the naive fallback too
        scorer.ScoreTokens(requests);
        long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 3; i++) scorer.ScoreTokens(requests);
        Assert.Equal(before, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    internal static void AssertSame(IReadOnlyList<LoglikelihoodResult> expected, IReadOnlyList<LoglikelihoodResult> actual)
    {
        Assert.Equal(expected.Count, actual.Count);
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.True(Math.Abs(expected[i].Logprob - actual[i].Logprob) <= Tol, $"request {i}: {expected[i].Logprob} vs {actual[i].Logprob}");
            Assert.Equal(expected[i].IsGreedy, actual[i].IsGreedy);
            Assert.Equal(expected[i].ContinuationTokens, actual[i].ContinuationTokens);
        }
    }
}
