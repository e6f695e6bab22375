namespace ResLora.Tests.Scoring.Tasks;

/// <summary>
/// The LLM-Adapters test sets (<c>../shared/data/llm-adapters</c> beside the repository, or <c>RESLORA_TASK_DATA</c>):
/// found by walking up from the test assembly. Tests that read them skip, saying why, where the folder is absent.
/// </summary>
internal static class TaskDataFolder
{
    public const string SkipReason =
        "the LLM-Adapters test sets are not here: set RESLORA_TASK_DATA to the folder holding ARC-Easy/, boolq/, ... (shared/data/llm-adapters).";

    public static string? Path { get; } = Find();

    private static string? Find()
    {
        string? env = Environment.GetEnvironmentVariable("RESLORA_TASK_DATA");
        if (!string.IsNullOrEmpty(env)) return Directory.Exists(env) ? env : null;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = System.IO.Path.Combine(dir.FullName, "shared", "data", "llm-adapters");
            if (File.Exists(System.IO.Path.Combine(candidate, "ARC-Easy", "test.json"))) return candidate;
        }
        return null;
    }
}

/// <summary>A fact that needs the LLM-Adapters test sets; skipped with the reason when they are absent.</summary>
public sealed class TaskDataFactAttribute : FactAttribute
{
    public TaskDataFactAttribute()
    {
        if (TaskDataFolder.Path is null) Skip = TaskDataFolder.SkipReason;
    }
}

/// <summary>A theory that needs the LLM-Adapters test sets; skipped with the reason when they are absent.</summary>
public sealed class TaskDataTheoryAttribute : TheoryAttribute
{
    public TaskDataTheoryAttribute()
    {
        if (TaskDataFolder.Path is null) Skip = TaskDataFolder.SkipReason;
    }
}
