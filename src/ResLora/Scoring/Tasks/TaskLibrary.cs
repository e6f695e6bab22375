namespace ResLora.Scoring.Tasks;

/// <summary>
/// The evaluation tasks: the built-in ones (embedded <c>Scoring/Tasks/Builtin/*.json</c>) by name, or a user's task file
/// by path. Adding a task is adding one JSON file (<c>docs/evaluation-tasks.md</c>).
/// </summary>
public static class TaskLibrary
{
    private const string Prefix = "ResLora.Tasks.";

    /// <summary>
    /// The folder of the LLM-Adapters test sets that the built-in tasks' <c>data</c> paths are relative to, as the
    /// flag that points at it is spelled in messages.
    /// </summary>
    public const string DataFlag = "--task-data";

    /// <summary>The built-in task names (file names without <c>.json</c>), sorted.</summary>
    public static IReadOnlyList<string> Names { get; } = typeof(TaskLibrary).Assembly.GetManifestResourceNames()
        .Where(n => n.StartsWith(Prefix, StringComparison.Ordinal) && n.EndsWith(".json", StringComparison.Ordinal))
        .Select(n => n[Prefix.Length..^".json".Length])
        .OrderBy(n => n, StringComparer.Ordinal)
        .ToList();

    /// <summary>
    /// The task <paramref name="nameOrPath"/>: a built-in name (case-insensitive), or the path of a task file (anything
    /// that exists as a file, or ends in <c>.json</c>). An unknown name lists the built-in ones.
    /// </summary>
    public static EvalTaskSpec Load(string nameOrPath)
    {
        ArgumentNullException.ThrowIfNull(nameOrPath);
        string key = nameOrPath.Trim();
        if (File.Exists(key) || key.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
        {
            if (!File.Exists(key))
                throw new UserInputException($"task file {key} does not exist; give a built-in task ({string.Join(", ", Names)}) or the path of a task .json file.");
            return TaskFileReader.Parse(File.ReadAllText(key), key);
        }
        string? found = Names.FirstOrDefault(n => string.Equals(n, key, StringComparison.OrdinalIgnoreCase))
            ?? throw new UserInputException($"task '{nameOrPath}' is not known; built-in tasks: {string.Join(", ", Names)}; or give the path of a task .json file (docs/evaluation-tasks.md).");
        using var stream = typeof(TaskLibrary).Assembly.GetManifestResourceStream(Prefix + found + ".json")!;
        using var reader = new StreamReader(stream);
        return TaskFileReader.Parse(reader.ReadToEnd(), $"builtin task {found}");
    }

    /// <summary>
    /// The data file of <paramref name="task"/>: <paramref name="dataFile"/> when given, else the task's <c>data</c>
    /// path under <paramref name="dataRoot"/> (for a task read from a file and no data root: under the task file's folder). A file that is not there is an error saying where it looked.
    /// </summary>
    public static string ResolveDataFile(EvalTaskSpec task, string? dataRoot, string? dataFile)
    {
        ArgumentNullException.ThrowIfNull(task);
        if (dataFile is not null)
        {
            if (!File.Exists(dataFile))
                throw new UserInputException($"task {task.Name}: data file {dataFile} does not exist; give the test file of the task (a JSON array or JSON Lines of records).");
            return dataFile;
        }
        // A user's task file finds its data beside itself when no data folder is given.
        if (dataRoot is null && File.Exists(task.Source)) dataRoot = Path.GetDirectoryName(Path.GetFullPath(task.Source));
        if (dataRoot is null)
            throw new UserInputException($"task {task.Name} reads its records from '{task.Data}' under the data folder, and none was given; {DataFlag} DIR points at the LLM-Adapters test sets (the folder holding ARC-Easy/, boolq/, gsm8k/, ...).");
        string path = Path.Combine(dataRoot, task.Data);
        if (!File.Exists(path))
            throw new UserInputException(Directory.Exists(dataRoot)
                ? $"task {task.Name}: no data file at {path} (its 'data' is '{task.Data}' under {DataFlag} {dataRoot}); {DataFlag} DIR points at the LLM-Adapters test sets (the folder holding ARC-Easy/, boolq/, gsm8k/, ...)."
                : $"task {task.Name}: the data folder {dataRoot} does not exist (looked for {path}); {DataFlag} DIR points at the LLM-Adapters test sets (the folder holding ARC-Easy/, boolq/, gsm8k/, ...).");
        return path;
    }
}
