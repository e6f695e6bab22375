namespace ResLora.Training.Distributed;

/// <summary>
/// The few collective operations data-parallel training needs, over all ranks of one job (MPI's COMM_WORLD). Every
/// rank must call the same collectives in the same order with buffers of the same length, or the job hangs.
/// </summary>
public interface ICommunicator : IDisposable
{
    /// <summary>This process's index, 0 … <see cref="Size"/> − 1; rank 0 writes every file and log.</summary>
    int Rank { get; }

    /// <summary>The number of ranks in the job.</summary>
    int Size { get; }

    /// <summary>Replaces <paramref name="buffer"/> on every rank by the element-wise sum over all ranks.</summary>
    void AllReduceSum(Span<float> buffer);

    /// <summary>Replaces <paramref name="buffer"/> on every rank by the element-wise sum over all ranks.</summary>
    void AllReduceSum(Span<double> buffer);

    /// <summary>Copies <paramref name="buffer"/> of rank <paramref name="root"/> into the buffer of every other rank.</summary>
    void Broadcast(Span<byte> buffer, int root);

    /// <summary>Returns on every rank only after all ranks have entered it.</summary>
    void Barrier();

    /// <summary>Ends every rank of the job now with <paramref name="exitCode"/> (a failure on one rank that the others cannot see).</summary>
    void Abort(int exitCode);
}
