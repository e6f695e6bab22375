namespace ResLora.IO;

/// <summary>One thing wrong with one stored tensor: its file, its name and what is wrong, in words.</summary>
public sealed record TensorProblem(string File, string Tensor, string Problem)
{
    public override string ToString() => $"{File}: tensor '{Tensor}': {Problem}";
}

/// <summary>
/// Reads stored tensors to find what the header cannot show: non-finite values (NaN, ±∞) in floating-point tensors.
/// (What the header can show — sizes against dtype × shape, offsets — <see cref="SafetensorsFile.Open"/> checks.)
/// </summary>
public static class TensorScan
{
    /// <summary>Whether a safetensors dtype name is a floating-point type.</summary>
    public static bool IsFloat(string dtype) => dtype is "F32" or "F16" or "BF16" or "F64";

    /// <summary>How many values of <paramref name="t"/> are NaN or ±∞ (0 for integer and boolean tensors).</summary>
    public static long CountNonFinite(Tensor t)
    {
        if (!t.is_floating_point() || t.NumberOfElements == 0) return 0;
        using var finite = t.isfinite();
        return t.NumberOfElements - finite.count_nonzero().item<long>();
    }

    /// <summary>The problem of a tensor holding <paramref name="nonFinite"/> non-finite values, or null when it holds none.</summary>
    public static string? NonFiniteProblem(long nonFinite, long elements) =>
        nonFinite == 0 ? null : $"{nonFinite:N0} of {elements:N0} values are NaN or infinite";

    /// <summary>Every tensor of <paramref name="file"/> with non-finite values, each tensor read once.</summary>
    public static IEnumerable<TensorProblem> NonFinite(SafetensorsFile file)
    {
        foreach (var e in file.Entries.Where(e => IsFloat(e.Dtype)).OrderBy(e => e.Name, StringComparer.Ordinal))
        {
            using var t = file.Load(e.Name);
            if (NonFiniteProblem(CountNonFinite(t), t.NumberOfElements) is { } p) yield return new TensorProblem(file.FilePath, e.Name, p);
        }
    }

    /// <summary>Every tensor of <paramref name="checkpoint"/> with non-finite values, each tensor read once.</summary>
    public static IEnumerable<TensorProblem> NonFinite(HfCheckpoint checkpoint)
    {
        foreach (var name in checkpoint.Names.OrderBy(n => n, StringComparer.Ordinal))
        {
            var e = checkpoint.EntryOf(name);
            if (!IsFloat(e.Dtype)) continue;
            using var t = checkpoint.Load(name);
            if (NonFiniteProblem(CountNonFinite(t), t.NumberOfElements) is { } p) yield return new TensorProblem(checkpoint.PathOf(name), name, p);
        }
    }
}
