namespace ResLora.IO.Gguf;

/// <summary>ggml's tensor types as GGUF stores them (ggml.h <c>enum ggml_type</c>); the ones this library reads or writes.</summary>
public enum GgmlType : uint
{
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    BF16 = 30,
}

/// <summary>Block geometry of each <see cref="GgmlType"/>: elements per block and bytes per block (ggml's type traits).</summary>
public static class GgmlTypes
{
    /// <summary>(elements per block, bytes per block) of <paramref name="t"/>; null for a type this library does not know.</summary>
    public static (int BlockSize, int BlockBytes)? Geometry(GgmlType t) => t switch
    {
        GgmlType.F32 => (1, 4),
        GgmlType.F16 => (1, 2),
        GgmlType.BF16 => (1, 2),
        GgmlType.Q4_0 => (32, 18),
        GgmlType.Q4_1 => (32, 20),
        GgmlType.Q5_0 => (32, 22),
        GgmlType.Q5_1 => (32, 24),
        GgmlType.Q8_0 => (32, 34),
        GgmlType.Q2_K => (256, 84),
        GgmlType.Q3_K => (256, 110),
        GgmlType.Q4_K => (256, 144),
        GgmlType.Q5_K => (256, 176),
        GgmlType.Q6_K => (256, 210),
        _ => null,
    };

    /// <summary>Bytes a tensor of <paramref name="elements"/> takes as <paramref name="t"/>; an error when the count is not a whole number of blocks.</summary>
    public static long ByteSize(GgmlType t, long elements, string tensor)
    {
        var (bs, bb) = Geometry(t) ?? throw new UserInputException($"tensor '{tensor}': ggml type {(uint)t} is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K…Q6_K).");
        if (elements % bs != 0)
            throw new UserInputException($"tensor '{tensor}': {elements} elements is not a multiple of {t}'s block of {bs}.");
        return elements / bs * bb;
    }

    /// <summary>The name users type (<c>--gguf-type q8_0</c>) → type; null for an unknown name.</summary>
    public static GgmlType? Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "f32" => GgmlType.F32,
        "f16" => GgmlType.F16,
        "bf16" => GgmlType.BF16,
        "q8_0" => GgmlType.Q8_0,
        "q4_0" => GgmlType.Q4_0,
        _ => null,
    };

    /// <summary>
    /// <c>general.file_type</c> (llama.cpp's <c>enum llama_ftype</c>) of a model whose large matrices are <paramref name="t"/>:
    /// ALL_F32 = 0, MOSTLY_F16 = 1, MOSTLY_Q4_0 = 2, MOSTLY_Q8_0 = 7, MOSTLY_BF16 = 32.
    /// </summary>
    public static uint FileType(GgmlType t) => t switch
    {
        GgmlType.F32 => 0,
        GgmlType.F16 => 1,
        GgmlType.Q4_0 => 2,
        GgmlType.Q8_0 => 7,
        GgmlType.BF16 => 32,
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, "no file type for this ggml type"),
    };
}
