using System.Runtime.InteropServices;

namespace ResLora.IO;

/// <summary>
/// The file-system steps whose order makes a write survive a crash — flush a file's data to disk, rename, flush a
/// folder's entries (so a rename survives a power loss too), remove a replaced folder. Every atomic writer
/// (<see cref="AtomicFile"/>, <see cref="AtomicFolder"/>, the training checkpoint) takes these steps through here, so a
/// test can stop a run at any one of them (<see cref="FaultHook"/>) and check what a kill at that instant leaves.
/// </summary>
public static partial class Durable
{
    /// <summary>
    /// Test hook (per thread): called before each step with its kind (<c>fsync</c>, <c>rename</c>, <c>delete</c>) and path.
    /// Throwing a <see cref="CrashPoint"/> from it stands for the process dying there: writers skip their clean-up for it.
    /// </summary>
    [ThreadStatic] internal static Action<string, string>? FaultHook;

    /// <summary>Flushes a file's data to disk (fsync).</summary>
    public static void Flush(FileStream fs)
    {
        FaultHook?.Invoke("fsync", fs.Name);
        fs.Flush(flushToDisk: true);
    }

    /// <summary>Renames a file over <paramref name="to"/> (atomic within a folder).</summary>
    public static void MoveFile(string from, string to)
    {
        FaultHook?.Invoke("rename", to);
        File.Move(from, to, overwrite: true);
    }

    /// <summary>Renames a folder to <paramref name="to"/>, which must not exist (atomic within a folder).</summary>
    public static void MoveFolder(string from, string to)
    {
        FaultHook?.Invoke("rename", to);
        Directory.Move(from, to);
    }

    /// <summary>Removes a folder and everything in it.</summary>
    public static void DeleteFolder(string dir)
    {
        FaultHook?.Invoke("delete", dir);
        Directory.Delete(dir, recursive: true);
    }

    /// <summary>
    /// Flushes a folder's entries to disk (fsync of the folder on Linux and macOS), so that the renames into it survive a
    /// power loss; elsewhere, or where the folder cannot be opened, nothing more than the rename is done.
    /// </summary>
    public static void FlushFolder(string dir)
    {
        FaultHook?.Invoke("fsync", dir);
        if (OperatingSystem.IsWindows()) return;
        try
        {
            int fd = Open(dir, 0); // O_RDONLY: a folder opens read-only on every Unix
            if (fd < 0) return;
            try
            {
                if (Fsync(fd) != 0) throw new IOException($"{dir}: fsync failed (errno {Marshal.GetLastPInvokeError()}); the disk may be failing or full.");
            }
            finally
            {
                _ = Close(fd);
            }
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
        }
    }

    /// <summary>Whether <paramref name="e"/> is a simulated crash, which clean-up code must let pass untouched.</summary>
    internal static bool IsCrash(Exception e) => e is CrashPoint;

    [LibraryImport("libc", EntryPoint = "open", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int Fsync(int fd);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);
}

/// <summary>
/// Thrown only by a <see cref="Durable.FaultHook"/>: the process "dies" at that step. Writers do not clean up after it
/// (a killed process cleans nothing up), so what it leaves is what a real kill there would leave.
/// </summary>
internal sealed class CrashPoint(string message) : Exception(message);
