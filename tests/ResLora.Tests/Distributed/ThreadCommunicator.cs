using ResLora.Training.Distributed;

namespace ResLora.Tests.Distributed;

/// <summary>
/// N ranks as N threads of one process, for testing data-parallel code without MPI: each collective is a barrier
/// phase over shared buffers (ranks add in rank order, so every rank gets bit-identical sums, as MPI guarantees).
/// </summary>
internal sealed class ThreadGroup(int size)
{
    private readonly Barrier _barrier = new(size);
    private readonly double[][] _slots = new double[size][];

    public ICommunicator Rank(int rank) => new Member(this, rank);

    /// <summary>Runs <paramref name="body"/> on every rank in its own thread; rethrows the first failure.</summary>
    public T[] Run<T>(Func<ICommunicator, T> body)
    {
        var results = new T[size];
        var errors = new Exception?[size];
        var threads = Enumerable.Range(0, size).Select(r => new Thread(() =>
        {
            try { results[r] = body(Rank(r)); }
            catch (Exception e) { errors[r] = e; _barrier.RemoveParticipant(); }
        }, 16 << 20)).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        if (errors.FirstOrDefault(e => e is not null) is { } first) throw new AggregateException(first);
        return results;
    }

    private void Sum(int rank, Span<double> buffer)
    {
        _slots[rank] = buffer.ToArray();
        _barrier.SignalAndWait();
        var total = new double[buffer.Length];
        for (int r = 0; r < size; r++)
            for (int i = 0; i < total.Length; i++) total[i] += _slots[r][i];
        _barrier.SignalAndWait();
        total.CopyTo(buffer);
    }

    private sealed class Member(ThreadGroup group, int rank) : ICommunicator
    {
        public int Rank => rank;
        public int Size => group._slots.Length;

        public void AllReduceSum(Span<double> buffer) => group.Sum(rank, buffer);

        public void AllReduceSum(Span<float> buffer)
        {
            var d = new double[buffer.Length];
            for (int i = 0; i < d.Length; i++) d[i] = buffer[i];
            group.Sum(rank, d);
            for (int i = 0; i < d.Length; i++) buffer[i] = (float)d[i];
        }

        public void Broadcast(Span<byte> buffer, int root)
        {
            var d = new double[buffer.Length];
            if (rank == root) for (int i = 0; i < d.Length; i++) d[i] = buffer[i];
            group.Sum(rank, d);
            for (int i = 0; i < d.Length; i++) buffer[i] = (byte)d[i];
        }

        public void Barrier() => group._barrier.SignalAndWait();

        public void Abort(int exitCode) => throw new InvalidOperationException($"abort {exitCode}");

        public void Dispose()
        {
        }
    }
}
