using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace ResLora.Text.Tokenizers;

/// <summary>
/// A piece of text on its way through a tokenizer's normalizers and pre-tokenizers, with, for each UTF-16 unit, the
/// range of the original input it came from: Hugging Face tokenizers' <c>NormalizedString</c> alignments, reduced to
/// what token offsets need. Every transformation takes the text its plain (offset-free) counterpart produced and only
/// works out where each unit came from; when it cannot (a normalizer that is not character-local), every unit gets the
/// whole input range of the piece, so offsets only ever widen, never point at the wrong characters.
/// </summary>
internal sealed class AlignedText
{
    private readonly int[] _start;
    private readonly int[] _end;
    private readonly int _anchor;

    private AlignedText(string text, int[] start, int[] end, int anchor)
    {
        Text = text;
        _start = start;
        _end = end;
        _anchor = anchor;
    }

    public string Text { get; }

    public int Length => Text.Length;

    /// <summary>Text taken from the input at <paramref name="offset"/>: unit i came from [offset + i, offset + i + 1).</summary>
    public static AlignedText Original(string text, int offset)
    {
        var start = new int[text.Length];
        var end = new int[text.Length];
        for (int i = 0; i < text.Length; i++) { start[i] = offset + i; end[i] = offset + i + 1; }
        return new AlignedText(text, start, end, offset);
    }

    /// <summary>The input range units [<paramref name="from"/>, <paramref name="to"/>) came from; an empty range is a point.</summary>
    public (int Start, int End) Span(int from, int to)
    {
        if (from >= to)
        {
            int p = from < Length ? _start[from] : Length > 0 ? _end[Length - 1] : _anchor;
            return (p, p);
        }
        int s = int.MaxValue, e = int.MinValue;
        for (int i = from; i < to; i++)
        {
            s = Math.Min(s, _start[i]);
            e = Math.Max(e, _end[i]);
        }
        return (s, e);
    }

    public AlignedText Slice(int from, int length) =>
        new(Text.Substring(from, length), _start[from..(from + length)], _end[from..(from + length)], Span(from, from).Start);

    /// <summary><paramref name="text"/> as a whole derived from this whole piece: every unit gets the piece's full range.</summary>
    public AlignedText Coarse(string text)
    {
        var (s, e) = Span(0, Length);
        var start = new int[text.Length];
        var end = new int[text.Length];
        Array.Fill(start, s);
        Array.Fill(end, e);
        return new AlignedText(text, start, end, s);
    }

    /// <summary>
    /// <paramref name="prefix"/> + this text; the prefix takes the first character's range, as tokenizers'
    /// <c>NormalizedString::prepend</c> aligns it (a Llama <c>▁</c> belongs to the word it starts).
    /// </summary>
    public AlignedText Prepend(string prefix)
    {
        var b = new Builder();
        var (s, e) = Length == 0 ? Span(0, 0) : Span(0, RuneLength(0));
        b.Append(prefix, s, e);
        b.AppendSlice(this, 0, Length);
        return b.Build(prefix + Text, this);
    }

    /// <summary>Every match of <paramref name="pattern"/> replaced by <paramref name="content"/> (taken literally), which takes the match's range.</summary>
    public AlignedText Replace(Regex pattern, string content, string expected)
    {
        var b = new Builder();
        int last = 0;
        foreach (Match m in pattern.Matches(Text))
        {
            b.AppendSlice(this, last, m.Index);
            var (s, e) = Span(m.Index, m.Index + m.Length);
            b.Append(content, s, e);
            last = m.Index + m.Length;
        }
        b.AppendSlice(this, last, Length);
        return b.Build(expected, this);
    }

    /// <summary>
    /// A text function (a Unicode normalization, lowercasing, BERT's normalizer) whose output is <paramref name="expected"/>
    /// for the whole text. It is applied again to each character with its combining marks; when those outputs add up to the
    /// whole, each output unit takes the range of the characters it came from, otherwise the piece's full range.
    /// </summary>
    public AlignedText Map(Func<string, string> f, string expected)
    {
        if (expected == Text) return this;
        var b = new Builder();
        for (int i = 0; i < Length;)
        {
            int j = i + RuneLength(i);
            while (j < Length && IsMark(j)) j += RuneLength(j);
            var (s, e) = Span(i, j);
            b.Append(f(Text[i..j]), s, e);
            i = j;
        }
        return b.Build(expected, this);
    }

    /// <summary>GPT-2's byte-level alphabet: one unit per UTF-8 byte, each with the range of the character it encodes.</summary>
    public AlignedText ToByteLevel()
    {
        string expected = ByteLevelAlphabet.Encode(Text);
        var b = new Builder();
        for (int i = 0; i < Length;)
        {
            int n = RuneLength(i);
            // A lone surrogate is encoded as U+FFFD (3 bytes), as Encoding.UTF8 does for the whole string.
            int bytes = Encoding.UTF8.GetByteCount(Text.AsSpan(i, n));
            var (s, e) = Span(i, i + n);
            b.Append(expected.Substring(b.Length, Math.Min(bytes, expected.Length - b.Length)), s, e);
            i += n;
        }
        return b.Build(expected, this);
    }

    private int RuneLength(int i) =>
        char.IsHighSurrogate(Text[i]) && i + 1 < Length && char.IsLowSurrogate(Text[i + 1]) ? 2 : 1;

    private bool IsMark(int i)
    {
        var cat = CharUnicodeInfo.GetUnicodeCategory(Text, i);
        return cat is UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark;
    }

    /// <summary>Collects units with their ranges; <see cref="Build"/> falls back to a coarse alignment when the text is not the expected one.</summary>
    private sealed class Builder
    {
        private readonly StringBuilder _text = new();
        private readonly List<int> _start = new();
        private readonly List<int> _end = new();

        public int Length => _text.Length;

        public void Append(string s, int start, int end)
        {
            _text.Append(s);
            for (int i = 0; i < s.Length; i++) { _start.Add(start); _end.Add(end); }
        }

        public void AppendSlice(AlignedText a, int from, int to)
        {
            _text.Append(a.Text, from, to - from);
            for (int i = from; i < to; i++) { _start.Add(a._start[i]); _end.Add(a._end[i]); }
        }

        public AlignedText Build(string expected, AlignedText source) =>
            _text.Length == expected.Length && _text.ToString() == expected
                ? new AlignedText(expected, _start.ToArray(), _end.ToArray(), source.Span(0, 0).Start)
                : source.Coarse(expected);
    }
}
