namespace ResLora.Tests.Infrastructure;

/// <summary>
/// Tests that compare two runs bit for bit while using torch's process-global RNG (dropout): run alone, since a test on
/// another thread drawing from the same generator would change the sequence.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TorchRngCollection
{
    public const string Name = "torch global RNG";
}
