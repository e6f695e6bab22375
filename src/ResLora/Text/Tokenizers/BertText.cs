using System.Globalization;
using System.Text;

namespace ResLora.Text.Tokenizers;

/// <summary>
/// The text steps of BERT-style tokenizers, as Hugging Face tokenizers runs them: the <c>BertNormalizer</c>
/// (normalizers/bert.rs), the <c>BertPreTokenizer</c> (pre_tokenizers/bert.rs) and the <c>Whitespace</c>/<c>WhitespaceSplit</c>
/// pre-tokenizers. Text is walked by Unicode scalar value (Rust <c>char</c>), never by UTF-16 unit, so characters outside
/// the BMP (CJK extension B, emoji) are classified whole; a lone surrogate reads as U+FFFD, which is what a Rust string
/// would hold. Character classes come from .NET's Unicode tables; tokenizers uses the <c>unicode_categories</c> crate,
/// whose older tables can differ for characters assigned in recent Unicode versions.
/// </summary>
internal static class BertText
{
    /// <summary>
    /// BertNormalizer, in tokenizers' order: <paramref name="cleanText"/> drops NUL, U+FFFD and control characters (every
    /// C* category except tab, newline, carriage return) and turns whitespace into a plain space;
    /// <paramref name="chineseChars"/> puts spaces around CJK ideographs; <paramref name="stripAccents"/> decomposes (NFD)
    /// and drops non-spacing marks (Mn); <paramref name="lowercase"/> lowercases each character.
    /// </summary>
    public static string Normalize(string text, bool cleanText, bool chineseChars, bool stripAccents, bool lowercase)
    {
        var sb = new StringBuilder(text.Length + 8);
        foreach (var r in text.EnumerateRunes())
        {
            if (cleanText)
            {
                if (r.Value == 0 || r.Value == 0xFFFD || IsControl(r)) continue;
                if (IsWhitespace(r)) { sb.Append(' '); continue; }
            }
            if (chineseChars && IsChineseChar(r.Value)) { sb.Append(' ').Append(r.ToString()).Append(' '); continue; }
            sb.Append(r.ToString());
        }
        string s = sb.ToString();
        if (stripAccents) s = DropNonSpacingMarks(UnicodeNfd.Decompose(s));
        return lowercase ? Lowercase(s) : s;
    }

    /// <summary>Removes every non-spacing mark (Mn): tokenizers' <c>StripAccents</c>, which expects NFD input.</summary>
    public static string DropNonSpacingMarks(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (var r in s.EnumerateRunes())
            if (Rune.GetUnicodeCategory(r) != UnicodeCategory.NonSpacingMark) sb.Append(r.ToString());
        return sb.ToString();
    }

    /// <summary>
    /// Rust's <c>char::to_lowercase</c> per character, which tokenizers' <c>Lowercase</c> and BertNormalizer use: the
    /// Unicode lowercase mapping without context. The one unconditional multi-character mapping, U+0130 (İ) → "i̇", is
    /// written out because .NET's invariant casing maps one character to one.
    /// </summary>
    public static string Lowercase(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (var r in s.EnumerateRunes())
        {
            if (r.Value == 0x130) sb.Append("i\u0307");
            else sb.Append(Rune.ToLowerInvariant(r).ToString());
        }
        return sb.ToString();
    }

    /// <summary>
    /// BertPreTokenizer: split on whitespace (dropped), then every punctuation character becomes a token of its own
    /// ("don't!" → don ' t !).
    /// </summary>
    public static void BertPreTokenize(string s, List<string> output)
    {
        int start = 0, i = 0;
        while (i < s.Length)
        {
            Rune.DecodeFromUtf16(s.AsSpan(i), out var r, out int n);
            if (Rune.IsWhiteSpace(r)) { Flush(s, start, i, output); start = i + n; }
            else if (IsBertPunctuation(r)) { Flush(s, start, i, output); output.Add(s.Substring(i, n)); start = i + n; }
            i += n;
        }
        Flush(s, start, s.Length, output);
    }

    /// <summary>WhitespaceSplit: split on whitespace, which is dropped.</summary>
    public static void WhitespaceSplit(string s, List<string> output)
    {
        int start = 0, i = 0;
        while (i < s.Length)
        {
            Rune.DecodeFromUtf16(s.AsSpan(i), out var r, out int n);
            if (Rune.IsWhiteSpace(r)) { Flush(s, start, i, output); start = i + n; }
            i += n;
        }
        Flush(s, start, s.Length, output);
    }

    /// <summary>
    /// Whitespace: the tokens are the matches of Rust regex <c>\w+|[^\w\s]+</c>, i.e. maximal runs of word characters and
    /// maximal runs of other non-space characters ("it's" → it ' s). Written as a scan rather than a .NET regex because
    /// .NET's <c>\w</c> differs from Rust's (no Mc/Me/Nl, and it sees the two halves of a surrogate pair, not the letter).
    /// </summary>
    public static void WhitespaceWords(string s, List<string> output)
    {
        int start = 0, i = 0, kind = 0; // kind of the run in progress: 0 none, 1 word, 2 other
        while (i < s.Length)
        {
            Rune.DecodeFromUtf16(s.AsSpan(i), out var r, out int n);
            int k = Rune.IsWhiteSpace(r) ? 0 : IsRustWordChar(r) ? 1 : 2;
            if (k != kind) { Flush(s, start, i, output); start = i; kind = k; }
            if (k == 0) start = i + n;
            i += n;
        }
        Flush(s, start, s.Length, output);
    }

    private static void Flush(string s, int start, int end, List<string> output)
    {
        if (end > start) output.Add(s[start..end]);
    }

    // tokenizers' is_whitespace: tab, newline, carriage return and Rust char::is_whitespace (the White_Space property, which
    // is the set .NET's IsWhiteSpace tests).
    private static bool IsWhitespace(Rune r) => Rune.IsWhiteSpace(r);

    // tokenizers' is_control: unicode_categories' is_other (Cc, Cf, Co, Cn; Cs cannot occur in a scalar value), except
    // tab, newline and carriage return, which clean_text maps to spaces instead.
    private static bool IsControl(Rune r)
    {
        if (r.Value is '\t' or '\n' or '\r') return false;
        return Rune.GetUnicodeCategory(r) is UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.PrivateUse or UnicodeCategory.OtherNotAssigned or UnicodeCategory.Surrogate;
    }

    /// <summary>The CJK Unified Ideographs blocks exactly as tokenizers lists them (note its 0x2B920 start, not BERT's 0x2B820).</summary>
    public static bool IsChineseChar(int cp) =>
        cp is (>= 0x4E00 and <= 0x9FFF) or (>= 0x3400 and <= 0x4DBF) or (>= 0x20000 and <= 0x2A6DF) or (>= 0x2A700 and <= 0x2B73F)
            or (>= 0x2B740 and <= 0x2B81F) or (>= 0x2B920 and <= 0x2CEAF) or (>= 0xF900 and <= 0xFAFF) or (>= 0x2F800 and <= 0x2FA1F);

    /// <summary>ASCII punctuation (33-47, 58-64, 91-96, 123-126: includes $ + &lt; = &gt; ^ ` | ~) or any Unicode P* character.</summary>
    public static bool IsBertPunctuation(Rune r)
    {
        int c = r.Value;
        if (c is (>= 33 and <= 47) or (>= 58 and <= 64) or (>= 91 and <= 96) or (>= 123 and <= 126)) return true;
        return Rune.GetUnicodeCategory(r) is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation or UnicodeCategory.OpenPunctuation
            or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation;
    }

    // Rust regex's Unicode \w (UTS #18): Alphabetic, marks, decimal digits, connector punctuation, ZWNJ/ZWJ. Alphabetic is
    // letters, letter numbers and Other_Alphabetic, which is marks (covered) plus the circled letters U+24B6-24E9.
    private static bool IsRustWordChar(Rune r)
    {
        if (r.Value is 0x200C or 0x200D or (>= 0x24B6 and <= 0x24E9)) return true;
        return Rune.GetUnicodeCategory(r) switch
        {
            UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter or UnicodeCategory.ModifierLetter
                or UnicodeCategory.OtherLetter or UnicodeCategory.LetterNumber or UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark
                or UnicodeCategory.EnclosingMark or UnicodeCategory.DecimalDigitNumber or UnicodeCategory.ConnectorPunctuation => true,
            _ => false,
        };
    }
}
