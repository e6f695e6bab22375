using ResLora.Adapters;

namespace ResLora.Pipelines.Serving;

/// <summary>
/// The one folder a server loads adapters from at run time (<c>serve --adapter-root DIR</c>): a requested path is resolved
/// to its real path (every symbolic link followed, <c>..</c> applied after the link before it, as the operating system
/// opens it) and refused unless it lies inside the root's real path, so neither <c>../</c>, an absolute path elsewhere nor
/// a link that points out reaches any other file. The adapter's two files are checked the same way, and the folder is then
/// read through its real path, never the path as given.
/// </summary>
internal sealed class AdapterRoot
{
    /// <summary>Most symbolic links followed while resolving one path (Linux's own limit is 40).</summary>
    private const int MaxLinks = 40;

    private static readonly StringComparison PathComparison = OperatingSystem.IsWindows() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;

    /// <summary>Takes <paramref name="dir"/> (an existing folder) as the root; refused naming <c>--adapter-root</c> otherwise.</summary>
    public AdapterRoot(string dir)
    {
        if (string.IsNullOrWhiteSpace(dir)) throw new UserInputException("--adapter-root is empty; give the folder that holds the adapters the server may load at run time.");
        string real = RealPath(dir);
        if (!Directory.Exists(real)) throw new UserInputException($"--adapter-root {dir}: no such folder; create it, or give the folder that holds the adapters the server may load at run time.");
        Path = real;
    }

    /// <summary>The root's real path (no link, no <c>..</c>).</summary>
    public string Path { get; }

    /// <summary>
    /// The real path of the adapter folder <paramref name="requested"/> names (relative paths are taken from the root),
    /// checked to be inside the root, to exist and to hold <c>adapter_config.json</c>.
    /// </summary>
    /// <exception cref="ServingException">Outside the root (<see cref="ServingErrorKind.Forbidden"/>), missing
    /// (<see cref="ServingErrorKind.NotFound"/>), or no adapter folder (<see cref="ServingErrorKind.InvalidRequest"/>).</exception>
    public string Resolve(string requested)
    {
        const string param = "lora_path";
        if (string.IsNullOrWhiteSpace(requested)) throw new ServingException(ServingErrorKind.InvalidRequest, "lora_path is empty; give an adapter folder under the server's --adapter-root.", param);
        if (requested.Contains('\0', StringComparison.Ordinal)) throw new ServingException(ServingErrorKind.InvalidRequest, "lora_path holds a NUL character; give an adapter folder under the server's --adapter-root.", param);
        string candidate = System.IO.Path.IsPathRooted(requested) ? requested : System.IO.Path.Combine(Path, requested);
        string real;
        try
        {
            real = RealPath(candidate);
        }
        catch (IOException e)
        {
            throw new ServingException(ServingErrorKind.InvalidRequest, $"lora_path '{requested}' could not be resolved: {e.Message}", param);
        }
        // Outside first, so that nothing is said about what exists outside the root.
        if (!Inside(real))
            throw new ServingException(ServingErrorKind.Forbidden, $"lora_path '{requested}' resolves to a folder outside the adapter root (through '..', an absolute path or a symbolic link); this server loads adapters only from under its --adapter-root {Path}.", param);
        if (!Directory.Exists(real))
            throw new ServingException(ServingErrorKind.NotFound, $"lora_path '{requested}': no such folder under the adapter root {Path}; copy the adapter folder there first.", param);
        foreach (var file in new[] { AdapterFolder.ConfigFileName, AdapterFolder.WeightsFileName })
        {
            string path = System.IO.Path.Combine(real, file);
            if (!File.Exists(path) && new FileInfo(path).LinkTarget is null)
            {
                if (file == AdapterFolder.ConfigFileName)
                    throw new ServingException(ServingErrorKind.InvalidRequest, $"lora_path '{requested}' is not an adapter folder: it has no {AdapterFolder.ConfigFileName} (a PEFT adapter folder holds {AdapterFolder.ConfigFileName} and {AdapterFolder.WeightsFileName}).", param);
                continue; // the folder reader names the missing weights
            }
            if (!Inside(RealPath(path)))
                throw new ServingException(ServingErrorKind.Forbidden, $"lora_path '{requested}': its {file} is a symbolic link to a file outside the adapter root; this server reads only files under its --adapter-root {Path}.", param);
        }
        return real;
    }

    /// <summary>Whether a real path is the root or lies under it.</summary>
    private bool Inside(string real)
    {
        string root = System.IO.Path.TrimEndingDirectorySeparator(Path);
        string path = System.IO.Path.TrimEndingDirectorySeparator(real);
        return path.Equals(root, PathComparison)
            || (path.StartsWith(root, PathComparison) && path.Length > root.Length && IsSeparator(path[root.Length]))
            || (root.Length > 0 && IsSeparator(root[^1]) && path.StartsWith(root, PathComparison)); // the root is the file system's root
    }

    private static bool IsSeparator(char c) => c == System.IO.Path.DirectorySeparatorChar || c == System.IO.Path.AltDirectorySeparatorChar;

    /// <summary>
    /// The path with every symbolic link replaced by its target and <c>.</c>/<c>..</c> applied component by component
    /// (POSIX realpath: <c>link/..</c> is the parent of the link's target). Components that do not exist are kept as written.
    /// </summary>
    internal static string RealPath(string path)
    {
        int links = 0;
        return Walk(System.IO.Path.IsPathRooted(path) ? path : System.IO.Path.Combine(Directory.GetCurrentDirectory(), path), ref links);
    }

    private static string Walk(string path, ref int links)
    {
        string top = System.IO.Path.GetPathRoot(path)!;
        string current = top;
        var parts = path[top.Length..].Split(new[] { System.IO.Path.DirectorySeparatorChar, System.IO.Path.AltDirectorySeparatorChar }, StringSplitOptions.RemoveEmptyEntries);
        foreach (var part in parts)
        {
            if (part == ".") continue;
            if (part == "..")
            {
                current = System.IO.Path.GetDirectoryName(current) ?? top;
                continue;
            }
            string next = System.IO.Path.Combine(current, part);
            FileSystemInfo info = Directory.Exists(next) ? new DirectoryInfo(next) : new FileInfo(next);
            if (info.LinkTarget is { } target)
            {
                if (++links > MaxLinks) throw new IOException($"more than {MaxLinks} symbolic links (a loop?)");
                next = Walk(System.IO.Path.IsPathRooted(target) ? target : System.IO.Path.Combine(current, target), ref links);
            }
            current = next;
        }
        return current;
    }
}
