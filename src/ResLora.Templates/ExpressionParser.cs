namespace ResLora.Templates;

/// <summary>
/// Expressions, with Jinja's precedence from loosest to tightest: <c>x if c else y</c>, <c>or</c>, <c>and</c>,
/// <c>not</c>, comparisons (<c>== != &lt; &lt;= &gt; &gt;= in not in</c>, chained), <c>+ -</c>, <c>~</c>,
/// <c>* / // %</c>, <c>**</c>, unary <c>- +</c>, then postfix (<c>.attr</c>, <c>[index]</c>, <c>[a:b:c]</c>,
/// calls) and filters/tests (<c>|f</c>, <c>is t</c>), so <c>a + b | trim</c> trims <c>b</c> alone.
/// </summary>
internal sealed partial class TemplateParser
{
    private static readonly string[] CompareOps = { "==", "!=", "<", "<=", ">", ">=" };

    /// <summary>An expression, or a tuple <c>a, b</c> (as a list) where Jinja allows one (print, set).</summary>
    private Expr ParseTuple()
    {
        int line = Cur.Line;
        var first = ParseExpression();
        if (!Cur.IsOp(",")) return first;
        var items = new List<Expr> { first };
        while (Cur.IsOp(","))
        {
            Advance();
            if (Cur.Kind is TokenKind.VarEnd or TokenKind.BlockEnd) break;
            items.Add(ParseExpression());
        }
        return new ListExpr(line, items);
    }

    private Expr ParseExpression(bool withCondition = true)
    {
        Nest(Cur.Line);
        var expr = withCondition ? ParseCondition() : ParseOr();
        Unnest();
        return expr;
    }

    private Expr ParseCondition()
    {
        var expr = ParseOr();
        while (Cur.IsName("if"))
        {
            int line = Advance().Line;
            var test = ParseOr();
            Expr? otherwise = null;
            if (Cur.IsName("else"))
            {
                Advance();
                Nest(line);
                otherwise = ParseCondition();
                Unnest();
            }
            expr = new CondExpr(line, test, expr, otherwise);
        }
        return expr;
    }

    private Expr ParseOr()
    {
        var left = ParseAnd();
        while (Cur.IsName("or")) left = new BinaryExpr(Advance().Line, "or", left, ParseAnd());
        return left;
    }

    private Expr ParseAnd()
    {
        var left = ParseNot();
        while (Cur.IsName("and")) left = new BinaryExpr(Advance().Line, "and", left, ParseNot());
        return left;
    }

    private Expr ParseNot()
    {
        if (!Cur.IsName("not")) return ParseCompare();
        int line = Advance().Line;
        Nest(line);
        var operand = ParseNot();
        Unnest();
        return new UnaryExpr(line, "not", operand);
    }

    private Expr ParseCompare()
    {
        int line = Cur.Line;
        var first = ParseMath1();
        var rest = new List<(string, Expr)>();
        while (true)
        {
            if (Cur.Kind == TokenKind.Operator && Array.IndexOf(CompareOps, Cur.Text) >= 0)
                rest.Add((Advance().Text, ParseMath1()));
            else if (Cur.IsName("in"))
            {
                Advance();
                rest.Add(("in", ParseMath1()));
            }
            else if (Cur.IsName("not") && Peek().IsName("in"))
            {
                _i += 2;
                rest.Add(("notin", ParseMath1()));
            }
            else break;
        }
        return rest.Count == 0 ? first : new CompareExpr(line, first, rest);
    }

    private Expr ParseMath1()
    {
        var left = ParseConcat();
        while (Cur.IsOp("+") || Cur.IsOp("-"))
        {
            var op = Advance();
            left = new BinaryExpr(op.Line, op.Text, left, ParseConcat());
        }
        return left;
    }

    private Expr ParseConcat()
    {
        int line = Cur.Line;
        var parts = new List<Expr> { ParseMath2() };
        while (Cur.IsOp("~"))
        {
            Advance();
            parts.Add(ParseMath2());
        }
        return parts.Count == 1 ? parts[0] : new ConcatExpr(line, parts);
    }

    private Expr ParseMath2()
    {
        var left = ParsePow();
        while (Cur.IsOp("*") || Cur.IsOp("/") || Cur.IsOp("//") || Cur.IsOp("%"))
        {
            var op = Advance();
            left = new BinaryExpr(op.Line, op.Text, left, ParsePow());
        }
        return left;
    }

    private Expr ParsePow()
    {
        var left = ParseUnary();
        while (Cur.IsOp("**"))
        {
            var op = Advance();
            left = new BinaryExpr(op.Line, "**", left, ParseUnary());
        }
        return left;
    }

    private Expr ParseUnary(bool withFilter = true)
    {
        Expr node;
        if (Cur.IsOp("-") || Cur.IsOp("+"))
        {
            var op = Advance();
            Nest(op.Line);
            node = new UnaryExpr(op.Line, op.Text, ParseUnary(withFilter: false));
            Unnest();
        }
        else node = ParsePrimary();
        node = ParsePostfix(node);
        return withFilter ? ParseFilters(node) : node;
    }

    private Expr ParsePrimary()
    {
        var tok = Cur;
        switch (tok.Kind)
        {
            case TokenKind.Name:
                Advance();
                return tok.Text switch
                {
                    "true" or "True" => new ConstExpr(tok.Line, true),
                    "false" or "False" => new ConstExpr(tok.Line, false),
                    "none" or "None" => new ConstExpr(tok.Line, null),
                    _ => new NameExpr(tok.Line, tok.Text),
                };
            case TokenKind.String:
                // Adjacent literals join, as in Python: 'a' "b" is 'ab'.
                string s = (string)Advance().Value!;
                while (Cur.Kind == TokenKind.String) s += (string)Advance().Value!;
                return new ConstExpr(tok.Line, s);
            case TokenKind.Integer or TokenKind.Float:
                return new ConstExpr(tok.Line, Advance().Value);
            case TokenKind.Operator when tok.Text == "(":
                Advance();
                if (Cur.IsOp(")"))
                {
                    Advance();
                    return new ListExpr(tok.Line, Array.Empty<Expr>());
                }
                var inner = ParseTuple();
                ExpectOp(")");
                return inner;
            case TokenKind.Operator when tok.Text == "[":
                Advance();
                var items = new List<Expr>();
                while (!Cur.IsOp("]"))
                {
                    items.Add(ParseExpression());
                    if (!Cur.IsOp(",")) break;
                    Advance();
                }
                ExpectOp("]");
                return new ListExpr(tok.Line, items);
            case TokenKind.Operator when tok.Text == "{":
                Advance();
                var pairs = new List<(Expr, Expr)>();
                while (!Cur.IsOp("}"))
                {
                    var key = ParseExpression();
                    ExpectOp(":");
                    pairs.Add((key, ParseExpression()));
                    if (!Cur.IsOp(",")) break;
                    Advance();
                }
                ExpectOp("}");
                return new DictExpr(tok.Line, pairs);
            default:
                throw Error(tok.Line, $"expected an expression but found {tok.Describe()}");
        }
    }

    private Expr ParsePostfix(Expr node)
    {
        while (true)
        {
            if (Cur.IsOp("."))
            {
                int line = Advance().Line;
                if (Cur.Kind == TokenKind.Name) node = new AttrExpr(line, node, Advance().Text);
                else if (Cur.Kind == TokenKind.Integer) node = new ItemExpr(line, node, new ConstExpr(line, Advance().Value));
                else throw Error(Cur.Line, $"expected an attribute name after '.' but found {Cur.Describe()}");
            }
            else if (Cur.IsOp("[")) node = ParseSubscript(node);
            else if (Cur.IsOp("(")) node = ParseCall(node);
            else return node;
        }
    }

    private Expr ParseSubscript(Expr obj)
    {
        int line = Advance().Line;
        Expr? start = Cur.IsOp(":") ? null : ParseExpression();
        if (start is not null && !Cur.IsOp(":"))
        {
            ExpectOp("]");
            return new ItemExpr(line, obj, start);
        }
        ExpectOp(":");
        Expr? stop = Cur.IsOp(":") || Cur.IsOp("]") ? null : ParseExpression();
        Expr? step = null;
        if (Cur.IsOp(":"))
        {
            Advance();
            step = Cur.IsOp("]") ? null : ParseExpression();
        }
        ExpectOp("]");
        return new SliceExpr(line, obj, start, stop, step);
    }

    private Expr ParseCall(Expr callee)
    {
        int line = Cur.Line;
        switch (callee)
        {
            case NameExpr n when !TemplateBuiltins.Functions.Contains(n.Name):
                throw Error(line, $"the function '{n.Name}' is not supported");
            case AttrExpr a when !TemplateBuiltins.Methods.Contains(a.Name):
                throw Error(line, $"the method '{a.Name}' is not supported");
            case NameExpr or AttrExpr:
                return new CallExpr(line, callee, ParseArgs());
            default:
                throw Error(line, "only functions and methods can be called");
        }
    }

    private CallArgs ParseArgs()
    {
        ExpectOp("(");
        var positional = new List<Expr>();
        var named = new List<(string, Expr)>();
        while (!Cur.IsOp(")"))
        {
            if (Cur.IsOp("*") || Cur.IsOp("**")) throw Error(Cur.Line, "*args and **kwargs in calls are not supported");
            if (Cur.Kind == TokenKind.Name && Peek().IsOp("="))
            {
                string name = Advance().Text;
                Advance();
                named.Add((name, ParseExpression()));
            }
            else
            {
                if (named.Count > 0) throw Error(Cur.Line, "a positional argument follows a keyword argument");
                positional.Add(ParseExpression());
            }
            if (!Cur.IsOp(",")) break;
            Advance();
        }
        ExpectOp(")");
        return new CallArgs(positional, named);
    }

    private Expr ParseFilters(Expr node)
    {
        while (true)
        {
            if (Cur.IsOp("|"))
            {
                int line = Advance().Line;
                string name = ExpectName("a filter name");
                if (!TemplateBuiltins.Filters.Contains(name)) throw Error(line, $"the '{name}' filter is not supported");
                node = new FilterExpr(line, node, name, Cur.IsOp("(") ? ParseArgs() : CallArgs.None);
            }
            else if (Cur.IsName("is"))
            {
                int line = Advance().Line;
                bool negated = Cur.IsName("not");
                if (negated) Advance();
                string name = ExpectName("a test name");
                if (!TemplateBuiltins.Tests.Contains(name)) throw Error(line, $"the '{name}' test is not supported");
                node = new TestExpr(line, node, name, negated, TestArgs());
            }
            else if (Cur.IsOp("(")) node = ParseCall(node);
            else return node;
        }
    }

    /// <summary>A test's argument: <c>is divisibleby(3)</c>, or Jinja's bare form <c>is divisibleby 3</c>.</summary>
    private CallArgs TestArgs()
    {
        if (Cur.IsOp("(")) return ParseArgs();
        bool bare = Cur.Kind is TokenKind.Name or TokenKind.String or TokenKind.Integer or TokenKind.Float || Cur.IsOp("[") || Cur.IsOp("{");
        if (!bare || Cur.IsName("else") || Cur.IsName("or") || Cur.IsName("and") || Cur.IsName("if")) return CallArgs.None;
        return new CallArgs(new[] { ParsePostfix(ParsePrimary()) }, Array.Empty<(string, Expr)>());
    }
}
