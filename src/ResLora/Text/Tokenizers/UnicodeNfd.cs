using System.Globalization;
using System.Text;

namespace ResLora.Text.Tokenizers;

/// <summary>
/// Unicode canonical decomposition (NFD) that works with <c>InvariantGlobalization</c>: the build sets it, and in that
/// mode .NET's <c>string.Normalize</c> returns the text unchanged (it needs ICU), which would silently turn BERT's
/// strip_accents and the NFD normalizer into no-ops. Decompositions and combining classes come from the Unicode
/// Character Database in <c>UnicodeNfdData.cs</c>; Hangul syllables decompose by the formula of Unicode §3.12.
/// </summary>
/// <remarks>
/// <c>UnicodeNfdData.cs</c> is written by this script (python3 script.py &gt; UnicodeNfdData.cs):
/// <code>
/// # Writes UnicodeNfdData.cs from Python's unicodedata (the Unicode Character Database).
/// import sys, unicodedata
/// dec, ccc = [], []
/// for cp in range(0x110000):
///     if 0xD800 &lt;= cp &lt;= 0xDFFF or 0xAC00 &lt;= cp &lt;= 0xD7A3:
///         continue  # surrogates; Hangul syllables decompose by formula
///     ch = chr(cp)
///     d = unicodedata.decomposition(ch)
///     if d and not d.startswith('&lt;'):
///         dec.append('%X=%s' % (cp, '.'.join('%X' % ord(c) for c in unicodedata.normalize('NFD', ch))))
///     c = unicodedata.combining(ch)
///     if c:
///         if ccc and ccc[-1][1] == cp - 1 and ccc[-1][2] == c:
///             ccc[-1][1] = cp
///         else:
///             ccc.append([cp, cp, c])
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
/// out.write('// Generated from the Unicode Character Database %s (Python unicodedata) by the script in UnicodeNfd.cs.\n' % unicodedata.unidata_version)
/// out.write('// &lt;/auto-generated&gt;\n')
/// out.write('namespace ResLora.Text.Tokenizers;\n\n')
/// out.write('internal static partial class UnicodeNfd\n{\n')
/// out.write('    private const string UnicodeVersion = "%s";\n\n' % unicodedata.unidata_version)
/// out.write('    // code point = its full canonical decomposition (NFD of the character alone), hex, dot-separated.\n')
/// out.write('    private const string DecompositionData =\n')
/// lines = list(chunks(dec))
/// for i, l in enumerate(lines):
///     out.write('        "%s"%s\n' % (l, ';' if i == len(lines) - 1 else ' +'))
/// out.write('\n    // first-last=combining class, for every code point whose canonical combining class is not 0.\n')
/// out.write('    private const string CombiningClassData =\n')
/// rng = ['%X-%X=%d' % (a, b, c) if a != b else '%X=%d' % (a, c) for a, b, c in ccc]
/// lines = list(chunks(rng))
/// for i, l in enumerate(lines):
///     out.write('        "%s"%s\n' % (l, ';' if i == len(lines) - 1 else ' +'))
/// out.write('}\n')
/// print(len(dec), len(ccc), file=sys.stderr)
/// </code>
/// </remarks>
internal static partial class UnicodeNfd
{
    private static readonly Lazy<(Dictionary<int, string> Decomposition, Dictionary<int, byte> CombiningClass)> Tables = new(Parse);
    private static readonly Lazy<Dictionary<int, string>> CompatibilityTable = new(() => ParseDecompositions(CompatibilityDecompositionData, 3800));

    private static (Dictionary<int, string>, Dictionary<int, byte>) Parse()
    {
        var dec = ParseDecompositions(DecompositionData, 2100);
        var ccc = new Dictionary<int, byte>(1000);
        foreach (var entry in CombiningClassData.Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = entry.IndexOf('='), dash = entry.IndexOf('-');
            int first = int.Parse(entry.AsSpan(0, dash < 0 ? eq : dash), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            int last = dash < 0 ? first : int.Parse(entry.AsSpan(dash + 1, eq - dash - 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            byte cls = byte.Parse(entry.AsSpan(eq + 1), CultureInfo.InvariantCulture);
            for (int cp = first; cp <= last; cp++) ccc[cp] = cls;
        }
        return (dec, ccc);
    }

    private static Dictionary<int, string> ParseDecompositions(string data, int capacity)
    {
        var dec = new Dictionary<int, string>(capacity);
        foreach (var entry in data.Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = entry.IndexOf('=');
            var sb = new StringBuilder(4);
            foreach (var cp in entry[(eq + 1)..].Split('.')) sb.Append(char.ConvertFromUtf32(int.Parse(cp, NumberStyles.HexNumber, CultureInfo.InvariantCulture)));
            dec[int.Parse(entry.AsSpan(0, eq), NumberStyles.HexNumber, CultureInfo.InvariantCulture)] = sb.ToString();
        }
        return dec;
    }

    /// <summary>The canonical combining class of <paramref name="cp"/> (0 for starters).</summary>
    public static int CombiningClass(int cp) => Tables.Value.CombiningClass.TryGetValue(cp, out byte c) ? c : 0;

    /// <summary>
    /// NFD: every character replaced by its full canonical decomposition, then each run of combining marks put in
    /// canonical order (a stable sort by combining class). Lone surrogates become U+FFFD.
    /// </summary>
    public static string Decompose(string text) => Decompose(text, compatibility: null);

    /// <summary>
    /// NFKD: as <see cref="Decompose(string)"/> with compatibility decompositions (from <c>UnicodeNfkdData.cs</c>, written
    /// by the script in <see cref="UnicodeNfc"/>) taking precedence over canonical ones.
    /// </summary>
    public static string DecomposeCompatibility(string text) => Decompose(text, CompatibilityTable.Value);

    private static string Decompose(string text, Dictionary<int, string>? compatibility)
    {
        var (dec, _) = Tables.Value;
        var runes = new List<Rune>(text.Length + 8);
        foreach (var r in text.EnumerateRunes())
        {
            int s = r.Value - 0xAC00;
            if (s is >= 0 and < 11172)
            {
                // Hangul: S = 0xAC00 + (L·21 + V)·28 + T.
                runes.Add(new Rune(0x1100 + s / 588));
                runes.Add(new Rune(0x1161 + s % 588 / 28));
                if (s % 28 != 0) runes.Add(new Rune(0x11A7 + s % 28));
            }
            else if (compatibility != null && compatibility.TryGetValue(r.Value, out var k)) foreach (var x in k.EnumerateRunes()) runes.Add(x);
            else if (dec.TryGetValue(r.Value, out var d)) foreach (var x in d.EnumerateRunes()) runes.Add(x);
            else runes.Add(r);
        }
        // Canonical ordering (Unicode §3.11): insertion sort inside each run of non-starters keeps equal classes in order.
        for (int i = 1; i < runes.Count; i++)
        {
            int c = CombiningClass(runes[i].Value);
            if (c == 0) continue;
            for (int j = i; j > 0; j--)
            {
                int p = CombiningClass(runes[j - 1].Value);
                if (p <= c) break;
                (runes[j - 1], runes[j]) = (runes[j], runes[j - 1]);
            }
        }
        var sb = new StringBuilder(runes.Count + 4);
        foreach (var r in runes) sb.Append(r.ToString());
        return sb.ToString();
    }
}
