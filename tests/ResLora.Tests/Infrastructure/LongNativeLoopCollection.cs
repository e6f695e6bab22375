namespace ResLora.Tests.Infrastructure;

/// <summary>
/// Tests that run tens of thousands of optimizer steps through TorchSharp's native calls (RefLoRA's AdamW toy: 48,000
/// steps). Run alone: once, under the whole suite's parallel load, AdamW.step failed inside libtorch with c10's
/// "toDouble ... Expected false to be true" (a Scalar argument that was no longer a number), which the same test never
/// shows alone; the cause is not found (docs/reliability.md).
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class LongNativeLoopCollection
{
    public const string Name = "long native loops";
}
