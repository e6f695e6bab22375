using Spectre.Console;

namespace ResLora.Cli;

/// <summary>A Spectre console over whatever <see cref="Console.Out"/> is now (AnsiConsole.Console caches the first one).</summary>
internal static class CliConsole
{
    public static IAnsiConsole Out()
    {
        var c = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Out) });
        if (Console.IsOutputRedirected) c.Profile.Width = Math.Max(c.Profile.Width, 160);
        return c;
    }
}
