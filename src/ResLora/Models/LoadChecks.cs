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

    /// <summary>
    /// Expected weights stored with an integer or boolean dtype: the model computes with floats, so such a tensor is
    /// mislabelled (e.g. float32 bytes labelled I32: the same size, so the header check cannot tell) or not a weight.
    /// </summary>
    public static IReadOnlyList<TensorProblem> NonFloatWeights(HfCheckpoint checkpoint, IReadOnlyDictionary<string, long[]> expected) =>
        expected.Keys.Where(checkpoint.Contains).OrderBy(k => k, StringComparer.Ordinal)
            .Select(k => (Name: k, Entry: checkpoint.EntryOf(k)))
            .Where(x => !TensorScan.IsFloat(x.Entry.Dtype))
            .Select(x => new TensorProblem(checkpoint.PathOf(x.Name), x.Name, $"stored as {x.Entry.Dtype}, but the model needs floating-point weights (F32, F16, BF16 or F64)"))
            .ToList();

    /// <summary>Refuses integer-typed weights (<see cref="NonFloatWeights"/>) in one line naming the first and the count.</summary>
    public static void RefuseNonFloat(HfCheckpoint checkpoint, IReadOnlyDictionary<string, long[]> expected)
    {
        var bad = NonFloatWeights(checkpoint, expected);
        if (bad.Count == 0) return;
        string more = bad.Count > 1 ? $" ({bad.Count} weights in all: {string.Join(", ", bad.Skip(1).Take(5).Select(b => b.Tensor))}{(bad.Count > 6 ? ", ..." : "")} too)" : "";
        throw new UserInputException($"{bad[0]}{more}; the file is mislabelled or not this model's checkpoint. Re-save it with float weights.");
    }
}
