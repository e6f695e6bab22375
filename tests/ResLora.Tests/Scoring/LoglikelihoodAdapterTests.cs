using ResLora.Adapters;
using ResLora.Demo;
using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Scoring;
using ResLora.Tests.Infrastructure;
using ResLora.Tests.Pipelines;
using TorchSharp;

namespace ResLora.Tests.Scoring;

/// <summary>Several adapters in one pass: an adapter set's mixed-adapter forward scores each request as that adapter alone.</summary>
public sealed class LoglikelihoodAdapterTests : IClassFixture<MultiAdapterFixture>, IDisposable
{
    private readonly AdapterSet _set;

    /// <summary>The base with "a" (LoRA, all-linear) and "b" (DoRA, all-linear) of the shared fixture.</summary>
    public LoglikelihoodAdapterTests(MultiAdapterFixture f)
    {
        _set = AdapterSet.Load(f.ModelDir, new RuntimeOptions());
        _set.Add("a", f.Dir("lora"));
        _set.Add("b", f.Dir("dora"));
    }

    public void Dispose() => _set.Dispose();

    private LoglikelihoodScorer Scorer(bool shared, int batch = 16) =>
        new(_set.Forward, _set.Model.Config, _set.Model.Device, new LoglikelihoodOptions { SharedContext = shared, BatchSize = batch });

    [Theory]
    [InlineData(true, 64)]
    [InlineData(true, 3)]
    [InlineData(false, 4)]
    public void MixedAdapters_EqualEachAdapterScoredAlone(bool shared, int batch)
    {
        int vocab = _set.Model.Config.VocabSize;
        // Every question asked of the base, a and b (each choice with each), interleaved in one list.
        var one = LoglikelihoodScorerTests.Questions(vocab, 7, 4);
        string?[] names = { null, "a", "b" };
        var mixed = one.SelectMany(r => names.Select(n => r with { Adapter = n })).ToList();
        var together = Scorer(shared, batch).ScoreTokens(mixed);
        var alone = names.Select(n => Scorer(shared: false).ScoreTokens(one.Select(r => r with { Adapter = n }).ToList())).ToArray();
        for (int i = 0; i < one.Count; i++)
            for (int k = 0; k < names.Length; k++)
            {
                var got = together[i * names.Length + k];
                Assert.True(Math.Abs(got.Logprob - alone[k][i].Logprob) <= 1e-5, $"request {i} adapter {names[k] ?? "base"}: {got.Logprob} vs {alone[k][i].Logprob}");
                Assert.Equal(alone[k][i].IsGreedy, got.IsGreedy);
            }
        // The adapters do change the scores (so routing a row to the wrong adapter would be caught).
        Assert.True(one.Select((_, i) => Math.Abs(alone[1][i].Logprob - alone[0][i].Logprob)).Max() > 1e-3);
        Assert.True(one.Select((_, i) => Math.Abs(alone[2][i].Logprob - alone[1][i].Logprob)).Max() > 1e-3);
    }

    [Fact]
    public void SharedContext_ForwardsTheContextOncePerDistinctAdapter()
    {
        var ctx = new[] { 1, 40, 41, 42, 43 };
        var requests = new[]
        {
            new LoglikelihoodTokens(ctx, new[] { 50, 51 }, "a"), new LoglikelihoodTokens(ctx, new[] { 52 }, "b"),
            new LoglikelihoodTokens(ctx, new[] { 53, 54, 55 }, "a"), new LoglikelihoodTokens(ctx, new[] { 56 }, null),
        };
        var calls = new List<string?[]>();
        LoglikelihoodForward counting = (ids, mask, adapters, cache) => { calls.Add(adapters.ToArray()); return _set.Forward(ids, mask, adapters, cache); };
        var got = new LoglikelihoodScorer(counting, _set.Model.Config, _set.Model.Device).ScoreTokens(requests);
        // The context once per distinct adapter; then only the continuations longer than one token (both under "a"),
        // each with its own adapter: one-token choices are scored from the context's last position alone.
        Assert.Equal(new[] { "a", "b", null }, calls[0]);
        Assert.Equal(new[] { "a", "a" }, calls.Skip(1).SelectMany(c => c));
        LoglikelihoodScorerTests.AssertSame(Scorer(shared: false).ScoreTokens(requests), got);
    }
}
