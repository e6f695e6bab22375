using ResLora.Text.Templates;

namespace ResLora.Tests.IO.Templates;

/// <summary>Shared helpers: render a template string with a few variables, a fixed clock.</summary>
internal static class ChatTemplateTestKit
{
    public static string Render(string source, params (string Name, object? Value)[] variables) =>
        ChatTemplate.Parse(source).Render(variables.ToDictionary(v => v.Name, v => v.Value));

    public static string Fixture(string file) =>
        File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "IO", "Templates", "Fixtures", file));
}

/// <summary>A clock stopped at one instant, in UTC.</summary>
internal sealed class FixedClock : TimeProvider
{
    private readonly DateTimeOffset _now;

    public FixedClock(DateTimeOffset now) => _now = now;

    public override DateTimeOffset GetUtcNow() => _now;

    public override TimeZoneInfo LocalTimeZone => TimeZoneInfo.Utc;
}
