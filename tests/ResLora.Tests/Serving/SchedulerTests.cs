using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Pipelines.Serving;

namespace ResLora.Tests.Serving;

/// <summary>The library half of serving without a model: the scheduler's queue and the streamed text's hold-back.</summary>
public sealed class SchedulerTests
{
    private static GenerationRow Row(int id, CancellationToken cancel = default) =>
        new(new[] { id }, null, new GenerationOptions { MaxNewTokens = 1 }) { Cancellation = cancel };

    [Fact]
    public async Task Scheduler_BatchesWaitingRows_RefusesWhenFull_AndFreesACancelledPlace()
    {
        using var open = new ManualResetEventSlim(false);
        using var entered = new SemaphoreSlim(0);
        var batches = new List<int[]>();
        using var scheduler = new BatchScheduler(rows =>
        {
            lock (batches) batches.Add(rows.Select(r => r.Prompt[0]).ToArray());
            entered.Release();
            open.Wait();
            return rows.Select(r => (IReadOnlyList<int>)new[] { r.Prompt[0] * 10 }).ToList();
        }, maxBatch: 2, maxQueue: 2);

        var first = scheduler.Submit(Row(1));
        Assert.True(await entered.WaitAsync(TimeSpan.FromMinutes(1)));
        using var cancel = new CancellationTokenSource();
        var second = scheduler.Submit(Row(2, cancel.Token));
        var third = scheduler.Submit(Row(3));
        Assert.Equal(ServingErrorKind.QueueFull, Assert.Throws<ServingException>(() => { _ = scheduler.Submit(Row(4)); }).Kind);
        cancel.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => second);
        Assert.Equal(1, scheduler.Queued); // the cancelled row left the queue at once
        var fourth = scheduler.Submit(Row(4));

        scheduler.StopAccepting();
        Assert.Equal(ServingErrorKind.ShuttingDown, Assert.Throws<ServingException>(() => { _ = scheduler.Submit(Row(5)); }).Kind);
        open.Set();
        Assert.Equal(new[] { 10 }, await first);
        Assert.Equal(new[] { 30 }, await third);
        Assert.Equal(new[] { 40 }, await fourth);
        await scheduler.Drained.WaitAsync(TimeSpan.FromMinutes(1));
        Assert.Equal(new[] { new[] { 1 }, new[] { 3, 4 } }, batches);
    }

    [Fact]
    public async Task Shutdown_AfterItsTimeout_CancelsWhatIsStillRunning()
    {
        using var entered = new SemaphoreSlim(0);
        using var scheduler = new BatchScheduler(rows =>
        {
            entered.Release();
            // A batch that only ends when its row is cancelled (as AdapterSet does between steps).
            rows[0].Cancellation.WaitHandle.WaitOne(TimeSpan.FromMinutes(1));
            rows[0].OnFinished?.Invoke(Array.Empty<int>());
            return new[] { (IReadOnlyList<int>)Array.Empty<int>() };
        }, maxBatch: 1, maxQueue: 1);
        var running = scheduler.Submit(Row(1));
        Assert.True(await entered.WaitAsync(TimeSpan.FromMinutes(1)));
        Assert.False(await scheduler.ShutdownAsync(TimeSpan.FromMilliseconds(50)));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => running);
    }

    [Fact]
    public async Task Run_WaitsItsTurnBehindQueuedRows_RunsAloneOnTheWorker_AndLeavesTheQueueWhenCancelled()
    {
        using var open = new ManualResetEventSlim(false);
        using var entered = new SemaphoreSlim(0);
        var log = new List<string>();
        Thread? worker = null;
        using var scheduler = new BatchScheduler(rows =>
        {
            worker = Thread.CurrentThread;
            lock (log) log.Add("batch " + string.Join(",", rows.Select(r => r.Prompt[0])));
            entered.Release();
            open.Wait();
            return rows.Select(r => (IReadOnlyList<int>)new[] { r.Prompt[0] }).ToList();
        }, maxBatch: 4, maxQueue: 4);

        try
        {
            await RunWaitsItsTurn(scheduler, entered, open, log, () => worker);
        }
        finally
        {
            open.Set(); // a failed assertion must not leave the worker blocked (Dispose joins it)
        }
    }

    private static async Task RunWaitsItsTurn(BatchScheduler scheduler, SemaphoreSlim entered, ManualResetEventSlim open, List<string> log, Func<Thread?> worker)
    {
        var first = scheduler.Submit(Row(1));
        Assert.True(await entered.WaitAsync(TimeSpan.FromMinutes(1)));
        var second = scheduler.Submit(Row(2));
        var work = scheduler.Run(() =>
        {
            lock (log) log.Add("work");
            return Thread.CurrentThread;
        });
        var third = scheduler.Submit(Row(3));
        using var cancel = new CancellationTokenSource();
        var dropped = scheduler.Run(() =>
        {
            lock (log) log.Add("dropped");
            return 0;
        }, cancel.Token);
        Assert.Equal(4, scheduler.Queued);
        Assert.Equal(ServingErrorKind.QueueFull, Assert.Throws<ServingException>(() => { _ = scheduler.Run(() => 0); }).Kind); // work counts as a queued request
        cancel.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => dropped);
        Assert.Equal(3, scheduler.Queued);

        open.Set();
        Assert.Same(worker(), await work.WaitAsync(TimeSpan.FromMinutes(1))); // on the worker thread, which owns the model
        await Task.WhenAll(first, second, third).WaitAsync(TimeSpan.FromMinutes(1));
        // The work ends the batch before it (row 2 does not share a batch with row 3 across it) and runs between batches.
        Assert.Equal(new[] { "batch 1", "batch 2", "work", "batch 3" }, log);
    }

    [Fact]
    public void ReplyText_HoldsBackPossibleStopStringsAndUnfinishedCharacters_PiecesConcatenate()
    {
        // Token t renders as the character t; 0 renders as an unfinished character (U+FFFD) unless followed by 1.
        static string Render(IReadOnlyList<int> tokens)
        {
            var s = new System.Text.StringBuilder();
            for (int i = 0; i < tokens.Count; i++)
                if (tokens[i] == 0) s.Append(i + 1 < tokens.Count && tokens[i + 1] == 1 ? "é" : "\uFFFD");
                else if (tokens[i] != 1 || i == 0 || tokens[i - 1] != 0) s.Append((char)tokens[i]);
            return s.ToString();
        }
        var pieces = new List<string>();
        var reply = new ReplyText(Render, new[] { "XY" }, pieces.Add);
        foreach (char c in "a") reply.Add(c);
        Assert.Equal(new[] { "a" }, pieces);
        reply.Add('X'); // may start "XY": held
        Assert.Equal(new[] { "a" }, pieces);
        reply.Add('b');
        Assert.Equal(new[] { "a", "Xb" }, pieces);
        reply.Add(0); // half a character: held
        Assert.Equal(3, string.Concat(pieces).Length);
        reply.Add(1);
        Assert.Equal("aXbé", string.Concat(pieces));
        reply.Add('X');
        reply.Add('Y');
        Assert.True(reply.Stopped);
        reply.Finish();
        Assert.Equal("aXbé", reply.Text);
        Assert.Equal(reply.Text, string.Concat(pieces));
    }
}
