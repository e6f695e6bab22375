namespace ResLora.Training.Distributed;

/// <summary>Where a launcher put this process: its rank and the job's size, as read from the environment.</summary>
public sealed record MpiLaunch(int Rank, int Size, string Source);

/// <summary>
/// <see cref="ICommunicator"/> over MPI's COMM_WORLD. Created only when a launcher (mpirun, srun, mpiexec) started the
/// process (<see cref="DetectLaunch"/>); a process started without one never loads the MPI library.
/// </summary>
public sealed unsafe class MpiCommunicator : ICommunicator
{
    /// <summary>Largest count passed to one MPI call (its count is a C int).</summary>
    private const int MaxCount = 1 << 28;

    private readonly MpiLibrary _mpi;
    private bool _disposed;

    private MpiCommunicator(MpiLibrary mpi)
    {
        _mpi = mpi;
        _mpi.Init();
        Rank = _mpi.Rank();
        Size = _mpi.Size();
    }

    public int Rank { get; }
    public int Size { get; }

    /// <summary>
    /// The launch the environment describes, or null for a plain process: Open MPI's <c>OMPI_COMM_WORLD_SIZE/RANK</c>,
    /// then PMI's <c>PMI_SIZE/PMI_RANK</c> (MPICH's Hydra, Slurm's srun, Intel MPI).
    /// </summary>
    public static MpiLaunch? DetectLaunch(Func<string, string?> env)
    {
        foreach (var (size, rank) in new[] { ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"), ("PMI_SIZE", "PMI_RANK") })
        {
            if (env(size) is not { Length: > 0 } s) continue;
            if (!int.TryParse(s, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int n) || n < 1)
                throw new UserInputException($"{size}='{s}' is not a positive number of ranks; the MPI launcher's environment is broken.");
            int r = int.TryParse(env(rank), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int v) ? v : -1;
            if (r < 0 || r >= n) throw new UserInputException($"{rank}='{env(rank)}' is not a rank below {size}={n}; the MPI launcher's environment is broken.");
            return new MpiLaunch(r, n, size);
        }
        return null;
    }

    /// <summary>
    /// Joins the MPI job when a launcher started this process; null otherwise (single process, MPI is never loaded).
    /// Throws a one-line <see cref="UserInputException"/> saying how to install MPI when the library is missing.
    /// </summary>
    public static MpiCommunicator? FromEnvironment()
    {
        if (DetectLaunch(Environment.GetEnvironmentVariable) is null) return null;
        return new MpiCommunicator(MpiLibrary.Load(Environment.GetEnvironmentVariable(MpiLibrary.LibraryVariable)));
    }

    public void AllReduceSum(Span<float> buffer)
    {
        fixed (float* p = buffer)
            for (int i = 0; i < buffer.Length; i += MaxCount)
                _mpi.AllReduceInPlace(p + i, Math.Min(MaxCount, buffer.Length - i), _mpi.Float);
    }

    public void AllReduceSum(Span<double> buffer)
    {
        fixed (double* p = buffer)
            for (int i = 0; i < buffer.Length; i += MaxCount)
                _mpi.AllReduceInPlace(p + i, Math.Min(MaxCount, buffer.Length - i), _mpi.Double);
    }

    public void Broadcast(Span<byte> buffer, int root)
    {
        fixed (byte* p = buffer)
            for (int i = 0; i < buffer.Length; i += MaxCount)
                _mpi.Broadcast(p + i, Math.Min(MaxCount, buffer.Length - i), root);
    }

    public void Barrier() => _mpi.Barrier();

    public void Abort(int exitCode)
    {
        Console.Out.Flush();
        Console.Error.Flush();
        _mpi.Abort(exitCode);
        Environment.Exit(exitCode); // MPI_Abort does not return; this is for a library that does
    }

    /// <summary>MPI_Finalize: every rank must reach it (the job's normal end).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (!_mpi.IsFinalized) _mpi.FinalizeMpi();
    }
}
