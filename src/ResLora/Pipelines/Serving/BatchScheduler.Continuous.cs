using ResLora.Models;

namespace ResLora.Pipelines.Serving;

/// <summary>The continuous mode of the scheduler: rows join the running <see cref="ContinuousBatch"/> at each decode step.</summary>
public sealed partial class BatchScheduler
{
    /// <summary>
    /// Starts a worker that batches continuously: every decode step, queued rows (oldest first, while the batch has room:
    /// <paramref name="maxBatch"/> rows and the batch's cache bound, <see cref="ContinuousBatch.Fits"/>) are prefilled and
    /// join the running batch, and rows that finish or are cancelled leave it at once, completing their tasks. Other work
    /// (<see cref="Run{T}"/>) at the head of the queue stops rows behind it from joining; it runs alone once the batch empties.
    /// </summary>
    /// <param name="start">Makes the batch, on the worker thread, when the first row arrives (and again after a failed step).</param>
    /// <param name="maxBatch">Most rows in the batch at once (at least 1).</param>
    /// <param name="maxQueue">Most rows waiting to join (at least 1); one more is refused.</param>
    /// <param name="beforeStep">Called on the worker before each decode step (before the joining rows are prefilled) with the rows in
    /// the batch for that step, the joining ones included (logging, tests).</param>
    public BatchScheduler(Func<ContinuousBatch> start, int maxBatch, int maxQueue, Action<int>? beforeStep = null)
    {
        if (maxBatch < 1) throw new UserInputException($"--max-batch must be at least 1, got {maxBatch}.");
        if (maxQueue < 1) throw new UserInputException($"--max-queue must be at least 1, got {maxQueue}.");
        _start = start;
        _fits = _ => true;
        _beforeBatch = beforeStep;
        MaxBatch = maxBatch;
        MaxQueue = maxQueue;
        _worker = new Thread(WorkContinuously) { IsBackground = true, Name = "reslora-serve-worker" };
        _worker.Start();
    }

    /// <summary>Whether rows join a running batch at each decode step (the <see cref="ContinuousBatch"/> constructor).</summary>
    public bool Continuous => _start is not null;

    /// <summary>The continuous worker: admit what fits, prefill it, one decode step for all, repeat; work runs alone between.</summary>
    private void WorkContinuously()
    {
        ContinuousBatch? batch = null;
        var live = new HashSet<Job>(); // jobs whose rows are in the batch (touched only on this thread)
        try
        {
            while (true)
            {
                var joining = new List<Job>();
                Job? work = null;
                lock (_lock)
                {
                    while (_queue.Count == 0 && live.Count == 0 && !_disposed) Monitor.Wait(_lock);
                    if (_disposed && _queue.Count == 0 && live.Count == 0) return;
                    // Oldest first; stop at the first row that does not fit, so no row is overtaken forever.
                    while (_queue.First is { } node)
                    {
                        var job = node.Value;
                        if (job.Work is not null)
                        {
                            if (live.Count == 0 && joining.Count == 0) work = job;
                            else break;
                        }
                        // Before the batch exists (first row, or after a failed step) one row starts it; the rest join next step.
                        else if (live.Count + joining.Count >= MaxBatch || (batch is null && joining.Count > 0)
                            || (batch is not null && !batch.Fits(joining.Append(job).Select(j => j.Row!).ToList()))) break;
                        _queue.RemoveFirst();
                        job.Node = null;
                        if (work is not null) break;
                        joining.Add(job);
                    }
                    _running = live.Count + joining.Count + (work is null ? 0 : 1);
                }
                if (work is not null)
                {
                    try
                    {
                        if (work.Token.IsCancellationRequested) Finish(work, null, canceled: true);
                        else Finish(work, work.Work!(), canceled: false);
                    }
                    catch (Exception e)
                    {
                        Finish(work, null, canceled: false, e);
                    }
                }
                else batch = Advance(batch, joining, live);
                lock (_lock)
                {
                    _running = live.Count;
                    CheckDrained();
                }
            }
        }
        finally
        {
            batch?.Dispose();
        }
    }

    /// <summary>Prefills the joining rows into the batch and runs one decode step; a failed step fails every live row.</summary>
    private ContinuousBatch? Advance(ContinuousBatch? batch, List<Job> joining, HashSet<Job> live)
    {
        try
        {
            batch ??= _start!();
        }
        catch (Exception e)
        {
            foreach (var j in joining) Finish(j, null, canceled: false, e);
            return null;
        }
        if (joining.Count + live.Count > 0) _beforeBatch?.Invoke(joining.Count + live.Count);
        var valid = new List<Job>();
        foreach (var job in joining)
        {
            try
            {
                batch.Check(job.Row!);
                valid.Add(job);
            }
            catch (Exception e)
            {
                Finish(job, null, canceled: false, e); // a refused row fails alone
            }
        }
        if (valid.Count > 0)
        {
            foreach (var job in valid) live.Add(job);
            try
            {
                batch.Join(valid.Select(job => job.Row! with
                {
                    OnFinished = tokens =>
                    {
                        live.Remove(job);
                        Finish(job, tokens, job.Token.IsCancellationRequested);
                    },
                }).ToList());
            }
            catch (Exception e)
            {
                // A failed prefill fails the rows that joined with it; the batch is as it was.
                foreach (var job in valid.Where(live.Contains)) Finish(job, null, canceled: false, e);
                live.ExceptWith(valid);
            }
        }
        try
        {
            batch.Step();
            return batch;
        }
        catch (Exception e)
        {
            foreach (var j in live) Finish(j, null, canceled: false, e);
            live.Clear();
            batch.Dispose();
            return null;
        }
    }
}
