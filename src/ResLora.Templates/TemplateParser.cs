namespace ResLora.Templates;

/// <summary>
/// Parses the token stream into statements, following Jinja's grammar for the subset chat templates use. Every
/// construct outside the subset (macros, includes, unknown tags, filters, tests, functions and methods) is refused
/// here, at load time, with the line it is on.
/// </summary>
internal sealed partial class TemplateParser
{
    /// <summary>Tags that continue or close a block; met where no such block is open they are a nesting error.</summary>
    private static readonly HashSet<string> BlockEnds = new(StringComparer.Ordinal)
    { "elif", "else", "endif", "endfor", "endset", "endgeneration" };

    private readonly List<Token> _tokens;
    private readonly string? _name;
    private readonly int _maxDepth;
    private int _i;
    private int _loopDepth;
    private int _depth;

    private TemplateParser(List<Token> tokens, string? name, TemplateBudget budget)
    {
        _tokens = tokens;
        _name = name;
        _maxDepth = budget.MaxDepth;
    }

    public static IReadOnlyList<Node> Parse(string source, string? name, TemplateBudget? budget = null)
    {
        var parser = new TemplateParser(TemplateLexer.Tokenize(source, name), name, budget ?? TemplateBudget.Default);
        return parser.ParseBody(Array.Empty<string>(), null, 0, out _);
    }

    /// <summary>
    /// Enters one level of the recursive descent (a block, a bracket, an operand of a prefix operator); the parse is
    /// refused past <see cref="TemplateBudget.MaxDepth"/>, long before the thread's stack could overflow. A failed
    /// parse is abandoned whole, so only the normal path calls <see cref="Unnest"/>.
    /// </summary>
    private void Nest(int line)
    {
        if (++_depth > _maxDepth || !System.Runtime.CompilerServices.RuntimeHelpers.TryEnsureSufficientExecutionStack())
            throw Error(line, $"the template nests blocks, brackets or operators deeper than the limit of {_maxDepth} levels (TemplateBudget.MaxDepth)");
    }

    private void Unnest() => _depth--;

    private Token Cur => _tokens[_i];

    private Token Peek(int k = 1) => _tokens[Math.Min(_i + k, _tokens.Count - 1)];

    private Token Advance()
    {
        var t = _tokens[_i];
        if (t.Kind != TokenKind.Eof) _i++;
        return t;
    }

    private TemplateException Error(int line, string detail) => new(_name, line, detail);

    private void Expect(TokenKind kind, string what)
    {
        if (Cur.Kind != kind) throw Error(Cur.Line, $"expected {what} but found {Cur.Describe()}");
        Advance();
    }

    private void ExpectOp(string op)
    {
        if (!Cur.IsOp(op)) throw Error(Cur.Line, $"expected '{op}' but found {Cur.Describe()}");
        Advance();
    }

    private void ExpectBlockEnd() => Expect(TokenKind.BlockEnd, "'%}'");

    private string ExpectName(string what)
    {
        if (Cur.Kind != TokenKind.Name) throw Error(Cur.Line, $"expected {what} but found {Cur.Describe()}");
        return Advance().Text;
    }

    /// <summary>
    /// Statements up to one of the tags in <paramref name="ends"/> (consumed up to its name; the caller reads the
    /// rest of that tag). <paramref name="opener"/> is the block being parsed, for the never-closed error.
    /// </summary>
    private List<Node> ParseBody(string[] ends, string? opener, int openerLine, out string end)
    {
        var nodes = new List<Node>();
        while (true)
        {
            var tok = Cur;
            switch (tok.Kind)
            {
                case TokenKind.Text:
                    nodes.Add(new TextNode(tok.Line, tok.Text));
                    Advance();
                    break;
                case TokenKind.VarBegin:
                    Advance();
                    if (Cur.Kind == TokenKind.VarEnd) throw Error(tok.Line, "'{{ }}' holds no expression");
                    var value = ParseTuple();
                    Expect(TokenKind.VarEnd, "'}}'");
                    nodes.Add(new OutputNode(tok.Line, value));
                    break;
                case TokenKind.BlockBegin:
                    var nameTok = Peek();
                    if (nameTok.Kind != TokenKind.Name) throw Error(nameTok.Line, $"expected a tag name after '{{%' but found {nameTok.Describe()}");
                    _i += 2;
                    if (Array.IndexOf(ends, nameTok.Text) >= 0)
                    {
                        end = nameTok.Text;
                        return nodes;
                    }
                    nodes.Add(ParseStatement(nameTok, opener, openerLine));
                    break;
                case TokenKind.Eof:
                    if (opener is not null)
                        throw Error(openerLine, $"the '{opener}' tag is never closed; expected '{{% {ends[^1]} %}}'");
                    end = "";
                    return nodes;
                default:
                    throw Error(tok.Line, $"unexpected {tok.Describe()}");
            }
        }
    }

    private Node ParseStatement(Token tag, string? opener, int openerLine)
    {
        Nest(tag.Line);
        var node = ParseStatementCore(tag, opener, openerLine);
        Unnest();
        return node;
    }

    private Node ParseStatementCore(Token tag, string? opener, int openerLine)
    {
        int line = tag.Line;
        switch (tag.Text)
        {
            case "if": return ParseIf(line);
            case "for": return ParseFor(line);
            case "set": return ParseSet(line);
            case "break" or "continue":
                if (_loopDepth == 0) throw Error(line, $"'{tag.Text}' is only allowed inside a for loop");
                ExpectBlockEnd();
                return new LoopControlNode(line, tag.Text == "break");
            case "generation":
                ExpectBlockEnd();
                var body = ParseBody(new[] { "endgeneration" }, "generation", line, out _);
                ExpectBlockEnd();
                return new BlockNode(line, body);
        }
        if (BlockEnds.Contains(tag.Text))
            throw Error(line, opener is null
                ? $"unexpected '{tag.Text}': no block is open"
                : $"unexpected '{tag.Text}'; the '{opener}' tag on line {openerLine} is still open");
        throw Error(line, $"the '{tag.Text}' tag is not supported");
    }

    private IfNode ParseIf(int line)
    {
        var branches = new List<(Expr, IReadOnlyList<Node>)>();
        string[] ends = { "elif", "else", "endif" };
        string end;
        do
        {
            var test = ParseExpression(withCondition: false);
            ExpectBlockEnd();
            branches.Add((test, ParseBody(ends, "if", line, out end)));
        }
        while (end == "elif");
        List<Node>? otherwise = null;
        if (end == "else")
        {
            ExpectBlockEnd();
            otherwise = ParseBody(new[] { "endif" }, "if", line, out _);
        }
        ExpectBlockEnd();
        return new IfNode(line, branches, otherwise);
    }

    private ForNode ParseFor(int line)
    {
        var targets = ParseTargets();
        if (!Cur.IsName("in")) throw Error(Cur.Line, $"expected 'in' but found {Cur.Describe()}");
        Advance();
        var iterable = ParseExpression(withCondition: false);
        Expr? filter = null;
        if (Cur.IsName("if"))
        {
            Advance();
            filter = ParseExpression();
        }
        if (Cur.IsName("recursive")) throw Error(Cur.Line, "recursive for loops are not supported");
        ExpectBlockEnd();
        _loopDepth++;
        var body = ParseBody(new[] { "else", "endfor" }, "for", line, out string end);
        _loopDepth--;
        List<Node>? otherwise = null;
        if (end == "else")
        {
            ExpectBlockEnd();
            otherwise = ParseBody(new[] { "endfor" }, "for", line, out _);
        }
        ExpectBlockEnd();
        return new ForNode(line, targets, iterable, filter, body, otherwise);
    }

    /// <summary><c>x</c>, <c>a, b</c> or <c>(a, b)</c>.</summary>
    private List<string> ParseTargets()
    {
        bool paren = Cur.IsOp("(");
        if (paren) Advance();
        var names = new List<string> { ExpectName("a variable name") };
        while (Cur.IsOp(","))
        {
            Advance();
            if (paren && Cur.IsOp(")")) break;
            names.Add(ExpectName("a variable name"));
        }
        if (paren) ExpectOp(")");
        return names;
    }

    private SetNode ParseSet(int line)
    {
        List<string> targets;
        string? attribute = null;
        if (Cur.Kind == TokenKind.Name && Peek().IsOp("."))
        {
            targets = new List<string> { Advance().Text };
            Advance();
            attribute = ExpectName("an attribute name");
        }
        else targets = ParseTargets();
        if (Cur.IsOp("="))
        {
            Advance();
            var value = ParseTuple();
            ExpectBlockEnd();
            return new SetNode(line, targets, attribute, value, null);
        }
        if (targets.Count > 1) throw Error(Cur.Line, $"expected '=' but found {Cur.Describe()}");
        if (Cur.IsOp("|")) throw Error(Cur.Line, "a filtered block '{% set x | filter %}' is not supported");
        ExpectBlockEnd();
        var body = ParseBody(new[] { "endset" }, "set", line, out _);
        ExpectBlockEnd();
        return new SetNode(line, targets, attribute, null, body);
    }
}
