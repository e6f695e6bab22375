using System.Buffers.Binary;
using System.Text;
using ResLora.Text.Tokenizers;

namespace ResLora.Tests.Text.Tokenizers;

/// <summary>
/// The SentencePiece charsmap (tokenizer.json's Precompiled normalizer) on blobs built here by <see cref="DartsBlob"/>,
/// a small darts-clone double-array builder written from the format, so the rules are known exactly.
/// </summary>
public sealed class PrecompiledCharsMapTests
{
    internal static readonly (string Key, string Value)[] FullWidthRules =
    {
        ("\uFF21", "A"), ("\uFF22", "B"), ("\uFF23", "C"), ("\uFF41", "a"), ("\uFF42", "b"),
        ("\uFF21\uFF22", "X"),     // a two-character key: the longest match must win over "Ａ" → "A"
        ("\uFB01", "fi"),          // ligature: one character to two
        ("\u200B", ""),            // zero-width space: deleted
        ("\u3000", " "),           // ideographic space: to ASCII space
        ("\uD83D\uDE00", ":)"),    // a character outside the BMP (4 UTF-8 bytes)
    };

    internal static string FullWidthBase64 => Convert.ToBase64String(DartsBlob.Build(FullWidthRules));

    [Fact]
    public void Normalize_ReplacesLongestMatchingKey_AndKeepsUnmappedCharacters()
    {
        var map = PrecompiledCharsMap.Parse(FullWidthBase64, "test");
        Assert.Equal("A", map.Normalize("\uFF21"));
        Assert.Equal("XA", map.Normalize("\uFF21\uFF22\uFF21"));          // ＡＢ is one key, then Ａ alone
        Assert.Equal("BA", map.Normalize("\uFF22\uFF21"));
        Assert.Equal("ab c", map.Normalize("\uFF41\uFF42\u3000c"));
        Assert.Equal("fine", map.Normalize("\uFB01ne"));
        Assert.Equal("zerowidth", map.Normalize("zero\u200Bwidth"));
        Assert.Equal("smile :) é 日", map.Normalize("smile \uD83D\uDE00 é 日")); // é and 日 have no rule: kept
        Assert.Equal("\uFF5A", map.Normalize("\uFF5A"));                  // full-width z has no rule here: kept
        Assert.Equal("", map.Normalize(""));
    }

    [Fact]
    public void Parse_DamagedBlob_NamesTheField()
    {
        byte[] good = DartsBlob.Build(FullWidthRules);
        var tooBig = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(tooBig, (uint)good.Length); // trie size beyond the blob
        var e = Assert.Throws<UserInputException>(() => PrecompiledCharsMap.Parse(Convert.ToBase64String(tooBig), "tokenizer.json: 'normalizer.precompiled_charsmap'"));
        Assert.Contains("tokenizer.json: 'normalizer.precompiled_charsmap'", e.Message);
        Assert.Contains("trie size", e.Message);
        Assert.Throws<UserInputException>(() => PrecompiledCharsMap.Parse("not base64!", "f"));
        Assert.Throws<UserInputException>(() => PrecompiledCharsMap.Parse(Convert.ToBase64String(new byte[] { 1, 0 }), "f"));
        // A root whose child offset points past the array.
        var badRoot = (byte[])good.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(badRoot.AsSpan(4), 0x7FFFFu << 10);
        Assert.Contains("damaged", Assert.Throws<UserInputException>(() => PrecompiledCharsMap.Parse(Convert.ToBase64String(badRoot), "f")).Message);
    }
}

/// <summary>
/// Builds a SentencePiece charsmap blob: uint32 trie byte size, a darts-clone double array over the UTF-8 keys, then
/// the NUL-terminated replacements. Unit layout as darts.h: label in bits 0-7, has-leaf bit 8, offset to the children
/// in bits 10-31 (children of the node at p sit at p ^ offset ^ label, its leaf at p ^ offset); a leaf unit is
/// value | bit 31.
/// </summary>
internal static class DartsBlob
{
    private sealed class Node
    {
        public readonly SortedDictionary<byte, Node> Children = new();
        public int Value = -1;
    }

    public static byte[] Build(IEnumerable<(string Key, string Value)> rules)
    {
        var strings = new List<byte>();
        var root = new Node();
        foreach (var (key, value) in rules)
        {
            var node = root;
            foreach (byte b in Encoding.UTF8.GetBytes(key))
            {
                if (!node.Children.TryGetValue(b, out var child)) node.Children[b] = child = new Node();
                node = child;
            }
            node.Value = strings.Count;
            strings.AddRange(Encoding.UTF8.GetBytes(value));
            strings.Add(0);
        }
        var units = new List<uint> { 0 };
        var used = new List<bool> { true };
        var bases = new HashSet<int>();
        bool Free(int p) => p >= used.Count || !used[p];
        void Use(int p, uint unit)
        {
            while (units.Count <= p) { units.Add(0); used.Add(false); }
            units[p] = unit;
            used[p] = true;
        }
        void Place(Node node, int pos)
        {
            int b = 1;
            // A base whose leaf slot (base ^ 0) and child slots (base ^ label) are all free; bases differ between nodes so
            // that a label never matches another node's child.
            while (bases.Contains(b) || (node.Value >= 0 && !Free(b)) || node.Children.Keys.Any(l => !Free(b ^ l))) b++;
            bases.Add(b);
            uint offset = (uint)(pos ^ b);
            if (offset >= 1u << 21) throw new InvalidOperationException("test trie too large for the short offset form");
            units[pos] |= (offset << 10) | (node.Value >= 0 ? 1u << 8 : 0);
            if (node.Value >= 0) Use(b, (uint)node.Value | 0x8000_0000u);
            foreach (var l in node.Children.Keys) Use(b ^ l, l);
            foreach (var (l, child) in node.Children) Place(child, b ^ l);
        }
        Place(root, 0);
        while (units.Count % 256 != 0) units.Add(0); // darts pads its array in blocks
        var blob = new byte[4 + 4 * units.Count + strings.Count];
        BinaryPrimitives.WriteUInt32LittleEndian(blob, (uint)(4 * units.Count));
        for (int i = 0; i < units.Count; i++) BinaryPrimitives.WriteUInt32LittleEndian(blob.AsSpan(4 + 4 * i), units[i]);
        strings.CopyTo(blob, 4 + 4 * units.Count);
        return blob;
    }
}
