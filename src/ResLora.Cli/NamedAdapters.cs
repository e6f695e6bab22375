namespace ResLora.Cli;

/// <summary>
/// The values of a repeatable <c>--adapter</c>: one folder (the classic single adapter), or adapters under names
/// (<c>NAME=DIR</c>; a bare DIR among several is named after its folder) that records pick with their "adapter" field.
/// </summary>
internal sealed record NamedAdapters(string? Single, IReadOnlyList<(string Name, string Dir)> Named)
{
    /// <summary>Whether adapters are given under names (several, or NAME=DIR).</summary>
    public bool IsNamed => Named.Count > 0;

    public static NamedAdapters Parse(string[]? values, bool forceNamed = false)
    {
        values ??= Array.Empty<string>();
        bool named = forceNamed || values.Length > 1 || values.Any(v => v.Contains('=', StringComparison.Ordinal) && !Directory.Exists(v));
        if (!named) return new NamedAdapters(values.Length == 1 ? values[0] : null, Array.Empty<(string, string)>());
        var list = new List<(string Name, string Dir)>();
        foreach (var v in values)
        {
            int eq = Directory.Exists(v) ? -1 : v.IndexOf('=', StringComparison.Ordinal);
            string name = eq > 0 ? v[..eq] : Path.GetFileName(Path.TrimEndingDirectorySeparator(v));
            string dir = eq > 0 ? v[(eq + 1)..] : v;
            if (eq == 0 || name.Length == 0 || dir.Length == 0)
                throw new UserInputException($"--adapter '{v}': give NAME=DIR (e.g. --adapter support=./support-adapter) or a folder.");
            if (list.Any(a => a.Name == name))
                throw new UserInputException($"--adapter: the name '{name}' is given twice; name each adapter once (NAME=DIR).");
            list.Add((name, dir));
        }
        return new NamedAdapters(null, list);
    }
}
