using System.Buffers.Binary;
using System.Text;

namespace ResLora.Text.Tokenizers;

/// <summary>
/// SentencePiece's compiled normalization rules (<c>normalizer_spec.precompiled_charsmap</c>; tokenizer.json's
/// <c>Precompiled</c> normalizer holds it base64-encoded). The blob is a little-endian uint32 byte size of a darts-clone
/// double-array trie, the trie's 32-bit units, then the replacement strings, each ending in a NUL byte; the trie maps a
/// UTF-8 key to the byte offset of its replacement. Normalizing walks the text as sentencepiece's
/// <c>Normalizer::NormalizePrefix</c> does: at each position the longest key that prefixes the rest of the text is
/// replaced by its string; where no key matches, one character is kept as it is.
/// </summary>
internal sealed class PrecompiledCharsMap
{
    private readonly uint[] _units;
    private readonly byte[] _strings;
    private readonly string _where;

    private PrecompiledCharsMap(uint[] units, byte[] strings, string where)
    {
        _units = units;
        _strings = strings;
        _where = where;
    }

    /// <summary>Reads the base64 blob; <paramref name="where"/> names file and field for errors ("tokenizer.json: 'normalizer.precompiled_charsmap'").</summary>
    public static PrecompiledCharsMap Parse(string base64, string where)
    {
        byte[] blob;
        try { blob = Convert.FromBase64String(base64); }
        catch (FormatException) { throw new UserInputException($"{where} is not valid base64; copy the tokenizer.json of the model again."); }
        if (blob.Length < 4) throw new UserInputException($"{where} holds {blob.Length} byte(s); a SentencePiece charsmap starts with a 4-byte trie size.");
        uint size = BinaryPrimitives.ReadUInt32LittleEndian(blob);
        if (size == 0 || size % 4 != 0 || size > blob.Length - 4)
            throw new UserInputException($"{where}: its trie size {size} is not a positive multiple of 4 that fits the {blob.Length - 4} bytes after it; the charsmap is damaged.");
        var units = new uint[size / 4];
        for (int i = 0; i < units.Length; i++) units[i] = BinaryPrimitives.ReadUInt32LittleEndian(blob.AsSpan(4 + 4 * i));
        var map = new PrecompiledCharsMap(units, blob[(4 + (int)size)..], where);
        if (Offset(units[0]) >= (uint)units.Length) throw map.Damaged();
        return map;
    }

    // darts-clone's DoubleArrayUnit (darts.h): bit 8 says a key ends below this node; a leaf's low 31 bits are its value;
    // the label is the low byte (bit 31 set marks a leaf, which never equals a label); the offset to the children is bits
    // 10..31, shifted left by 8 when bit 9 is set.
    private static bool HasLeaf(uint unit) => ((unit >> 8) & 1) == 1;

    private static uint Value(uint unit) => unit & 0x7FFF_FFFFu;

    private static uint Label(uint unit) => unit & 0x8000_00FFu;

    private static uint Offset(uint unit) => (unit >> 10) << (int)((unit & (1u << 9)) >> 6);

    private UserInputException Damaged() => new($"{_where}: the charsmap's trie points outside itself; the charsmap is damaged (copy the tokenizer.json of the model again).");

    /// <summary>The longest key prefixing <paramref name="key"/>: its length in bytes (0 when none) and its replacement's offset.</summary>
    private (int Length, uint Value) LongestPrefix(ReadOnlySpan<byte> key)
    {
        // darts-clone commonPrefixSearch, keeping the last (longest) result.
        int length = 0;
        uint value = 0;
        uint pos = Offset(_units[0]);
        for (int i = 0; i < key.Length; i++)
        {
            if (key[i] == 0) break; // darts keys are NUL-terminated, so none holds a NUL (spm_precompiled stops here too)
            pos ^= key[i];
            if (pos >= (uint)_units.Length) return (length, value); // beyond the array: no such child
            uint unit = _units[pos];
            if (Label(unit) != key[i]) return (length, value);
            pos ^= Offset(unit);
            if (pos >= (uint)_units.Length) throw Damaged();
            if (HasLeaf(unit))
            {
                length = i + 1;
                value = Value(_units[pos]);
            }
        }
        return (length, value);
    }

    public string Normalize(string text)
    {
        if (text.Length == 0) return text;
        byte[] input = Encoding.UTF8.GetBytes(text); // a lone surrogate becomes U+FFFD, as sentencepiece treats malformed UTF-8
        var output = new List<byte>(input.Length);
        for (int pos = 0; pos < input.Length;)
        {
            var (length, value) = LongestPrefix(input.AsSpan(pos));
            if (length > 0)
            {
                if (value >= (uint)_strings.Length) throw Damaged();
                int end = Array.IndexOf(_strings, (byte)0, (int)value);
                if (end < 0) end = _strings.Length;
                for (int k = (int)value; k < end; k++) output.Add(_strings[k]);
                pos += length;
                continue;
            }
            int charLen = Utf8Length(input[pos]);
            for (int k = 0; k < charLen && pos < input.Length; k++) output.Add(input[pos++]);
        }
        return Encoding.UTF8.GetString(output.ToArray());
    }

    private static int Utf8Length(byte lead) => lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
}
