using System.Text;
using static ResLora.Templates.TemplateValues;

namespace ResLora.Templates;

/// <summary>
/// Runs a parsed template. Scopes follow Jinja: the template's variables and top-level <c>set</c>s share one
/// frame; every for-loop iteration gets a fresh frame (its target, <c>loop</c>, and its own <c>set</c>s, which
/// neither outlive the iteration nor leak out of the loop — what <c>namespace()</c> exists for); <c>if</c> opens none.
/// </summary>
internal sealed class TemplateRenderer
{
    private enum Flow { Normal, Break, Continue }

    private readonly string? _name;
    private readonly TimeProvider _clock;
    private readonly TemplateMeter _meter;
    private readonly List<Dictionary<string, object?>> _frames = new();
    private StringBuilder _out = new();
    private readonly StringBuilder _root;
    private readonly List<(int Start, int End)>? _generation;

    private TemplateRenderer(string? name, TimeProvider clock, TemplateBudget budget, Dictionary<string, object?> globals, List<(int Start, int End)>? generation)
    {
        _name = name;
        _clock = clock;
        _meter = new TemplateMeter(budget);
        _frames.Add(globals);
        _root = _out;
        _generation = generation;
    }

    /// <summary>
    /// Renders <paramref name="body"/>; when <paramref name="generation"/> is given, the output range of every
    /// <c>{% generation %}</c> block written to the output (not into a block <c>set</c>) is added to it. The render
    /// stops with a <see cref="TemplateException"/> when it exceeds <paramref name="budget"/>.
    /// </summary>
    public static string Render(IReadOnlyList<Node> body, Dictionary<string, object?> globals, string? name, TimeProvider clock,
        List<(int Start, int End)>? generation = null, TemplateBudget? budget = null)
    {
        var renderer = new TemplateRenderer(name, clock, budget ?? TemplateBudget.Default, globals, generation);
        using (renderer._meter.Install()) renderer.Exec(body);
        return renderer._out.ToString();
    }

    /// <summary>Counts <paramref name="steps"/> against the budget; the error names <paramref name="line"/>.</summary>
    private void Step(int line, long steps = 1)
    {
        try
        {
            _meter.Step(steps);
        }
        catch (TemplateRuntimeException e)
        {
            throw new TemplateException(_name, line, e.Message);
        }
    }

    /// <summary>Enters one nesting level of the render; pair with <see cref="TemplateMeter.Exit"/> on the normal path.</summary>
    private void Enter(int line)
    {
        try
        {
            _meter.Enter();
        }
        catch (TemplateRuntimeException e)
        {
            throw new TemplateException(_name, line, e.Message);
        }
    }

    /// <summary>Appends to the output (or a block set's text), within <see cref="TemplateBudget.MaxOutputLength"/>.</summary>
    private void Write(int line, string text)
    {
        if (text.Length == 0) return;
        if (_out.Length + (long)text.Length > _meter.Budget.MaxOutputLength)
            throw new TemplateException(_name, line, $"the rendered text would be longer than its budget of {_meter.Budget.MaxOutputLength:N0} characters (TemplateBudget.MaxOutputLength)");
        Step(line, text.Length / TemplateBudget.CharsPerStep);
        _out.Append(text);
    }

    private Flow Exec(IReadOnlyList<Node> nodes)
    {
        foreach (var node in nodes)
        {
            var flow = Exec(node);
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }

    private Flow Exec(Node node)
    {
        Enter(node.Line);
        Step(node.Line);
        var flow = ExecCore(node);
        _meter.Exit();
        return flow;
    }

    private Flow ExecCore(Node node)
    {
        switch (node)
        {
            case TextNode t:
                Write(t.Line, t.Text);
                return Flow.Normal;
            case OutputNode o:
                {
                    var value = Eval(o.Value);
                    Write(o.Line, value as string ?? Guard(o.Line, () => Str(value)));
                    return Flow.Normal;
                }
            case IfNode i:
                foreach (var (test, body) in i.Branches)
                    if (Truthy(Eval(test))) return Exec(body);
                return i.Else is null ? Flow.Normal : Exec(i.Else);
            case ForNode f:
                ExecFor(f);
                return Flow.Normal;
            case SetNode s:
                ExecSet(s);
                return Flow.Normal;
            case LoopControlNode c:
                return c.IsBreak ? Flow.Break : Flow.Continue;
            case BlockNode b:
                {
                    int start = _out.Length;
                    var flow = Exec(b.Body);
                    if (_generation is not null && ReferenceEquals(_out, _root) && _out.Length > start) _generation.Add((start, _out.Length));
                    return flow;
                }
            default:
                throw new InvalidOperationException($"unknown template node {node.GetType().Name}");
        }
    }

    private void ExecFor(ForNode f)
    {
        var iterable = Eval(f.Iterable);
        var items = Guard(f.Line, () => Iterate(iterable));
        if (f.Filter is not null)
        {
            // Jinja filters before counting, so loop.length and loop.last see only the kept items.
            items = items.Where(item => WithFrame(frame =>
            {
                Bind(frame, f.Targets, item, f.Line);
                return Truthy(Eval(f.Filter));
            })).ToList();
        }
        if (items.Count == 0)
        {
            if (f.Else is not null) WithFrame(_ => Exec(f.Else));
            return;
        }
        var loop = new LoopInfo(items);
        for (int i = 0; i < items.Count; i++)
        {
            Step(f.Line);
            loop.Index0 = i;
            var flow = WithFrame(frame =>
            {
                frame["loop"] = loop;
                Bind(frame, f.Targets, items[i], f.Line);
                return Exec(f.Body);
            });
            if (flow == Flow.Break) break;
        }
    }

    private T WithFrame<T>(Func<Dictionary<string, object?>, T> body)
    {
        var frame = new Dictionary<string, object?>(StringComparer.Ordinal);
        _frames.Add(frame);
        try
        {
            return body(frame);
        }
        finally
        {
            _frames.RemoveAt(_frames.Count - 1);
        }
    }

    private void Bind(Dictionary<string, object?> frame, IReadOnlyList<string> targets, object? value, int line)
    {
        if (targets.Count == 1)
        {
            frame[targets[0]] = value;
            return;
        }
        var parts = Guard(line, () => Iterate(value));
        if (parts.Count != targets.Count)
            throw new TemplateException(_name, line, $"cannot unpack {parts.Count} value(s) into {targets.Count} names ({string.Join(", ", targets)})");
        for (int i = 0; i < parts.Count; i++) frame[targets[i]] = parts[i];
    }

    private void ExecSet(SetNode s)
    {
        object? value;
        if (s.Value is not null) value = Eval(s.Value);
        else
        {
            var saved = _out;
            _out = new StringBuilder();
            Exec(s.Body!);
            value = _out.ToString();
            _out = saved;
        }
        if (s.Attribute is null)
        {
            Bind(_frames[^1], s.Targets, value, s.Line);
            return;
        }
        if (Lookup(s.Targets[0]) is not TemplateNamespace ns)
            throw new TemplateException(_name, s.Line, $"cannot assign the attribute '{s.Attribute}' of '{s.Targets[0]}': only a namespace() accepts attribute assignment");
        ns.Attributes[s.Attribute] = value;
    }

    private object? Lookup(string name)
    {
        for (int i = _frames.Count - 1; i >= 0; i--)
            if (_frames[i].TryGetValue(name, out var v)) return v;
        return new Undefined($"'{name}' is undefined");
    }

    /// <summary>Runs a value operation, turning its errors into a <see cref="TemplateException"/> for <paramref name="line"/>.</summary>
    private T Guard<T>(int line, Func<T> operation)
    {
        try
        {
            return operation();
        }
        catch (TemplateRuntimeException e)
        {
            throw new TemplateException(_name, line, e.Message);
        }
        catch (TemplateRaiseSignal e)
        {
            throw new TemplateRaisedException(_name, line, e.Message);
        }
        catch (OverflowException)
        {
            throw new TemplateException(_name, line, "integer overflow: Python's integers are unbounded but a chat template's are 64-bit");
        }
    }

    private object? Eval(Expr e)
    {
        Enter(e.Line);
        Step(e.Line);
        var value = EvalCore(e);
        _meter.Exit();
        return value;
    }

    private object? EvalCore(Expr e) => e switch
    {
        ConstExpr c => c.Value,
        NameExpr n => Lookup(n.Name),
        ListExpr l => l.Items.Select(Eval).ToList(),
        DictExpr d => EvalDict(d),
        AttrExpr a => EvalOn(a.Line, Eval(a.Obj), obj => GetAttr(obj, a.Name)),
        ItemExpr i => EvalOn(i.Line, Eval(i.Obj), obj => GetItem(obj, Eval(i.Key))),
        SliceExpr s => EvalSlice(s),
        CallExpr c => EvalCall(c),
        FilterExpr f => EvalOn(f.Line, Eval(f.Value), v => TemplateBuiltins.Filter(f.Name, v, EvalArgs(f.Args))),
        TestExpr t => EvalOn(t.Line, Eval(t.Value), v => TemplateBuiltins.Test(t.Name, v, EvalArgs(t.Args)) != t.Negated),
        UnaryExpr u when u.Op == "not" => !Truthy(Eval(u.Operand)),
        UnaryExpr u => EvalOn(u.Line, Eval(u.Operand), v => TemplateOperators.Unary(u.Op, v)),
        BinaryExpr b when b.Op == "and" => Eval(b.Left) is var l && !Truthy(l) ? l : Eval(b.Right),
        BinaryExpr b when b.Op == "or" => Eval(b.Left) is var l && Truthy(l) ? l : Eval(b.Right),
        BinaryExpr b => EvalOn(b.Line, Eval(b.Left), l => TemplateOperators.Binary(b.Op, l, Eval(b.Right))),
        ConcatExpr c => EvalConcat(c),
        CompareExpr c => EvalCompare(c),
        CondExpr c => Truthy(Eval(c.Test)) ? Eval(c.Then)
            : c.Else is null ? new Undefined("the inline if-expression was false and has no else") : Eval(c.Else),
        _ => throw new InvalidOperationException($"unknown expression {e.GetType().Name}"),
    };

    private string EvalConcat(ConcatExpr c)
    {
        var parts = new List<string>(c.Parts.Count);
        long length = 0;
        foreach (var p in c.Parts)
        {
            var v = Eval(p);
            string part = v as string ?? Guard(p.Line, () => Str(v));
            length += part.Length;
            parts.Add(part);
        }
        // The parts are strings that already exist (each within the budget); only their join is new.
        return Guard(c.Line, () =>
        {
            _meter.Produce(length, "a '~' concatenation");
            return string.Concat(parts);
        });
    }

    /// <summary>Evaluates the operand first (its own errors name its own line), then the operation under <paramref name="line"/>.</summary>
    private object? EvalOn(int line, object? operand, Func<object?, object?> operation) => Guard(line, () => operation(operand));

    private object? EvalDict(DictExpr d)
    {
        var dict = new OrderedDictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (keyExpr, valueExpr) in d.Items)
        {
            if (Eval(keyExpr) is not string key)
                throw new TemplateException(_name, keyExpr.Line, "dictionary keys must be strings in chat templates");
            dict[key] = Eval(valueExpr);
        }
        return dict;
    }

    private object? EvalSlice(SliceExpr s)
    {
        var obj = Eval(s.Obj);
        object? start = s.Start is null ? null : Eval(s.Start), stop = s.Stop is null ? null : Eval(s.Stop), step = s.Step is null ? null : Eval(s.Step);
        return Guard(s.Line, () => SliceOf(obj, start, stop, step));
    }

    private object? EvalCall(CallExpr c)
    {
        if (c.Callee is NameExpr fn)
        {
            var args = EvalArgs(c.Args);
            return Guard(c.Line, () => TemplateBuiltins.Function(fn.Name, args, _clock));
        }
        var method = (AttrExpr)c.Callee;
        var obj = Eval(method.Obj);
        var margs = EvalArgs(c.Args);
        return Guard(c.Line, () => TemplateBuiltins.Method(obj, method.Name, margs));
    }

    private Args EvalArgs(CallArgs args)
    {
        var named = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (name, value) in args.Named) named[name] = Eval(value);
        return new Args(args.Positional.Select(Eval).ToList(), named);
    }

    private object? EvalCompare(CompareExpr c)
    {
        var left = Eval(c.First);
        foreach (var (op, rightExpr) in c.Rest)
        {
            var right = Eval(rightExpr);
            if (!Guard(c.Line, () => TemplateOperators.Compare(op, left, right))) return false;
            left = right;
        }
        return true;
    }
}
