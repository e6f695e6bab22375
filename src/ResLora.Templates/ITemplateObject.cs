namespace ResLora.Templates;

/// <summary>
/// A .NET object a template sees as a dict (e.g. a chat message: <c>{"role": ..., "content": ...}</c>): its fields, in
/// order, each converted like any other template variable (a later field of the same name replaces an earlier one's
/// value in place).
/// </summary>
public interface ITemplateObject
{
    /// <summary>The fields the template sees, in order.</summary>
    IEnumerable<KeyValuePair<string, object?>> TemplateFields();
}
