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
