using ResLora.Templates;

namespace ResLora.Text.Templates;

/// <summary>
/// A chat template that cannot be parsed or rendered: a construct outside the supported Jinja subset, a syntax
/// error, or a runtime error (an undefined variable used as an object, a type mismatch). The message names the
/// template line and the construct: "chat template line 3: the 'macro' tag is not supported". It is the template
/// engine's <see cref="TemplateException"/> (its <see cref="Exception.InnerException"/>) as bad user input.
/// </summary>
public class ChatTemplateException : UserInputException
{
    /// <summary>Creates the exception for <paramref name="line"/> of the template named <paramref name="templateName"/>.</summary>
    /// <param name="templateName">The template's name (e.g. "default", "tool_use"), or null when it has none.</param>
    /// <param name="line">The 1-based template line the problem is on.</param>
    /// <param name="detail">What is wrong, without the line prefix.</param>
    public ChatTemplateException(string? templateName, int line, string detail)
        : base(TemplateException.Prefix(templateName, line) + detail)
    {
        TemplateName = templateName;
        Line = line;
        Detail = detail;
    }

    /// <summary>The engine's error as a chat template error: same name, line and message.</summary>
    /// <param name="inner">The template engine's exception.</param>
    public ChatTemplateException(TemplateException inner)
        : base(inner.Message, inner)
    {
        TemplateName = inner.TemplateName;
        Line = inner.Line;
        Detail = inner.Detail;
    }

    /// <summary>The template's name, or null when it has none.</summary>
    public string? TemplateName { get; }

    /// <summary>The 1-based template line the problem is on.</summary>
    public int Line { get; }

    /// <summary>What is wrong, without the "chat template line N: " prefix.</summary>
    public string Detail { get; }

    /// <summary>The engine's exception as the matching chat template exception (<see cref="ChatTemplateRaisedException"/> for <c>raise_exception</c>).</summary>
    internal static ChatTemplateException From(TemplateException e) =>
        e is TemplateRaisedException raised ? new ChatTemplateRaisedException(raised) : new ChatTemplateException(e);
}

/// <summary>
/// The template itself refused its input by calling <c>raise_exception(message)</c>, as Hugging Face templates do
/// when conversation roles do not alternate or a role is not supported. <see cref="TemplateMessage"/> is the
/// template's own message, unchanged.
/// </summary>
public sealed class ChatTemplateRaisedException : ChatTemplateException
{
    /// <summary>Creates the exception for a <c>raise_exception</c> call on <paramref name="line"/>.</summary>
    /// <param name="templateName">The template's name, or null when it has none.</param>
    /// <param name="line">The 1-based line of the <c>raise_exception</c> call.</param>
    /// <param name="templateMessage">The message the template passed to <c>raise_exception</c>.</param>
    public ChatTemplateRaisedException(string? templateName, int line, string templateMessage)
        : base(templateName, line, TemplateRaisedException.Lead + templateMessage)
    {
        TemplateMessage = templateMessage;
    }

    /// <summary>The engine's <c>raise_exception</c> as a chat template error: same name, line and message.</summary>
    /// <param name="inner">The template engine's exception.</param>
    public ChatTemplateRaisedException(TemplateRaisedException inner)
        : base(inner)
    {
        TemplateMessage = inner.TemplateMessage;
    }

    /// <summary>The message the template passed to <c>raise_exception</c>.</summary>
    public string TemplateMessage { get; }
}
