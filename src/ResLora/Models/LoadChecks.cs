using ResLora.IO;

namespace ResLora.Models;

/// <summary>
/// What is checked about a model folder's weights before the model is built (beside the shape check of
/// <see cref="HfCheckpoint.ValidateAgainst"/>): that the weights fit in the memory left, and that every weight the
/// model needs as floats is stored as floats.
/// </summary>
public static class LoadChecks
{
    /// <summary>Bytes per element of the dtypes weights are loaded as.</summary>
    public static int ElementSize(ScalarType dtype) => dtype switch
    {
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.BFloat16 or ScalarType.Float16 or ScalarType.Int16 => 2,
        _ => 1,
    };

    /// <summary>
    /// Bytes the loaded weights take as <paramref name="dtype"/>: the sum over every expected tensor, plus the largest one
    /// once more (a tensor is read in its stored dtype, then converted). Activations, gradients and optimizer state come on
    /// top, so this is a lower bound of what a run needs.
    /// </summary>
    public static long EstimateBytes(IReadOnlyDictionary<string, long[]> expected, ScalarType dtype)
    {
        double elements = 0, largest = 0;
        foreach (var shape in expected.Values)
        {
            double n = shape.Aggregate(1.0, (a, b) => a * b);
            elements += n;
            largest = Math.Max(largest, n);
        }
        return (long)Math.Min(long.MaxValue, (elements + largest) * ElementSize(dtype));
    }

    /// <summary>
    /// Refuses a load whose weights alone exceed the memory left (<see cref="AvailableMemory"/>), with one line naming the
    /// folder, the estimate, the memory available and the fix — instead of a native allocation failure or the kernel's
    /// out-of-memory killer part-way through. Only the weights are counted, so a run that could fit is never refused;
    /// nothing is checked where the available memory cannot be read.
    /// </summary>
    public static void EnsureFitsInMemory(string modelDir, IReadOnlyDictionary<string, long[]> expected, ScalarType dtype)
    {
        if (AvailableMemory.Read() is not { } mem) return;
        long need = EstimateBytes(expected, dtype);
        if (need <= mem.AvailableBytes) return;
        string dt = dtype.ToString().ToLowerInvariant();
        string fix = dtype == ScalarType.Float32
            ? "load it with --dtype bfloat16 (half the size), or use a machine with more memory"
            : "use a smaller model or a machine with more memory";
        throw new UserInputException($"{modelDir}: the model's weights need about {AvailableMemory.Format(need)} as {dt}, but only {AvailableMemory.Format(mem.AvailableBytes)} of memory is available ({mem.Source}); {fix}.");
    }
}
