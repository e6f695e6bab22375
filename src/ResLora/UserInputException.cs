namespace ResLora;

/// <summary>
/// The one exception type for bad input: a flag, a config field, a data record, a file's contents, a folder that
/// holds the wrong thing. It is raised where the input is checked, and its message names the input and the fix
/// ("--rank 0: must be a positive rank, e.g. 8"). The CLI prints it as one line; anything else that escapes is a bug
/// and is reported as one, with the full trace written to a file.
/// </summary>
public class UserInputException : Exception
{
    public UserInputException(string message) : base(message) { }

    public UserInputException(string message, Exception inner) : base(message, inner) { }
}
