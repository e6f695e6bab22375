namespace ResLora.Cli;

/// <summary>Which exceptions are the user's input (shown as one line) rather than our bugs.</summary>
public static class CliErrors
{
    public static bool IsUserError(Exception e) =>
        e is ArgumentException or InvalidDataException or FileNotFoundException or DirectoryNotFoundException
            or UnauthorizedAccessException or IOException or FormatException or InvalidOperationException or KeyNotFoundException;

    /// <summary>Runs a verb body: user errors become one line on stderr and exit code 2, never a stack trace.</summary>
    public static int Guard(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e) when (IsUserError(e))
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }
    }
}
