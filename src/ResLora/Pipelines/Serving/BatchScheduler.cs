using ResLora.Models;

namespace ResLora.Pipelines.Serving;

/// <summary>Why a request was not taken.</summary>
public enum ServingErrorKind
{
    /// <summary>A field is missing, malformed or out of range.</summary>
    InvalidRequest,
    /// <summary>The request names a model or adapter that is not served.</summary>
    ModelNotFound,
    /// <summary>The queue holds its maximum of waiting requests; try again shortly.</summary>
    QueueFull,
    /// <summary>The server is shutting down and takes no new requests.</summary>
    ShuttingDown,
    /// <summary>The request asks for something the server will not reach: an adapter path outside its adapter root.</summary>
    Forbidden,
    /// <summary>A file or folder the request names does not exist (an adapter folder to load).</summary>
    NotFound,
}

/// <summary>A request the server refuses, with what kind of refusal it is and the field it concerns.</summary>
public sealed class ServingException : Exception
{
    /// <summary>A refusal.</summary>
    /// <param name="kind">What kind of refusal.</param>
    /// <param name="message">What is wrong and how to fix it.</param>
    /// <param name="param">The request field concerned, or null.</param>
    public ServingException(ServingErrorKind kind, string message, string? param = null) : base(message)
    {
        Kind = kind;
        Param = param;
    }

    /// <summary>What kind of refusal.</summary>
    public ServingErrorKind Kind { get; }

    /// <summary>The request field concerned, or null.</summary>
    public string? Param { get; }
}

/// <summary>
/// One worker that owns the model and runs queued generation rows in batches. <see cref="Submit"/> is thread-safe: it puts
/// a row in a bounded queue (refused with <see cref="ServingErrorKind.QueueFull"/> when <c>maxQueue</c> rows wait, and with
/// <see cref="ServingErrorKind.ShuttingDown"/> after <see cref="StopAccepting"/>). The worker takes up to <c>maxBatch</c>
/// waiting rows, oldest first (as many as fit together, see <c>fits</c>), runs them as one batch and completes each row's
/// task as soon as that row finishes. Rows that arrive while a batch runs wait for the next one, unless the scheduler batches
/// continuously (the constructor taking a <see cref="ContinuousBatch"/>): then they join the running batch at its next
/// decode step, within its row and cache bounds. A row cancelled while it
/// waits leaves the queue at once; one cancelled while it runs leaves its batch before the next step. Other work on the
/// model (<see cref="Run{T}"/>: scoring a prompt's tokens) waits in the same queue and runs alone on the worker between
/// batches, so it never races a batch for the model.
/// </summary>
public sealed partial class BatchScheduler : IDisposable
{
    /// <summary>A queued generation row, or (when <see cref="Work"/> is set) a piece of other work that runs alone.</summary>
    private sealed class Job(GenerationRow? row, Func<object?>? work, CancellationTokenSource cancel)
    {
        public GenerationRow? Row { get; } = row;
        public Func<object?>? Work { get; } = work;
        public CancellationTokenSource Cancel { get; } = cancel;
        public CancellationToken Token { get; } = cancel.Token; // kept: the source is disposed when the job finishes
        public TaskCompletionSource<object?> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public LinkedListNode<Job>? Node { get; set; }
        public CancellationTokenRegistration Registration { get; set; }
    }

    private readonly Func<IReadOnlyList<GenerationRow>, IReadOnlyList<IReadOnlyList<int>>>? _run;
    private readonly Func<ContinuousBatch>? _start;
    private readonly Func<IReadOnlyList<GenerationRow>, bool> _fits;
    private readonly Action<int>? _beforeBatch;
    private readonly LinkedList<Job> _queue = new();
    private readonly object _lock = new();
    private readonly CancellationTokenSource _abort = new();
    private readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Thread _worker;
    private bool _accepting = true;
    private int _running;
    private bool _disposed;

    /// <summary>Starts the worker.</summary>
    /// <param name="run">Runs one batch (on the worker thread only): <c>AdapterSet.Generate</c>.</param>
    /// <param name="maxBatch">Most rows in one batch (at least 1).</param>
    /// <param name="maxQueue">Most rows waiting for a batch (at least 1); one more is refused.</param>
    /// <param name="fits">Whether rows can share a batch (e.g. the padded length fits the model); null = always. A single row always runs.</param>
    /// <param name="beforeBatch">Called on the worker with the batch size before each batch runs (logging, tests).</param>
    public BatchScheduler(Func<IReadOnlyList<GenerationRow>, IReadOnlyList<IReadOnlyList<int>>> run, int maxBatch, int maxQueue,
        Func<IReadOnlyList<GenerationRow>, bool>? fits = null, Action<int>? beforeBatch = null)
    {
        if (maxBatch < 1) throw new UserInputException($"--max-batch must be at least 1, got {maxBatch}.");
        if (maxQueue < 1) throw new UserInputException($"--max-queue must be at least 1, got {maxQueue}.");
        _run = run;
        _fits = fits ?? (_ => true);
        _beforeBatch = beforeBatch;
        MaxBatch = maxBatch;
        MaxQueue = maxQueue;
        _worker = new Thread(Work) { IsBackground = true, Name = "reslora-serve-worker" };
        _worker.Start();
    }

    /// <summary>Most rows in one batch.</summary>
    public int MaxBatch { get; }

    /// <summary>Most rows waiting.</summary>
    public int MaxQueue { get; }

    /// <summary>Rows waiting for a batch.</summary>
    public int Queued
    {
        get { lock (_lock) return _queue.Count; }
    }

    /// <summary>Rows in the batch that runs now.</summary>
    public int Running
    {
        get { lock (_lock) return _running; }
    }

    /// <summary>
    /// Queues a row; the task gives its tokens when it finishes (a cancelled row's task is cancelled). Throws a
    /// <see cref="ServingException"/> when the queue is full or the scheduler no longer accepts rows.
    /// </summary>
    public Task<IReadOnlyList<int>> Submit(GenerationRow row)
    {
        ArgumentNullException.ThrowIfNull(row);
        return Cast<IReadOnlyList<int>>(Enqueue(row, null, row.Cancellation));
    }

    /// <summary>
    /// Queues <paramref name="work"/> (e.g. a forward that scores a prompt) to run on the worker thread, alone, when its
    /// turn comes: after the batch that runs now and the rows queued before it. Refused as <see cref="Submit"/> refuses
    /// (full queue, shutting down); cancelled while it waits, it leaves the queue and its task is cancelled.
    /// </summary>
    /// <param name="work">What to run with the model to itself.</param>
    /// <param name="cancel">Drops the work while it waits.</param>
    public Task<T> Run<T>(Func<T> work, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(work);
        return Cast<T>(Enqueue(null, () => work(), cancel));
    }

    private static async Task<T> Cast<T>(Task<object?> task) => (T)(await task.ConfigureAwait(false))!;

    private Task<object?> Enqueue(GenerationRow? row, Func<object?>? work, CancellationToken token)
    {
        Job job;
        lock (_lock)
        {
            if (!_accepting) throw new ServingException(ServingErrorKind.ShuttingDown, "the server is shutting down and takes no new requests.");
            if (_queue.Count >= MaxQueue)
                throw new ServingException(ServingErrorKind.QueueFull, $"the queue is full ({MaxQueue} requests wait for a batch); retry shortly.");
            var cancel = CancellationTokenSource.CreateLinkedTokenSource(token, _abort.Token);
            job = new Job(row is null ? null : row with { Cancellation = cancel.Token }, work, cancel);
            job.Node = _queue.AddLast(job);
            // Registered while the lock is held: the worker cannot take the row, finish it and dispose its token source
            // before the registration exists (it did, under load, and Register threw ObjectDisposedException).
            // A row cancelled while it waits frees its place at once; one already cancelled runs this callback here
            // (the lock is re-entrant).
            job.Registration = cancel.Token.Register(() =>
            {
                bool removed = false;
                lock (_lock)
                {
                    if (job.Node?.List is not null)
                    {
                        _queue.Remove(job.Node);
                        removed = true;
                        CheckDrained();
                    }
                }
                if (removed) Finish(job, null, canceled: true);
            });
            Monitor.PulseAll(_lock);
        }
        return job.Done.Task;
    }

    /// <summary>Takes no new rows (<see cref="ServingErrorKind.ShuttingDown"/>); queued and running rows go on.</summary>
    public void StopAccepting()
    {
        lock (_lock)
        {
            _accepting = false;
            CheckDrained();
            Monitor.PulseAll(_lock);
        }
    }

    /// <summary>Completes once <see cref="StopAccepting"/> was called and no row waits or runs.</summary>
    public Task Drained => _drained.Task;

    /// <summary>
    /// Stops accepting, waits up to <paramref name="timeout"/> for queued and running rows to finish, then cancels the
    /// rest (their tasks are cancelled). Returns true when everything finished in time.
    /// </summary>
    public async Task<bool> ShutdownAsync(TimeSpan timeout)
    {
        StopAccepting();
        bool inTime = await Task.WhenAny(Drained, Task.Delay(timeout)).ConfigureAwait(false) == Drained;
        if (!inTime) _abort.Cancel();
        await Drained.ConfigureAwait(false);
        return inTime;
    }

    private void CheckDrained()
    {
        if (!_accepting && _queue.Count == 0 && _running == 0) _drained.TrySetResult();
    }

    private void Work()
    {
        while (true)
        {
            var batch = new List<Job>();
            lock (_lock)
            {
                while (_queue.Count == 0 && !_disposed) Monitor.Wait(_lock);
                if (_disposed && _queue.Count == 0) return;
                // Oldest first; stop at the first row that does not fit with the ones taken, so no row is overtaken forever.
                // Other work runs alone: it ends the batch before it, or is taken by itself.
                while (_queue.First is { } node && batch.Count < MaxBatch)
                {
                    if (batch.Count > 0 && (node.Value.Work is not null || batch[0].Work is not null || !_fits(batch.Append(node.Value).Select(j => j.Row!).ToList()))) break;
                    _queue.RemoveFirst();
                    node.Value.Node = null;
                    batch.Add(node.Value);
                }
                _running = batch.Count;
            }
            try
            {
                if (batch[0].Work is { } work)
                {
                    var job = batch[0];
                    if (job.Token.IsCancellationRequested) Finish(job, null, canceled: true);
                    else Finish(job, work(), canceled: false);
                }
                else
                {
                    _beforeBatch?.Invoke(batch.Count);
                    var rows = batch.Select(j => j.Row! with { OnFinished = tokens => Finish(j, tokens, j.Token.IsCancellationRequested) }).ToList();
                    var outputs = _run!(rows);
                    for (int i = 0; i < batch.Count; i++) Finish(batch[i], outputs[i], batch[i].Token.IsCancellationRequested);
                }
            }
            catch (Exception e)
            {
                foreach (var j in batch) Finish(j, null, canceled: false, e);
            }
            lock (_lock)
            {
                _running = 0;
                CheckDrained();
            }
        }
    }

    private static void Finish(Job job, object? result, bool canceled, Exception? error = null)
    {
        bool first = error is not null ? job.Done.TrySetException(error)
            : canceled ? job.Done.TrySetCanceled(job.Token) // the token, not the (maybe disposed) source
            : job.Done.TrySetResult(result);
        if (!first) return;
        job.Registration.Dispose();
        job.Cancel.Dispose();
    }

    /// <summary>Cancels every waiting and running row and stops the worker once its batch ends.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _accepting = false;
            _disposed = true;
            Monitor.PulseAll(_lock);
        }
        _abort.Cancel();
        if (Thread.CurrentThread != _worker) _worker.Join();
        _abort.Dispose();
    }
}
