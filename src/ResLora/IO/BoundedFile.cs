using System.Text;

namespace ResLora.IO;

/// <summary>
/// Reads an input file whole, but never more than a limit: a device such as <c>/dev/zero</c> (or a runaway pipe) given as
/// a config, tokenizer or data file is one line naming it, not an out-of-memory failure. Pipes within the limit work.
/// </summary>
public static class BoundedFile
{
    /// <summary>config.json, adapter_config.json, the shard index, tokenizer_config.json: small JSON.</summary>
    public const long ConfigLimit = 64L << 20;

    /// <summary>tokenizer.json (large vocabularies with merges run to tens of MB).</summary>
    public const long TokenizerLimit = 512L << 20;

    /// <summary>
    /// Training and evaluation data of every kind (language-model JSONL/JSON, classification TSV/CSV/JSONL/JSON) and
    /// a WordPiece vocabulary given by a flag (a .NET string holds at most ~1 G characters anyway).
    /// </summary>
    public const long DataLimit = 1L << 30;

    /// <summary>
    /// One record of a data file (a JSONL line, a JSON-array element): far more text than any sequence length uses,
    /// and small enough that parsing it (a few times its size) stays a small part of memory.
    /// </summary>
    public const long RecordLimit = 16L << 20;

    /// <summary>The bytes of <paramref name="path"/>; more than <paramref name="maxBytes"/> is an error naming the file and <paramref name="what"/> it is.</summary>
    public static byte[] ReadAllBytes(string path, long maxBytes, string what)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
        // Chunks, not a doubling buffer: reading up to the limit costs the limit, not twice it.
        var chunks = new List<byte[]>();
        long total = 0;
        while (true)
        {
            byte[] chunk = new byte[1 << 20];
            int filled = 0, n;
            while (filled < chunk.Length && (n = fs.Read(chunk, filled, chunk.Length - filled)) > 0) filled += n;
            if (total + filled > maxBytes)
                throw new UserInputException($"{path}: more than {AvailableMemory.Format(maxBytes)}, far more than any {what} (is it a device such as /dev/zero?).");
            if (filled > 0) chunks.Add(filled == chunk.Length ? chunk : chunk[..filled]);
            total += filled;
            if (filled < chunk.Length) break;
        }
        byte[] all = new byte[total];
        long at = 0;
        foreach (var c in chunks)
        {
            Buffer.BlockCopy(c, 0, all, (int)at, c.Length);
            at += c.Length;
        }
        return all;
    }

    /// <summary>The text of a UTF-8 file (a BOM is skipped; undecodable bytes become U+FFFD, as File.ReadAllText does).</summary>
    public static string ReadAllText(string path, long maxBytes, string what)
    {
        byte[] b = ReadAllBytes(path, maxBytes, what);
        int start = BomLength(b);
        return Encoding.UTF8.GetString(b, start, b.Length - start);
    }

    /// <summary>
    /// The bytes of a UTF-8 file after its BOM, read within <paramref name="maxBytes"/> (<see cref="ReadAllBytes"/>) and
    /// checked strictly (<see cref="CheckUtf8"/>): an undecodable byte is an error naming file:line, never replaced.
    /// </summary>
    public static ReadOnlyMemory<byte> ReadUtf8(string path, long maxBytes, string what)
    {
        byte[] b = ReadAllBytes(path, maxBytes, what);
        int start = BomLength(b);
        CheckUtf8(path, b.AsSpan(start), what);
        return b.AsMemory(start);
    }

    /// <summary>The text of <see cref="ReadUtf8"/>.</summary>
    public static string ReadUtf8Text(string path, long maxBytes, string what) => Encoding.UTF8.GetString(ReadUtf8(path, maxBytes, what).Span);

    /// <summary>
    /// Throws naming <paramref name="path"/>, the line and the first undecodable byte when <paramref name="bytes"/> are
    /// not well-formed UTF-8 (which also excludes encoded surrogates). Costs no allocation when they are.
    /// </summary>
    public static void CheckUtf8(string path, ReadOnlySpan<byte> bytes, string what)
    {
        if (System.Text.Unicode.Utf8.IsValid(bytes)) return;
        int line = 1, lineStart = 0;
        for (int i = 0; i <= bytes.Length; i++)
        {
            if (i < bytes.Length && bytes[i] != (byte)'\n') continue;
            var segment = bytes[lineStart..i];
            for (int at = 0; at < segment.Length;)
            {
                if (Rune.DecodeFromUtf8(segment[at..], out _, out int used) != System.Buffers.OperationStatus.Done)
                    throw new UserInputException($"{path}:{line}: not valid UTF-8 (byte 0x{segment[at]:X2}); save the {what} as UTF-8.");
                at += used;
            }
            line++;
            lineStart = i + 1;
        }
        throw new UserInputException($"{path}: not valid UTF-8; save the {what} as UTF-8.");
    }

    /// <summary>3 when <paramref name="bytes"/> start with the UTF-8 byte-order mark, else 0.</summary>
    public static int BomLength(byte[] bytes) => bytes.Length >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF ? 3 : 0;
}
