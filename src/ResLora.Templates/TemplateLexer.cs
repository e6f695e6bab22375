using System.Globalization;
using System.Text;

namespace ResLora.Templates;

internal enum TokenKind { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Integer, Float, Operator, Eof }

/// <summary>One token; <see cref="Value"/> holds the decoded literal for strings and numbers.</summary>
internal readonly record struct Token(TokenKind Kind, string Text, object? Value, int Line)
{
    public bool Is(TokenKind kind, string text) => Kind == kind && Text == text;

    public bool IsName(string name) => Kind == TokenKind.Name && Text == name;

    public bool IsOp(string op) => Kind == TokenKind.Operator && Text == op;

    public string Describe() => Kind switch
    {
        TokenKind.Eof => "the end of the template",
        TokenKind.VarEnd => "'}}'",
        TokenKind.BlockEnd => "'%}'",
        TokenKind.VarBegin => "'{{'",
        TokenKind.BlockBegin => "'{%'",
        TokenKind.String => "a string",
        TokenKind.Text => "template text",
        _ => $"'{Text}'",
    };
}

/// <summary>
/// Splits a template into text and tag tokens the way Jinja's lexer does under the settings Hugging Face uses
/// (transformers' chat-template environment: <c>trim_blocks=True, lstrip_blocks=True</c>, newlines normalised to
/// "\n", one trailing newline dropped): <c>{%-</c>/<c>{{-</c>/<c>{#-</c> strip all whitespace before the tag,
/// <c>-%}</c>/<c>-}}</c>/<c>-#}</c> all whitespace after it; trim_blocks removes the first newline after a block
/// or comment tag; lstrip_blocks removes spaces and tabs from the start of a line up to a block or comment tag;
/// <c>+</c> turns both off for that tag. Comments produce no token.
/// </summary>
internal sealed class TemplateLexer
{
    private static readonly string[] Operators =
        { "//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]", "(", ")", "{", "}", "<", ">", "=", ".", ":", "|", ",", ";" };

    private readonly string _src;
    private readonly string? _name;
    private readonly List<int> _lineStarts = new() { 0 };
    private readonly List<Token> _tokens = new();
    private int _pos;

    private TemplateLexer(string source, string? name)
    {
        // Jinja: newline sequences become "\n" and a single trailing newline is dropped (keep_trailing_newline=False).
        string s = source.Replace("\r\n", "\n").Replace('\r', '\n');
        if (s.EndsWith('\n')) s = s[..^1];
        _src = s;
        _name = name;
        for (int i = 0; i < s.Length; i++) if (s[i] == '\n') _lineStarts.Add(i + 1);
    }

    public static List<Token> Tokenize(string source, string? name)
    {
        var lexer = new TemplateLexer(source, name);
        lexer.Run();
        return lexer._tokens;
    }

    /// <summary>Python's str.isspace, which also counts the separators U+001C..U+001F.</summary>
    internal static bool IsPySpace(char c) => char.IsWhiteSpace(c) || (c >= '\x1c' && c <= '\x1f');

    private int LineAt(int pos)
    {
        int i = _lineStarts.BinarySearch(pos);
        return i >= 0 ? i + 1 : ~i;
    }

    private TemplateException Error(int pos, string detail) => new(_name, LineAt(pos), detail);

    private void Run()
    {
        while (_pos < _src.Length)
        {
            int tag = NextTagStart(_pos);
            int textEnd = tag < 0 ? _src.Length : tag;
            string text = _src[_pos..textEnd];
            if (tag >= 0)
            {
                char kind = _src[tag + 1];
                char sign = tag + 2 < _src.Length && (_src[tag + 2] == '-' || _src[tag + 2] == '+') ? _src[tag + 2] : '\0';
                if (sign == '-') text = TrimEndPy(text);
                else if (sign != '+' && kind != '{') text = LstripBlock(text, lineStarting: _pos == 0 || _src[_pos - 1] == '\n');
                if (text.Length > 0) _tokens.Add(new Token(TokenKind.Text, text, null, LineAt(_pos)));
                int inner = tag + 2 + (sign == '\0' ? 0 : 1);
                if (kind == '#') SkipComment(tag, inner);
                else LexTag(tag, inner, kind == '{');
            }
            else
            {
                if (text.Length > 0) _tokens.Add(new Token(TokenKind.Text, text, null, LineAt(_pos)));
                _pos = _src.Length;
            }
        }
        _tokens.Add(new Token(TokenKind.Eof, "", null, LineAt(_src.Length)));
    }

    private int NextTagStart(int from)
    {
        for (int i = _src.IndexOf('{', from); i >= 0 && i + 1 < _src.Length; i = _src.IndexOf('{', i + 1))
        {
            char c = _src[i + 1];
            if (c == '{' || c == '%' || c == '#') return i;
        }
        return -1;
    }

    private static string TrimEndPy(string s)
    {
        int end = s.Length;
        while (end > 0 && IsPySpace(s[end - 1])) end--;
        return s[..end];
    }

    /// <summary>lstrip_blocks: drop the whitespace between the line start and the tag when nothing else is there.</summary>
    private static string LstripBlock(string text, bool lineStarting)
    {
        int lineStart = text.LastIndexOf('\n') + 1;
        if (lineStart == 0 && !lineStarting) return text;
        for (int i = lineStart; i < text.Length; i++) if (!IsPySpace(text[i])) return text;
        return text[..lineStart];
    }

    private void SkipWhitespace()
    {
        while (_pos < _src.Length && IsPySpace(_src[_pos])) _pos++;
    }

    private void SkipComment(int tag, int inner)
    {
        int end = _src.IndexOf("#}", inner, StringComparison.Ordinal);
        if (end < 0) throw Error(tag, "the comment '{#' is never closed with '#}'");
        _pos = end + 2;
        char sign = end > inner && (_src[end - 1] == '-' || _src[end - 1] == '+') ? _src[end - 1] : '\0';
        if (sign == '-') SkipWhitespace();
        else if (sign == '\0' && _pos < _src.Length && _src[_pos] == '\n') _pos++; // trim_blocks
    }

    private void LexTag(int tag, int inner, bool variable)
    {
        _tokens.Add(new Token(variable ? TokenKind.VarBegin : TokenKind.BlockBegin, variable ? "{{" : "{%", null, LineAt(tag)));
        _pos = inner;
        var brackets = new Stack<char>();
        while (true)
        {
            SkipWhitespace();
            if (_pos >= _src.Length)
                throw Error(tag, $"the tag '{(variable ? "{{" : "{%")}' is never closed with '{(variable ? "}}" : "%}")}'");
            if (brackets.Count == 0 && TryTagEnd(variable)) return;
            LexExpressionToken(brackets);
        }
    }

    private bool TryTagEnd(bool variable)
    {
        string close = variable ? "}}" : "%}";
        int line = LineAt(_pos);
        var kind = variable ? TokenKind.VarEnd : TokenKind.BlockEnd;
        if (At("-" + close))
        {
            _tokens.Add(new Token(kind, close, null, line));
            _pos += 3;
            SkipWhitespace();
            return true;
        }
        if (At("+" + close))
        {
            _tokens.Add(new Token(kind, close, null, line));
            _pos += 3;
            return true;
        }
        if (!At(close)) return false;
        _tokens.Add(new Token(kind, close, null, line));
        _pos += 2;
        if (!variable && _pos < _src.Length && _src[_pos] == '\n') _pos++; // trim_blocks
        return true;
    }

    private bool At(string s) => string.CompareOrdinal(_src, _pos, s, 0, s.Length) == 0;

    private void LexExpressionToken(Stack<char> brackets)
    {
        int start = _pos, line = LineAt(_pos);
        char c = _src[_pos];
        if (char.IsAsciiDigit(c))
        {
            LexNumber(line);
            return;
        }
        if (char.IsLetter(c) || c == '_')
        {
            while (_pos < _src.Length && (char.IsLetterOrDigit(_src[_pos]) || _src[_pos] == '_')) _pos++;
            _tokens.Add(new Token(TokenKind.Name, _src[start.._pos], null, line));
            return;
        }
        if (c == '\'' || c == '"')
        {
            _tokens.Add(new Token(TokenKind.String, _src[start..SkipString(c)], DecodeString(_src[(start + 1)..(_pos - 1)]), line));
            return;
        }
        foreach (string op in Operators)
        {
            if (!At(op)) continue;
            if (op is "(" or "[" or "{") brackets.Push(op[0]);
            else if (op is ")" or "]" or "}")
            {
                char open = op == ")" ? '(' : op == "]" ? '[' : '{';
                if (brackets.Count == 0) throw Error(start, $"unexpected '{op}'");
                char top = brackets.Pop();
                if (top != open) throw Error(start, $"unexpected '{op}'; expected '{(top == '(' ? ')' : top == '[' ? ']' : '}')}'");
            }
            _pos += op.Length;
            _tokens.Add(new Token(TokenKind.Operator, op, null, line));
            return;
        }
        throw Error(start, $"unexpected character '{c}'");
    }

    private int SkipString(char quote)
    {
        int start = _pos++;
        while (_pos < _src.Length && _src[_pos] != quote) _pos += _src[_pos] == '\\' ? 2 : 1;
        if (_pos >= _src.Length) throw Error(start, "a string literal is never closed");
        return ++_pos;
    }

    /// <summary>Integers (<c>1_000</c>) and floats (<c>1.5</c>, <c>1e-3</c>, <c>2.5E+4</c>), as Jinja reads them.</summary>
    private void LexNumber(int line)
    {
        int start = _pos;
        SkipDigits();
        bool isFloat = false;
        // "x.0.1" is two lookups, not x then 0.1 (Jinja's float pattern has the same look-behind).
        bool afterDot = start > 0 && _src[start - 1] == '.';
        if (!afterDot && _pos + 1 < _src.Length && _src[_pos] == '.' && char.IsAsciiDigit(_src[_pos + 1]))
        {
            _pos++;
            SkipDigits();
            isFloat = true;
        }
        if (!afterDot && _pos < _src.Length && (_src[_pos] == 'e' || _src[_pos] == 'E'))
        {
            int save = _pos++;
            if (_pos < _src.Length && (_src[_pos] == '+' || _src[_pos] == '-')) _pos++;
            if (_pos < _src.Length && char.IsAsciiDigit(_src[_pos]))
            {
                SkipDigits();
                isFloat = true;
            }
            else _pos = save;
        }
        string text = _src[start.._pos];
        string digits = text.Replace("_", "");
        if (isFloat)
        {
            _tokens.Add(new Token(TokenKind.Float, text, double.Parse(digits, NumberStyles.Float, CultureInfo.InvariantCulture), line));
            return;
        }
        if (!long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out long value))
            throw Error(start, $"the integer {text} is too large");
        _tokens.Add(new Token(TokenKind.Integer, text, value, line));
    }

    private void SkipDigits()
    {
        while (_pos < _src.Length && (char.IsAsciiDigit(_src[_pos]) || (_src[_pos] == '_' && _pos + 1 < _src.Length && char.IsAsciiDigit(_src[_pos + 1])))) _pos++;
    }

    /// <summary>Python's unicode-escape decoding, which Jinja applies to string literals.</summary>
    private static string DecodeString(string raw)
    {
        if (!raw.Contains('\\')) return raw;
        var sb = new StringBuilder(raw.Length);
        for (int i = 0; i < raw.Length; i++)
        {
            char c = raw[i];
            if (c != '\\' || i + 1 >= raw.Length)
            {
                sb.Append(c);
                continue;
            }
            char e = raw[++i];
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case '\\': sb.Append('\\'); break;
                case '\'': sb.Append('\''); break;
                case '"': sb.Append('"'); break;
                case 'a': sb.Append('\a'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'v': sb.Append('\v'); break;
                case '\n': break; // a backslash-newline continues the line
                case 'x' when TryHex(raw, i + 1, 2, out int x): sb.Append((char)x); i += 2; break;
                case 'u' when TryHex(raw, i + 1, 4, out int u): sb.Append((char)u); i += 4; break;
                case 'U' when TryHex(raw, i + 1, 8, out int cp) && cp <= 0x10FFFF: sb.Append(char.ConvertFromUtf32(cp)); i += 8; break;
                case >= '0' and <= '7':
                    int octal = e - '0', n = 1;
                    while (n < 3 && i + 1 < raw.Length && raw[i + 1] is >= '0' and <= '7') { octal = octal * 8 + (raw[++i] - '0'); n++; }
                    sb.Append((char)octal);
                    break;
                default: sb.Append('\\').Append(e); break; // Python keeps unknown escapes as written
            }
        }
        return sb.ToString();
    }

    private static bool TryHex(string s, int start, int count, out int value)
    {
        value = 0;
        return start + count <= s.Length && int.TryParse(s.AsSpan(start, count), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out value);
    }
}
