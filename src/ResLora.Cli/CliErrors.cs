namespace ResLora.Cli;

/// <summary>
/// How failures reach the user. Bad input (<see cref="UserInputException"/>) and the environment's file errors (missing,
/// unreadable or full) are one line on stderr and exit code 2. Anything else is a bug: one line that says so, the full
/// trace written to a file whose path is printed, exit code 70 (EX_SOFTWARE).
/// </summary>
public static class CliErrors
{
    public const int UserErrorExit = 2;
    public const int BugExit = 70;

    /// <summary>
    /// The first line of a libtorch (or .NET) allocation failure anywhere in the exception chain, or null: a size the
    /// user asked for (a rank, a batch, a model) that this machine cannot hold is not a bug.
    /// </summary>
    public static string? NativeAllocationFailure(Exception e)
    {
        for (Exception? x = e; x is not null; x = x.InnerException)
        {
            if (x is OutOfMemoryException) return x.Message;
            if (x is System.Runtime.InteropServices.ExternalException
                && (x.Message.Contains("allocate", StringComparison.OrdinalIgnoreCase) || x.Message.Contains("out of memory", StringComparison.OrdinalIgnoreCase)))
                return x.Message.Split('\n')[0].Trim();
        }
        return null;
    }

    public static bool IsUserError(Exception e) =>
        e is UserInputException or FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException
            or PathTooLongException || (e is IOException && e.GetType() == typeof(IOException));

    /// <summary>Runs a verb body and turns any escaping exception into its message and exit code.</summary>
    public static int Guard(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e)
        {
            return Report(e);
        }
    }

    public static int Report(Exception e)
    {
        if (IsUserError(e))
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return UserErrorExit;
        }
        if (NativeAllocationFailure(e) is { } alloc)
        {
            Console.Error.WriteLine($"error: the tensors this needs do not fit in memory (libtorch: {alloc}). The model, --batch-size, --seq-len or --rank is too large for this machine; lower them, or use --dtype bfloat16.");
            return UserErrorExit;
        }
        string trace = Path.Combine(Path.GetTempPath(), $"reslora-crash-{DateTime.UtcNow:yyyyMMdd-HHmmss}-{Environment.ProcessId}.txt");
        try
        {
            File.WriteAllText(trace, $"reslora {typeof(CliErrors).Assembly.GetName().Version}\nargs: {string.Join(' ', Environment.GetCommandLineArgs().Skip(1))}\n\n{e}\n");
        }
        catch (Exception writeError) when (writeError is IOException or UnauthorizedAccessException)
        {
            trace = $"(could not be written: {writeError.Message})\n{e}";
        }
        Console.Error.WriteLine($"internal error: {e.GetType().Name}: {e.Message}");
        Console.Error.WriteLine($"This is a bug in reslora, not a problem with your input. The full trace is in {trace}; please report it.");
        return BugExit;
    }
}
