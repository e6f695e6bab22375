using System.Globalization;
using System.Text;

namespace ResLora.Text.Tokenizers;

/// <summary>
/// Unicode canonical composition (NFC) and compatibility composition (NFKC) that work with <c>InvariantGlobalization</c>,
/// where .NET's <c>string.Normalize</c> returns the text unchanged (it needs ICU), which would silently turn the NFC and
/// NFKC normalizers of tokenizer.json into no-ops. NFC is NFD (<see cref="UnicodeNfd"/>) followed by canonical
/// composition (Unicode §3.11, UAX #15): each character composes with the last starter when it is not blocked from it,
/// using the primary composites in <c>UnicodeNfcData.cs</c>; Hangul L V (T) compose by the formula of Unicode §3.12.
/// </summary>
/// <remarks>
/// <c>UnicodeNfcData.cs</c> and <c>UnicodeNfkdData.cs</c> (the compatibility decompositions NFKD and NFKC start from)
/// are written by this script (python3 script.py nfc &gt; UnicodeNfcData.cs; python3 script.py nfkd &gt; UnicodeNfkdData.cs),
/// from the same Unicode version as <c>UnicodeNfdData.cs</c>:
/// <code>
/// # Writes UnicodeNfcData.cs (python3 script.py nfc) or UnicodeNfkdData.cs (python3 script.py nfkd) from Python's unicodedata.
/// import sys, unicodedata
/// kind = sys.argv[1]
/// items = []
/// for cp in range(0x110000):
///     if 0xD800 &lt;= cp &lt;= 0xDFFF or 0xAC00 &lt;= cp &lt;= 0xD7A3:
///         continue  # surrogates; Hangul syllables compose and decompose by formula
///     ch = chr(cp)
///     d = unicodedata.decomposition(ch)
///     if kind == 'nfc':
///         # Primary composites: a canonical mapping to exactly two code points that NFC gives back (this leaves out
///         # singletons, non-starter decompositions and the composition exclusions).
///         p = d.split()
///         if d and not d.startswith('&lt;') and len(p) == 2 and unicodedata.normalize('NFC', unicodedata.normalize('NFD', ch)) == ch:
///             items.append('%X.%X=%X' % (int(p[0], 16), int(p[1], 16), cp))
///     else:
///         k = unicodedata.normalize('NFKD', ch)
///         if k != unicodedata.normalize('NFD', ch):
///             items.append('%X=%s' % (cp, '.'.join('%X' % ord(c) for c in k)))
/// def chunks(items, width=116):
///     line = ''
///     for it in items:
///         if len(line) + len(it) + 1 &gt; width:
///             yield line
///             line = ''
///         line += it + ','
///     if line:
///         yield line
/// out = sys.stdout
/// out.write('// &lt;auto-generated&gt;\n')
/// out.write('// Generated from the Unicode Character Database %s (Python unicodedata) by the script in UnicodeNfc.cs.\n' % unicodedata.unidata_version)
/// out.write('// &lt;/auto-generated&gt;\n')
/// out.write('namespace ResLora.Text.Tokenizers;\n\n')
/// if kind == 'nfc':
///     out.write('internal static partial class UnicodeNfc\n{\n')
///     out.write('    private const string UnicodeVersion = "%s";\n\n' % unicodedata.unidata_version)
///     out.write('    // first.second=primary composite, hex: the canonical pairs NFC composes (Hangul syllables by formula).\n')
///     out.write('    private const string CompositionData =\n')
/// else:
///     out.write('internal static partial class UnicodeNfd\n{\n')
///     out.write('    private const string CompatibilityUnicodeVersion = "%s";\n\n' % unicodedata.unidata_version)
///     out.write('    // code point = its full compatibility decomposition (NFKD of the character alone), hex, dot-separated, for\n')
///     out.write('    // every code point whose NFKD differs from its NFD.\n')
///     out.write('    private const string CompatibilityDecompositionData =\n')
/// lines = list(chunks(items))
/// for i, l in enumerate(lines):
///     out.write('        "%s"%s\n' % (l, ';' if i == len(lines) - 1 else ' +'))
/// out.write('}\n')
/// print(len(items), file=sys.stderr)
/// </code>
/// </remarks>
internal static partial class UnicodeNfc
{
    private static readonly Lazy<Dictionary<long, int>> Pairs = new(Parse);

    private static Dictionary<long, int> Parse()
    {
        var pairs = new Dictionary<long, int>(1000);
        foreach (var entry in CompositionData.Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            int dot = entry.IndexOf('.'), eq = entry.IndexOf('=');
            int first = int.Parse(entry.AsSpan(0, dot), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            int second = int.Parse(entry.AsSpan(dot + 1, eq - dot - 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            pairs[Key(first, second)] = int.Parse(entry.AsSpan(eq + 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        }
        return pairs;
    }

    private static long Key(int first, int second) => ((long)first << 21) | (uint)second;

    /// <summary>NFC: canonical decomposition, canonical ordering, then canonical composition. Lone surrogates become U+FFFD.</summary>
    public static string Compose(string text) => NeedsNoWork(text) ? text : ComposeRunes(UnicodeNfd.Decompose(text));

    /// <summary>NFKC: compatibility decomposition, canonical ordering, then canonical composition.</summary>
    public static string ComposeCompatibility(string text) =>
        NeedsNoWork(text) ? text : ComposeRunes(UnicodeNfd.DecomposeCompatibility(text));

    // ASCII text is its own NFC and NFKC.
    private static bool NeedsNoWork(string text) => !text.AsSpan().ContainsAnyExceptInRange('\0', '\x7F');

    /// <summary>Canonical composition of decomposed, canonically ordered text.</summary>
    private static string ComposeRunes(string decomposed)
    {
        var pairs = Pairs.Value;
        var runes = new List<int>(decomposed.Length);
        foreach (var r in decomposed.EnumerateRunes()) runes.Add(r.Value);
        var output = new List<int>(runes.Count);
        int starter = -1;   // index in output of the last starter, -1 before the first one
        int lastClass = -1; // combining class of the last character kept after that starter, -1 when none
        foreach (int cp in runes)
        {
            int cls = UnicodeNfd.CombiningClass(cp);
            // Not blocked: nothing between the starter and cp, or everything between has a lower, non-zero class.
            if (starter >= 0 && (lastClass == -1 || lastClass < cls))
            {
                int composite = Composite(pairs, output[starter], cp);
                if (composite >= 0)
                {
                    output[starter] = composite;
                    continue;
                }
            }
            if (cls == 0)
            {
                starter = output.Count;
                lastClass = -1;
            }
            else lastClass = cls;
            output.Add(cp);
        }
        var sb = new StringBuilder(decomposed.Length);
        foreach (int cp in output) sb.Append(char.ConvertFromUtf32(cp));
        return sb.ToString();
    }

    /// <summary>The primary composite of <paramref name="first"/> and <paramref name="second"/>, or -1.</summary>
    private static int Composite(Dictionary<long, int> pairs, int first, int second)
    {
        // Hangul (Unicode §3.12): L + V = LV syllable, LV + T = LVT syllable.
        if (first is >= 0x1100 and < 0x1113 && second is >= 0x1161 and < 0x1176)
            return 0xAC00 + ((first - 0x1100) * 21 + (second - 0x1161)) * 28;
        int s = first - 0xAC00;
        if (s is >= 0 and < 11172 && s % 28 == 0 && second is > 0x11A7 and < 0x11C3) return first + (second - 0x11A7);
        return pairs.TryGetValue(Key(first, second), out int c) ? c : -1;
    }
}
