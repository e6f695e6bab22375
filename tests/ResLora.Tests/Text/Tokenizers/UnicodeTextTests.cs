using ResLora.Text.Tokenizers;

namespace ResLora.Tests.Text.Tokenizers;

/// <summary>The Unicode steps BERT normalization rests on, checked against the Unicode Character Database by hand.</summary>
public sealed class UnicodeTextTests
{
    [Theory]
    [InlineData("\u00E9", "e\u0301")] // é = e + acute
    [InlineData("\u01D6", "u\u0308\u0304")] // ǖ decomposes twice: ü + macron, ü = u + diaeresis
    [InlineData("\uD55C", "\u1112\u1161\u11AB")] // 한: Hangul by formula, L V T
    [InlineData("\uAC00", "\u1100\u1161")] // 가: no trailing consonant
    [InlineData("a\u0301\u0316", "a\u0316\u0301")] // marks reordered by combining class: 220 before 230
    [InlineData("\u1E69", "s\u0323\u0307")] // ṩ: dot below (220) before dot above (230)
    [InlineData("\u212B", "A\u030A")] // Angstrom sign is canonically Å
    [InlineData("abc \u4E2D", "abc \u4E2D")] // nothing to decompose
    public void Decompose_KnownCharacters_GivesNfd(string input, string nfd)
    {
        Assert.Equal(nfd, UnicodeNfd.Decompose(input));
    }

    [Fact]
    public void Lowercase_DottedCapitalI_BecomesIWithCombiningDot()
    {
        // Rust's char::to_lowercase maps U+0130 to two characters; every other letter maps to one.
        Assert.Equal("i\u0307stanbul", BertText.Lowercase("\u0130STANBUL"));
        Assert.Equal("stra\u00DFe \u01C6", BertText.Lowercase("STRA\u00DFE \u01C4"));
    }

    [Fact]
    public void Normalize_StripAccents_DropsOnlyNonSpacingMarks()
    {
        Assert.Equal("creme brulee", BertText.Normalize("Crème Brûlée", cleanText: true, chineseChars: true, stripAccents: true, lowercase: true));
        // The Angstrom sign decomposes to A + ring, which is then dropped; Hangul jamo are letters and stay.
        Assert.Equal("A \u1112\u1161\u11AB", BertText.Normalize("\u212B \uD55C", cleanText: false, chineseChars: false, stripAccents: true, lowercase: false));
    }
}
