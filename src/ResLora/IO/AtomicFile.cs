using System.Globalization;

namespace ResLora.IO;

/// <summary>Files written whole or not at all: a temp file in the same folder, flushed, then renamed over the target.</summary>
public static class AtomicFile
{
    public static void WriteAllText(string path, string text) => WriteAllBytes(path, System.Text.Encoding.UTF8.GetBytes(text));

    public static void WriteAllBytes(string path, byte[] bytes) => Write(path, s => s.Write(bytes));

    /// <summary>
    /// Writes <paramref name="path"/> whole or not at all: <paramref name="write"/> fills a temporary file beside it
    /// (<see cref="TempName"/>), which is flushed to disk and then renamed over the target; the folder is flushed so the
    /// rename lasts. A crash leaves the old file or the new one, and at most a temporary file beside it.
    /// </summary>
    public static void Write(string path, Action<Stream> write)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        string tmp = TempName(path);
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write))
            {
                write(fs);
                Durable.Flush(fs);
            }
            Durable.MoveFile(tmp, path);
            Durable.FlushFolder(dir);
        }
        catch (Exception e) when (!Durable.IsCrash(e))
        {
            if (File.Exists(tmp)) File.Delete(tmp);
            throw;
        }
    }

    /// <summary>
    /// The temporary sibling of <paramref name="path"/> (a file or a folder): <c>.NAME.tmp-GUID</c>, hidden, in the same
    /// folder (so the rename is atomic), and recognisable by <see cref="RemoveLeftovers"/> if a kill leaves it behind.
    /// </summary>
    public static string TempName(string path)
    {
        string full = Path.GetFullPath(path).TrimEnd(Path.DirectorySeparatorChar);
        return Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.tmp-{Guid.NewGuid():N}");
    }

    /// <summary>
    /// What a killed writer leaves: the temporary files and folders of this class, <see cref="AtomicFolder"/> and the
    /// training checkpoint (<c>.NAME.tmp-GUID</c>, also with an extension, as the loss plot's), the pre-rename copies an
    /// earlier version kept (<c>.NAME.old-GUID</c>), the safetensors writer's earlier temp name (<c>.NAME.XXXXXXXX.tmp</c>)
    /// and the write probe of an earlier version (<c>.write-test-GUID</c>). Nothing else matches.
    /// </summary>
    private static readonly System.Text.RegularExpressions.Regex Leftover = new(
        @"^\.(.+\.(tmp|old)-[0-9a-f]{32}(\.[A-Za-z0-9]+)?|.+\.[0-9a-f]{8}\.tmp|write-test-[0-9a-f]{32})$",
        System.Text.RegularExpressions.RegexOptions.CultureInvariant);

    /// <summary>Whether <paramref name="name"/> (a file or folder name) is a leftover of an interrupted atomic write.</summary>
    public static bool IsLeftover(string name) => Leftover.IsMatch(name);

    /// <summary>
    /// Removes the leftovers of interrupted atomic writes (<see cref="IsLeftover"/>) directly in <paramref name="dir"/>;
    /// returns how many. Call only while no writer is active there (a run holds its folder's <see cref="RunLock"/>).
    /// </summary>
    public static int RemoveLeftovers(string dir)
    {
        if (!Directory.Exists(dir)) return 0;
        int n = 0;
        foreach (var entry in new DirectoryInfo(dir).EnumerateFileSystemInfos())
        {
            if (!IsLeftover(entry.Name)) continue;
            if (entry is DirectoryInfo d && (d.Attributes & FileAttributes.ReparsePoint) == 0) d.Delete(recursive: true);
            else entry.Delete();
            n++;
        }
        return n;
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
    /// The one rule for where a verb may write a folder, checked before anything is read or written: not a filesystem
    /// root, not an existing file, and not <paramref name="modelDir"/> (the input model folder, given by
    /// <paramref name="modelFlag"/>) or a folder inside it. Each refusal names <paramref name="flag"/> and the fix.
    /// </summary>
    public static void CheckTarget(string dir, string flag = "--out", string? modelDir = null, string modelFlag = "--model")
    {
        if (string.IsNullOrWhiteSpace(dir)) throw new UserInputException($"{flag} is empty; give the folder to write.");
        string full = Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar);
        if (Path.GetDirectoryName(full) is null || full.Length == 0)
            throw new UserInputException($"{flag} {dir}: cannot write into a filesystem root; choose a folder under it.");
        if (File.Exists(full))
            throw new UserInputException($"{flag} {dir} is a file, not a folder; choose a folder (a new one, or an earlier run's).");
        if (modelDir is null) return;
        string model = Path.GetFullPath(modelDir).TrimEnd(Path.DirectorySeparatorChar);
        if (full == model)
            throw new UserInputException($"{flag} {dir} is the model folder ({modelFlag}); writing there would mix the output with the model's files. Choose a folder outside it.");
        if (full.StartsWith(model + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw new UserInputException($"{flag} {dir} is inside the model folder {modelDir} ({modelFlag}); writing there changes the model folder. Choose a folder outside it.");
    }

    /// <summary>
    /// Fails at once, naming <paramref name="flag"/>, when <see cref="Write"/> into <paramref name="dir"/> would fail at the
    /// end: the folder is not empty, or its nearest existing ancestor cannot hold a new folder. Call before long work.
    /// </summary>
    public static void CheckWritable(string dir, string flag = "--out", string? modelDir = null)
    {
        CheckTarget(dir, flag, modelDir);
        string full = Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar);
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any())
            throw new IOException($"{flag} {dir} exists and is not empty; choose a new folder (finished output is never overwritten).");
        string? existing = Path.GetDirectoryName(full) ?? throw new UserInputException($"{flag} {dir}: cannot write into a filesystem root.");
        while (existing is not null && !Directory.Exists(existing)) existing = Path.GetDirectoryName(existing);
        if (existing is null) return;
        string probe = AtomicFile.TempName(Path.Combine(existing, "write-probe"));
        try
        {
            Directory.CreateDirectory(probe);
            Directory.Delete(probe);
        }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException)
        {
            throw new IOException($"{flag} {dir}: cannot write there ({e.Message}); choose a writable folder.", e);
        }
    }

    /// <summary>
    /// Runs <paramref name="write"/> on an empty temporary folder next to <paramref name="dir"/>, copies the
    /// <see cref="CompanionFiles"/> that exist in <paramref name="companionsFrom"/> (when given and not written already),
    /// then moves the folder into place. <paramref name="dir"/> must not exist or be empty: finished output is never
    /// overwritten. On any failure the temporary folder is removed and <paramref name="dir"/> is untouched.
    /// </summary>
    public static void Write(string dir, Action<string> write, string? companionsFrom = null, string flag = "--out")
    {
        CheckTarget(dir, flag);
        string full = Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar);
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any())
            throw new IOException($"{flag} {dir} exists and is not empty; choose a new folder (finished output is never overwritten).");
        string parent = Path.GetDirectoryName(full) ?? throw new UserInputException($"{flag} {dir}: cannot write into a filesystem root.");
        try
        {
            Directory.CreateDirectory(parent);
        }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException)
        {
            throw new IOException($"{flag} {dir}: cannot create its parent folder ({e.Message}); choose a writable folder.", e);
        }
        string tmp = AtomicFile.TempName(full);
        try
        {
            Directory.CreateDirectory(tmp);
        }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException)
        {
            throw new IOException($"{flag} {dir}: cannot write there ({e.Message}); choose a writable folder.", e);
        }
        try
        {
            write(tmp);
            if (companionsFrom is not null) CopyCompanions(companionsFrom, tmp);
            Durable.FlushFolder(tmp);
            if (Directory.Exists(full)) Directory.Delete(full);
            Durable.MoveFolder(tmp, full);
            Durable.FlushFolder(parent);
        }
        catch (Exception e) when (!Durable.IsCrash(e))
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
            throw;
        }
    }

    /// <summary>Copies the <see cref="CompanionFiles"/> present in <paramref name="from"/> into <paramref name="to"/> (existing files are kept).</summary>
    public static void CopyCompanions(string from, string to)
    {
        foreach (var name in CompanionFiles)
        {
            string src = Path.Combine(from, name), dst = Path.Combine(to, name);
            if (!File.Exists(src) || File.Exists(dst)) continue;
            using var source = File.OpenRead(src);
            using var copy = new FileStream(dst, FileMode.CreateNew, FileAccess.Write);
            source.CopyTo(copy);
            Durable.Flush(copy); // before the folder is renamed into place
        }
    }
}

/// <summary>
/// An exclusive lock on a run folder, held for the run's lifetime: a second run on the same folder is refused at once
/// with the holder's process id, instead of both writing interleaved metrics. The lock is the OS's (an open file with
/// no sharing); it ends with the process, so a killed run never leaves the folder locked. A folder the lock created is
/// removed again on release when nothing was written into it (a run refused by a late check leaves no empty --out).
/// </summary>
public sealed class RunLock : IDisposable
{
    public const string FileName = ".reslora.lock";
    private const string OwnerFile = ".reslora.lock.owner";

    private readonly FileStream _stream;
    private readonly string _dir;
    private readonly bool _created;

    private RunLock(FileStream stream, string dir, bool created)
    {
        _stream = stream;
        _dir = dir;
        _created = created;
    }

    /// <summary>Takes the lock on <paramref name="dir"/> (created if needed), or refuses naming the run that holds it.</summary>
    public static RunLock Acquire(string dir, string flag = "--out")
    {
        bool created = !Directory.Exists(dir);
        string path = Path.Combine(dir, FileName);
        FileStream stream;
        try
        {
            Directory.CreateDirectory(dir);
            stream = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException e) when (File.Exists(path))
        {
            string owner = File.Exists(Path.Combine(dir, OwnerFile)) ? File.ReadAllText(Path.Combine(dir, OwnerFile)).Trim() : "another process";
            throw new UserInputException($"{flag} {dir} is in use by another run ({owner}); wait for it to finish, or choose another {flag} folder.", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            if (created) RemoveIfEmpty(dir);
            throw new IOException($"{flag} {dir}: cannot write there ({e.Message}); choose a writable folder.", e);
        }
        var held = new RunLock(stream, dir, created);
        try
        {
            AtomicFile.WriteAllText(Path.Combine(dir, OwnerFile), $"pid {Environment.ProcessId}, started {DateTime.UtcNow:u}");
        }
        catch
        {
            held.Dispose();
            throw;
        }
        return held;
    }

    private static void RemoveIfEmpty(string dir)
    {
        try
        {
            if (Directory.Exists(dir) && !Directory.EnumerateFileSystemEntries(dir).Any()) Directory.Delete(dir);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
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
        if (_created) RemoveIfEmpty(_dir);
    }
}
