namespace ResLora.Templates;

/// <summary>
/// A template that cannot be parsed or rendered: a construct outside the supported Jinja subset, a syntax error, or
/// a runtime error (an undefined variable used as an object, a type mismatch, a budget exceeded). The message names
/// the template line and the construct: "chat template line 3: the 'macro' tag is not supported". The engine knows no
/// caller's error types; ResLora's ChatTemplate turns this into its ChatTemplateException with the same message.
/// </summary>
public class TemplateException : Exception
{
    /// <summary>Creates the exception for <paramref name="line"/> of the template named <paramref name="templateName"/>.</summary>
    /// <param name="templateName">The template's name (e.g. "default", "tool_use"), or null when it has none.</param>
    /// <param name="line">The 1-based template line the problem is on.</param>
    /// <param name="detail">What is wrong, without the line prefix.</param>
    public TemplateException(string? templateName, int line, string detail)
        : base(Prefix(templateName, line) + detail)
    {
        TemplateName = templateName;
        Line = line;
        Detail = detail;
    }

    /// <summary>The template's name, or null when it has none.</summary>
    public string? TemplateName { get; }

    /// <summary>The 1-based template line the problem is on.</summary>
    public int Line { get; }

    /// <summary>What is wrong, without the "chat template line N: " prefix.</summary>
    public string Detail { get; }

    /// <summary>The message prefix that names the template and the line: "chat template 'default' line 3: ".</summary>
    /// <param name="name">The template's name, or null when it has none.</param>
    /// <param name="line">The 1-based template line.</param>
    public static string Prefix(string? name, int line) =>
        name is null ? $"chat template line {line}: " : $"chat template '{name}' line {line}: ";
}

/// <summary>
/// The template itself refused its input by calling <c>raise_exception(message)</c>, as Hugging Face templates do
/// when conversation roles do not alternate or a role is not supported. <see cref="TemplateMessage"/> is the
/// template's own message, unchanged.
/// </summary>
public sealed class TemplateRaisedException : TemplateException
{
    /// <summary>What the message says before the template's own words.</summary>
    public const string Lead = "the template rejected the conversation: ";

    /// <summary>Creates the exception for a <c>raise_exception</c> call on <paramref name="line"/>.</summary>
    /// <param name="templateName">The template's name, or null when it has none.</param>
    /// <param name="line">The 1-based line of the <c>raise_exception</c> call.</param>
    /// <param name="templateMessage">The message the template passed to <c>raise_exception</c>.</param>
    public TemplateRaisedException(string? templateName, int line, string templateMessage)
        : base(templateName, line, Lead + templateMessage)
    {
        TemplateMessage = templateMessage;
    }

    /// <summary>The message the template passed to <c>raise_exception</c>.</summary>
    public string TemplateMessage { get; }
}
