using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Pipelines.Serving;
using ResLora.Tests.Pipelines;

namespace ResLora.Tests.Serving;

/// <summary>
/// Continuous batching on a tiny model with mixed adapters: rows that join a running batch at different decode steps, with
/// different prompt lengths, adapters and sampling, get exactly the tokens they get alone; finished and cancelled rows
/// leave at once; the scheduler admits newcomers into the running batch within its row and cache bounds.
/// </summary>
public sealed class ContinuousBatchTests : IClassFixture<MultiAdapterFixture>
{
    private readonly MultiAdapterFixture _f;

    public ContinuousBatchTests(MultiAdapterFixture fixture) => _f = fixture;

    private AdapterSet LoadSet()
    {
        var set = AdapterSet.Load(_f.ModelDir, new RuntimeOptions());
        try
        {
            foreach (var n in new[] { "lora", "dora", "rslora" }) set.Add(n, _f.Dir(n));
            return set;
        }
        catch
        {
            set.Dispose();
            throw;
        }
    }

    private static ContinuousBatch Batch(AdapterSet set, int maxRows = 8, long? maxCache = null) =>
        new(set.Model, adapters => set.Plan.Route(adapters, set.Model.Device), maxRows, maxCache);

    /// <summary>A prompt of <paramref name="length"/> ids drawn from a fixed seed (ids 3.. avoid BOS/EOS).</summary>
    private int[] Prompt(int length, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, length).Select(_ => rng.Next(3, _f.Config.VocabSize)).ToArray();
    }

    /// <summary>Five rows: greedy and seeded sampling (top-k, top-p, a repetition penalty), prompts of 2 to 14 tokens, four adapters.</summary>
    private List<GenerationRow> Rows() => new()
    {
        new(Prompt(5, 1), null, new GenerationOptions { MaxNewTokens = 12 }),
        new(Prompt(9, 2), "lora", new GenerationOptions { MaxNewTokens = 10, Temperature = 0.9, Seed = 3 }),
        new(Prompt(3, 3), "dora", new GenerationOptions { MaxNewTokens = 8, RepetitionPenalty = 1.3 }),
        new(Prompt(14, 4), "rslora", new GenerationOptions { MaxNewTokens = 12, Temperature = 1.1, TopK = 20, TopP = 0.9, Seed = 11 }),
        new(Prompt(2, 5), "lora", new GenerationOptions { MaxNewTokens = 6 }),
    };

    [Fact]
    public void RowsJoiningAtDifferentSteps_GetExactlyTheTokensTheyGetAlone_AndLeaveWhenDone()
    {
        using var set = LoadSet();
        var rows = Rows();
        var alone = rows.Select(r => set.Generate(new[] { r })[0]).ToList();
        // The rows differ, so the test would notice rows swapped or shifted.
        Assert.Equal(rows.Count, alone.Select(a => string.Join(",", a)).Distinct().Count());

        var got = new IReadOnlyList<int>?[rows.Count];
        // Row i joins before decode step joinAt[i]: row 3 (14 tokens) arrives when the batch cache is shorter and pads the
        // batch; row 4 arrives after row 0 has left, into a cache whose leading padding was trimmed.
        int[] joinAt = { 0, 2, 3, 5, 13 };
        var sizes = new List<int>();
        var lengths = new List<long>();
        using (var batch = Batch(set))
        {
            for (int step = 0; step < 40; step++)
            {
                for (int i = 0; i < rows.Count; i++)
                {
                    int k = i;
                    if (joinAt[i] == step) batch.Join(rows[i] with { OnFinished = t => got[k] = t.ToArray() });
                }
                sizes.Add(batch.Count);
                batch.Step();
                lengths.Add(batch.CacheLength);
            }
            Assert.Equal(0, batch.Count);
            Assert.Equal(0, batch.CacheLength);
        }
        for (int i = 0; i < rows.Count; i++) Assert.Equal(alone[i], got[i]);
        // A row of n tokens gets its first from its prefill and the rest from n - 1 steps from its join on: row 0 is in
        // steps 0..10, row 1 in 2..10, row 2 in 3..9, row 3 in 5..15, row 4 in 13..17. A row leaves right after its last token.
        Assert.Equal(new[] { 1, 1, 2, 3, 3, 4, 4, 4, 4, 4, 3, 1, 1, 2, 2, 2, 1, 1, 0 }, sizes.Take(19));
        // The cache is as long as its longest live row: row 3 alone after step 12 holds 14 + 8 positions; once it leaves
        // after step 15, row 4's 2 + 3 positions without the padding that aligned it behind row 3; empty at the end.
        Assert.Equal(22, lengths[12]);
        Assert.Equal(5, lengths[15]);
        Assert.Equal(6, lengths[16]);
        Assert.Equal(0, lengths[17]);
        Assert.True(lengths.Max() <= 14 + 12);
    }

    [Fact]
    public void CancelledRow_LeavesBeforeTheNextStep_WithItsTokensSoFar_OthersUnchanged()
    {
        using var set = LoadSet();
        var rows = Rows().Take(3).ToList();
        var alone = rows.Select(r => set.Generate(new[] { r })[0]).ToList();
        using var cancel = new CancellationTokenSource();
        var got = new IReadOnlyList<int>?[rows.Count];
        int seen = 0;
        using var batch = Batch(set);
        var joining = new List<GenerationRow>();
        for (int i = 0; i < rows.Count; i++)
        {
            int k = i;
            var r = rows[i] with { OnFinished = t => got[k] = t.ToArray() };
            // Row 1 is cancelled from its stream after its third token, as a client that disconnects.
            if (i == 1) r = r with { Cancellation = cancel.Token, OnToken = _ => { if (++seen == 3) cancel.Cancel(); } };
            joining.Add(r);
        }
        batch.Join(joining); // together: one left-padded prefill of prompts of 5, 9 and 3 tokens
        Assert.Equal(3, batch.Count);
        batch.Step();
        Assert.Equal(3, batch.Count);
        Assert.Null(got[1]);
        batch.Step(); // row 1's third token: it is cancelled and leaves at once, before another step
        Assert.Equal(2, batch.Count);
        Assert.Equal(alone[1].Take(3), got[1]);
        while (batch.Count > 0) batch.Step();
        Assert.Equal(alone[0], got[0]);
        Assert.Equal(alone[2], got[2]);
    }

    [Fact]
    public void Fits_BoundsRowsAndCacheCells_ButOneRowAlwaysFits()
    {
        using var set = LoadSet();
        var rows = Rows(); // reserved positions: 17, 19, 11, 26, 8
        using var batch = Batch(set, maxRows: 3, maxCache: 3 * 19);
        Assert.True(batch.Fits(new[] { rows[3] })); // 26 > 57/2, but alone it always runs
        batch.Join(rows[0]);
        Assert.True(batch.Fits(new[] { rows[1], rows[2] }));  // 3 rows × 19 = 57 cells
        Assert.True(batch.Fits(new[] { rows[3] }));           // 2 × 26 = 52
        Assert.False(batch.Fits(new[] { rows[1], rows[3] })); // 3 × 26 = 78 > 57
        using (var small = Batch(set, maxRows: 3, maxCache: 51))
            Assert.False(small.Fits(new[] { rows[0], rows[3] })); // 52 > 51
        Assert.False(batch.Fits(new[] { rows[1], rows[2], rows[4] })); // 4 rows > max 3
    }

    [Fact]
    public async Task Scheduler_NewRequestJoinsTheRunningBatch_AndGetsItsAloneTokens()
    {
        using var set = LoadSet();
        var rows = Rows();
        var alone = rows.Select(r => set.Generate(new[] { r })[0]).ToList();
        var sizes = new List<int>();
        using var scheduler = new BatchScheduler(() => Batch(set), maxBatch: 4, maxQueue: 4, beforeStep: n => { lock (sizes) sizes.Add(n); });
        var later = new List<Task<IReadOnlyList<int>>>();
        int count = 0;
        // Row 0 runs alone; on its 3rd and 5th tokens (on the worker, so at a known step) rows 1..3 and then 4 arrive.
        var first = scheduler.Submit(rows[0] with
        {
            OnToken = _ =>
            {
                count++;
                if (count == 3) later.AddRange(rows.Skip(1).Take(3).Select(scheduler.Submit));
                if (count == 5) later.Add(scheduler.Submit(rows[4]));
            },
        });
        Assert.Equal(alone[0], await first.WaitAsync(TimeSpan.FromMinutes(2)));
        var rest = await Task.WhenAll(later).WaitAsync(TimeSpan.FromMinutes(2));
        for (int i = 1; i < rows.Count; i++) Assert.Equal(alone[i], rest[i - 1]);
        // Rows 1..3 joined the running row (4 rows, the max), and row 4 waited in the queue for a place.
        lock (sizes)
        {
            Assert.Equal(new[] { 1, 1, 4 }, sizes.Take(3));
            Assert.True(sizes.Max() == 4);
        }
        Assert.True(scheduler.Continuous);
        Assert.Equal(0, scheduler.Running);
    }

    [Fact]
    public async Task Scheduler_KeepsTheBatchWithinItsCacheBound_RowsWaitTheirTurnOldestFirst()
    {
        using var set = LoadSet();
        var rows = Rows(); // reserved positions: 17, 19, 11, 26, 8
        var alone = rows.Select(r => set.Generate(new[] { r })[0]).ToList();
        var sizes = new List<int>();
        var events = new List<int>(); // the row of each token, in the order the worker picks them
        // 40 cells: two rows of ≤ 19 reserved positions fit (38), three do not, and row 3 (26) only runs alone.
        using var scheduler = new BatchScheduler(() => Batch(set, maxRows: 8, maxCache: 40), maxBatch: 8, maxQueue: 8, beforeStep: n => { lock (sizes) sizes.Add(n); });
        var tasks = rows.Select((r, i) => scheduler.Submit(r with { OnToken = _ => { lock (events) events.Add(i); } })).ToList();
        var got = await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromMinutes(2));
        for (int i = 0; i < rows.Count; i++) Assert.Equal(alone[i], got[i]);
        lock (sizes) Assert.True(sizes.Max() == 2, $"sizes {string.Join(",", sizes)}");
        lock (events)
        {
            Assert.True(events.IndexOf(1) < events.LastIndexOf(0)); // row 1 joined row 0 while it ran
            Assert.True(events.LastIndexOf(2) < events.IndexOf(3)); // row 3 (2 × 26 > 40) waited for the batch to empty
            Assert.True(events.LastIndexOf(3) < events.IndexOf(4)); // and row 4, behind it, did not overtake it nor join it
        }
    }
}
