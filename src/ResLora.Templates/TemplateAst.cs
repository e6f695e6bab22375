namespace ResLora.Templates;

// The parsed template: statements (Node) and expressions (Expr), each carrying its 1-based source line so that
// render-time errors can name it too.

internal abstract record Node(int Line);

internal sealed record TextNode(int Line, string Text) : Node(Line);

/// <summary><c>{{ expr }}</c>.</summary>
internal sealed record OutputNode(int Line, Expr Value) : Node(Line);

/// <summary><c>{% if %}</c> with its <c>elif</c> branches in order, and the <c>else</c> body when present.</summary>
internal sealed record IfNode(int Line, IReadOnlyList<(Expr Test, IReadOnlyList<Node> Body)> Branches, IReadOnlyList<Node>? Else) : Node(Line);

/// <summary><c>{% for a[, b] in iterable [if filter] %}</c>, with the <c>else</c> body run when nothing was iterated.</summary>
internal sealed record ForNode(int Line, IReadOnlyList<string> Targets, Expr Iterable, Expr? Filter, IReadOnlyList<Node> Body, IReadOnlyList<Node>? Else) : Node(Line);

/// <summary>
/// <c>{% set a[, b] = expr %}</c>, or <c>{% set ns.attr = expr %}</c> when <see cref="Attribute"/> is set (then
/// <see cref="Targets"/> holds the namespace's name alone). A block set (<c>{% set x %}...{% endset %}</c>) has
/// <see cref="Body"/> instead of <see cref="Value"/>.
/// </summary>
internal sealed record SetNode(int Line, IReadOnlyList<string> Targets, string? Attribute, Expr? Value, IReadOnlyList<Node>? Body) : Node(Line);

/// <summary><c>{% break %}</c> / <c>{% continue %}</c> (transformers enables Jinja's loopcontrols extension).</summary>
internal sealed record LoopControlNode(int Line, bool IsBreak) : Node(Line);

/// <summary>A body rendered as is: <c>{% generation %}</c> only marks assistant tokens for masks in transformers.</summary>
internal sealed record BlockNode(int Line, IReadOnlyList<Node> Body) : Node(Line);

internal abstract record Expr(int Line);

internal sealed record ConstExpr(int Line, object? Value) : Expr(Line);

internal sealed record NameExpr(int Line, string Name) : Expr(Line);

internal sealed record ListExpr(int Line, IReadOnlyList<Expr> Items) : Expr(Line);

internal sealed record DictExpr(int Line, IReadOnlyList<(Expr Key, Expr Value)> Items) : Expr(Line);

/// <summary><c>obj.name</c>.</summary>
internal sealed record AttrExpr(int Line, Expr Obj, string Name) : Expr(Line);

/// <summary><c>obj[key]</c>.</summary>
internal sealed record ItemExpr(int Line, Expr Obj, Expr Key) : Expr(Line);

/// <summary><c>obj[start:stop:step]</c>, each part optional.</summary>
internal sealed record SliceExpr(int Line, Expr Obj, Expr? Start, Expr? Stop, Expr? Step) : Expr(Line);

internal sealed record CallArgs(IReadOnlyList<Expr> Positional, IReadOnlyList<(string Name, Expr Value)> Named)
{
    public static readonly CallArgs None = new(Array.Empty<Expr>(), Array.Empty<(string, Expr)>());
}

/// <summary><c>function(args)</c> (callee a <see cref="NameExpr"/>) or <c>obj.method(args)</c> (an <see cref="AttrExpr"/>).</summary>
internal sealed record CallExpr(int Line, Expr Callee, CallArgs Args) : Expr(Line);

/// <summary><c>value | name(args)</c>.</summary>
internal sealed record FilterExpr(int Line, Expr Value, string Name, CallArgs Args) : Expr(Line);

/// <summary><c>value is [not] name(args)</c>.</summary>
internal sealed record TestExpr(int Line, Expr Value, string Name, bool Negated, CallArgs Args) : Expr(Line);

/// <summary><c>-x</c>, <c>+x</c>, <c>not x</c>.</summary>
internal sealed record UnaryExpr(int Line, string Op, Expr Operand) : Expr(Line);

/// <summary>Arithmetic (<c>+ - * / // % **</c>) and the short-circuit <c>and</c>/<c>or</c>.</summary>
internal sealed record BinaryExpr(int Line, string Op, Expr Left, Expr Right) : Expr(Line);

/// <summary><c>a ~ b ~ c</c>: every operand as a string, joined.</summary>
internal sealed record ConcatExpr(int Line, IReadOnlyList<Expr> Parts) : Expr(Line);

/// <summary>A chain <c>a &lt; b == c</c>: each comparison with its right operand (<c>in</c>, <c>notin</c> included).</summary>
internal sealed record CompareExpr(int Line, Expr First, IReadOnlyList<(string Op, Expr Right)> Rest) : Expr(Line);

/// <summary><c>then if test else otherwise</c>; without <c>else</c> the result is undefined when the test fails.</summary>
internal sealed record CondExpr(int Line, Expr Test, Expr Then, Expr? Else) : Expr(Line);
