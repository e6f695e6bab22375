// A deliberate layer violation for LayerRulesTests.Rules_CatchAForbiddenReference: an "IO" type using a "Models" type.
namespace ResLora.Tests.Architecture.Fixture.Models
{
    internal sealed class FixtureModel
    {
        public int Size { get; init; } = 1;
    }
}

namespace ResLora.Tests.Architecture.Fixture.IO
{
    internal static class FixtureReader
    {
        public static int Read() => new Models.FixtureModel().Size;
    }
}
