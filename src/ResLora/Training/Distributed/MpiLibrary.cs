using System.Runtime.InteropServices;

namespace ResLora.Training.Distributed;

/// <summary>
/// A thin binding of the MPI C calls data-parallel training uses (MPI 3.1 standard, chapter 5 collectives), loaded at
/// run time so that nothing needs MPI unless a launcher started the process. MPI.NET 1.4.0 is compiled against
/// Microsoft's msmpi.dll (integer handles) and does not run on Open MPI, so this binds the library directly.
/// </summary>
/// <remarks>
/// Handles differ by implementation. Open MPI's <c>MPI_COMM_WORLD</c>, <c>MPI_FLOAT</c>, <c>MPI_SUM</c> are addresses of
/// exported globals (<c>ompi_mpi_comm_world</c>, ...), and <c>MPI_IN_PLACE</c> is <c>(void*)1</c> (mpi.h). MPICH and
/// its ABI family (Intel MPI, MVAPICH) use 32-bit integer constants from their mpi.h, and <c>MPI_IN_PLACE</c> is
/// <c>(void*)-1</c>; an integer handle passed in a 64-bit register is read correctly by the callee on x86-64 and arm64.
/// </remarks>
internal sealed unsafe class MpiLibrary
{
    /// <summary>Environment variable naming the MPI library file to load instead of the default names.</summary>
    public const string LibraryVariable = "RESLORA_MPI_LIBRARY";

    /// <summary>The one line a user sees when MPI is needed and missing.</summary>
    public const string InstallHint = "install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev; Fedora: dnf install openmpi) or set " + LibraryVariable + " to the path of libmpi.so";

    private static readonly string[] DefaultNames = { "libmpi.so.40", "libmpi.so.12", "libmpi.so", "libmpi.dylib" };

    private readonly nint _handle;
    private readonly delegate* unmanaged<int*, nint*, int, int*, int> _initThread;
    private readonly delegate* unmanaged<int*, int> _initialized;
    private readonly delegate* unmanaged<int*, int> _finalized;
    private readonly delegate* unmanaged<int> _finalize;
    private readonly delegate* unmanaged<nint, int*, int> _commRank;
    private readonly delegate* unmanaged<nint, int*, int> _commSize;
    private readonly delegate* unmanaged<nint, void*, int, nint, nint, nint, int> _allreduce;
    private readonly delegate* unmanaged<void*, int, nint, int, nint, int> _bcast;
    private readonly delegate* unmanaged<nint, int> _barrier;
    private readonly delegate* unmanaged<nint, int, int> _abort;

    /// <summary>The file that was loaded, for messages.</summary>
    public string Path { get; }
    public bool IsOpenMpi { get; }
    public nint CommWorld { get; }
    public nint Float { get; }
    public nint Double { get; }
    public nint Byte { get; }
    public nint Sum { get; }
    public nint InPlace { get; }

    private MpiLibrary(nint handle, string path)
    {
        _handle = handle;
        Path = path;
        _initThread = (delegate* unmanaged<int*, nint*, int, int*, int>)Export("MPI_Init_thread");
        _initialized = (delegate* unmanaged<int*, int>)Export("MPI_Initialized");
        _finalized = (delegate* unmanaged<int*, int>)Export("MPI_Finalized");
        _finalize = (delegate* unmanaged<int>)Export("MPI_Finalize");
        _commRank = (delegate* unmanaged<nint, int*, int>)Export("MPI_Comm_rank");
        _commSize = (delegate* unmanaged<nint, int*, int>)Export("MPI_Comm_size");
        _allreduce = (delegate* unmanaged<nint, void*, int, nint, nint, nint, int>)Export("MPI_Allreduce");
        _bcast = (delegate* unmanaged<void*, int, nint, int, nint, int>)Export("MPI_Bcast");
        _barrier = (delegate* unmanaged<nint, int>)Export("MPI_Barrier");
        _abort = (delegate* unmanaged<nint, int, int>)Export("MPI_Abort");
        if (NativeLibrary.TryGetExport(handle, "ompi_mpi_comm_world", out var world))
        {
            IsOpenMpi = true;
            CommWorld = world;
            Float = Export("ompi_mpi_float");
            Double = Export("ompi_mpi_double");
            Byte = Export("ompi_mpi_byte");
            Sum = Export("ompi_mpi_op_sum");
            InPlace = 1;
        }
        else
        {
            // MPICH's mpi.h: MPI_COMM_WORLD 0x44000000, MPI_FLOAT 0x4c00040a, MPI_DOUBLE 0x4c00080b, MPI_BYTE 0x4c00010d, MPI_SUM 0x58000003.
            CommWorld = 0x44000000;
            Float = 0x4c00040a;
            Double = 0x4c00080b;
            Byte = 0x4c00010d;
            Sum = 0x58000003;
            InPlace = -1;
        }
    }

    private nint Export(string name) => NativeLibrary.TryGetExport(_handle, name, out var p) ? p
        : throw new UserInputException($"{Path}: the MPI library exports no {name}; it is not an MPI 3 library. {InstallHint}.");

    /// <summary>
    /// Loads the MPI library: the file <see cref="LibraryVariable"/> names (only that one, never a silent fallback), or the
    /// first of the usual names the loader finds. Throws a <see cref="UserInputException"/> with the install hint.
    /// </summary>
    public static MpiLibrary Load(string? overridePath)
    {
        var names = string.IsNullOrWhiteSpace(overridePath) ? DefaultNames : new[] { overridePath };
        foreach (var name in names)
        {
            // Open MPI loads its transport components as plug-ins that resolve symbols in libmpi itself, so the library
            // must be opened with global symbol visibility (RTLD_GLOBAL), which NativeLibrary.Load does not give.
            nint h = OpenGlobal(name);
            if (h == 0 && !NativeLibrary.TryLoad(name, out h)) continue;
            return new MpiLibrary(h, name);
        }
        string what = string.IsNullOrWhiteSpace(overridePath) ? $"no MPI library ({string.Join(", ", DefaultNames)}) was found" : $"{LibraryVariable}={overridePath} could not be loaded";
        throw new UserInputException($"MPI launch detected but {what}: {InstallHint}.");
    }

    private static nint OpenGlobal(string name)
    {
        if (!OperatingSystem.IsLinux()) return 0;
        const int RtldNow = 0x002, RtldGlobal = 0x100;
        try { return DlOpen(name, RtldNow | RtldGlobal); }
        catch (DllNotFoundException) { return 0; }
        catch (EntryPointNotFoundException) { return 0; }
    }

    [DllImport("libc.so.6", EntryPoint = "dlopen", CharSet = CharSet.Ansi, BestFitMapping = false, ThrowOnUnmappableChar = true)]
    private static extern nint DlOpen(string file, int mode);

    private void Check(int rc, string call)
    {
        if (rc != 0) throw new InvalidOperationException($"{call} failed with MPI error code {rc} ({Path}).");
    }

    /// <summary>MPI_Init_thread with MPI_THREAD_SERIALIZED (2): calls come from one thread at a time, not always the same one.</summary>
    public void Init()
    {
        int flag;
        Check(_initialized(&flag), "MPI_Initialized");
        if (flag != 0) return;
        int provided;
        Check(_initThread(null, null, 2, &provided), "MPI_Init_thread");
    }

    public bool IsFinalized
    {
        get
        {
            int flag;
            Check(_finalized(&flag), "MPI_Finalized");
            return flag != 0;
        }
    }

    public void FinalizeMpi() => Check(_finalize(), "MPI_Finalize");

    public int Rank()
    {
        int r;
        Check(_commRank(CommWorld, &r), "MPI_Comm_rank");
        return r;
    }

    public int Size()
    {
        int s;
        Check(_commSize(CommWorld, &s), "MPI_Comm_size");
        return s;
    }

    public void AllReduceInPlace(void* buffer, int count, nint datatype) =>
        Check(_allreduce(InPlace, buffer, count, datatype, Sum, CommWorld), "MPI_Allreduce");

    public void Broadcast(void* buffer, int count, int root) => Check(_bcast(buffer, count, Byte, root, CommWorld), "MPI_Bcast");

    public void Barrier() => Check(_barrier(CommWorld), "MPI_Barrier");

    public void Abort(int code) => _abort(CommWorld, code);
}
