using System.Globalization;

namespace ResLora.IO;

/// <summary>Files written whole or not at all: a temp file in the same folder, flushed, then renamed over the target.</summary>
public static class AtomicFile
{
    public static void WriteAllText(string path, string text) => WriteAllBytes(path, System.Text.Encoding.UTF8.GetBytes(text));

    public static void WriteAllBytes(string path, byte[] bytes)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir, $".{Path.GetFileName(path)}.tmp-{Guid.NewGuid():N}");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew))
            {
                fs.Write(bytes);
                fs.Flush(flushToDisk: true);
            }
            File.Move(tmp, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }

    public static string Invariant(double d) => d.ToString("R", CultureInfo.InvariantCulture);
}

/// <summary>
/// A folder that appears whole or not at all: everything is written into a hidden temporary sibling, which is then
/// renamed into place. Used for every model folder the tool writes (merge, quantize, rotate, the demo's base model).
/// </summary>
public static class AtomicFolder
{
    /// <summary>
    /// The files beside the weights that a Hugging Face model folder needs to be used: tokenizer, its configuration
    /// and generation defaults. Copied by every verb that writes a model folder from another.
    /// </summary>
    public static readonly IReadOnlyList<string> CompanionFiles = new[]
    {
        "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
        "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
    };

    /// <summary>
    /// Runs <paramref name="write"/> on an empty temporary folder next to <paramref name="dir"/>, copies the
    /// <see cref="CompanionFiles"/> that exist in <paramref name="companionsFrom"/> (when given and not written already),
    /// then moves the folder into place. <paramref name="dir"/> must not exist or be empty: finished output is never
    /// overwritten. On any failure the temporary folder is removed and <paramref name="dir"/> is untouched.
    /// </summary>
    public static void Write(string dir, Action<string> write, string? companionsFrom = null, string flag = "--out")
    {
        string full = Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar);
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any())
            throw new IOException($"{flag} {dir} exists and is not empty; choose a new folder (finished output is never overwritten).");
        string parent = Path.GetDirectoryName(full) ?? throw new UserInputException($"{flag} {dir}: cannot write into a filesystem root.");
        Directory.CreateDirectory(parent);
        string tmp = Path.Combine(parent, $".{Path.GetFileName(full)}.tmp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(tmp);
        try
        {
            write(tmp);
            if (companionsFrom is not null) CopyCompanions(companionsFrom, tmp);
            if (Directory.Exists(full)) Directory.Delete(full);
            Directory.Move(tmp, full);
        }
        finally
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        }
    }

    /// <summary>Copies the <see cref="CompanionFiles"/> present in <paramref name="from"/> into <paramref name="to"/> (existing files are kept).</summary>
    public static void CopyCompanions(string from, string to)
    {
        foreach (var name in CompanionFiles)
        {
            string src = Path.Combine(from, name), dst = Path.Combine(to, name);
            if (File.Exists(src) && !File.Exists(dst)) File.Copy(src, dst);
        }
    }
}

/// <summary>
/// An exclusive lock on a run folder, held for the run's lifetime: a second run on the same folder is refused at once
/// with the holder's process id, instead of both writing interleaved metrics. The lock is the OS's (an open file with
/// no sharing); it ends with the process, so a killed run never leaves the folder locked.
/// </summary>
public sealed class RunLock : IDisposable
{
    public const string FileName = ".reslora.lock";
    private const string OwnerFile = ".reslora.lock.owner";

    private readonly FileStream _stream;
    private readonly string _dir;

    private RunLock(FileStream stream, string dir)
    {
        _stream = stream;
        _dir = dir;
    }

    /// <summary>Takes the lock on <paramref name="dir"/> (created if needed), or refuses naming the run that holds it.</summary>
    public static RunLock Acquire(string dir, string flag = "--out")
    {
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, FileName);
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException e)
        {
            string owner = File.Exists(Path.Combine(dir, OwnerFile)) ? File.ReadAllText(Path.Combine(dir, OwnerFile)).Trim() : "another process";
            throw new UserInputException($"{flag} {dir} is in use by another run ({owner}); wait for it to finish, or choose another {flag} folder.", e);
        }
        AtomicFile.WriteAllText(Path.Combine(dir, OwnerFile), $"pid {Environment.ProcessId}, started {DateTime.UtcNow:u}");
        return new RunLock(stream, dir);
    }

    public void Dispose()
    {
        _stream.Dispose();
        foreach (var f in new[] { OwnerFile, FileName })
        {
            try { File.Delete(Path.Combine(_dir, f)); }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
    }
}
