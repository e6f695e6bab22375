using Onnx;

namespace ResLora.Onnx;

/// <summary>
/// A linear layer found in the graph: <c>MatMul(x, W) + b</c> with W stored (in, out), or <c>Gemm(x, W, b)</c> whose
/// <c>transB</c> says the layout. <see cref="Output"/> is the tensor after the bias.
/// </summary>
internal sealed record LinearMatch(string Weight, bool WeightIsOutIn, string? Bias, string Output, NodeProto Node);

/// <summary>A layer norm found in the graph: one <c>LayerNormalization</c> op, or the decomposed form.</summary>
internal sealed record LayerNormMatch(string Gamma, string Beta, double Eps, string Output, bool Fused);

/// <summary>
/// The small graph patterns a transformer export is made of. Each matcher looks at one tensor and its consumers and
/// returns null when the pattern is not there; none of them reads a tensor or node name.
/// </summary>
internal static class OnnxPatterns
{
    /// <summary>
    /// The linear that <paramref name="node"/> starts on <paramref name="x"/>: a MatMul whose B is a 2-D constant (or
    /// a constant behind a 2-D Transpose) followed by an Add of a 1-D constant, or a Gemm.
    /// </summary>
    public static LinearMatch? Linear(OnnxGraph g, NodeProto node, string x)
    {
        if (node.OpType == "MatMul" && node.Input.Count == 2 && node.Input[0] == x && Weight(g, node.Input[1]) is { } w)
        {
            string output = node.Output[0];
            string? bias = null;
            foreach (var add in g.Consumers(output, "Add"))
            {
                if (OnnxGraph.Other(add, output) is { } b && g.Constant(b) is { } c && c.Tensor.Dims.Count == 1)
                {
                    bias = c.Name;
                    output = add.Output[0];
                    break;
                }
            }
            return new LinearMatch(w.Name, w.OutIn, bias, output, node);
        }
        if (node.OpType == "Gemm" && node.Input.Count >= 2 && node.Input[0] == x && g.Constant(node.Input[1]) is { Tensor.Dims.Count: 2 } gw
            && (OnnxGraph.Attr(node, "transA")?.I ?? 0) == 0 && (OnnxGraph.Attr(node, "alpha")?.F ?? 1f) == 1f && (OnnxGraph.Attr(node, "beta")?.F ?? 1f) == 1f)
        {
            string? bias = node.Input.Count > 2 && g.Constant(node.Input[2]) is { Tensor.Dims.Count: 1 } gb ? gb.Name : null;
            return new LinearMatch(gw.Name, (OnnxGraph.Attr(node, "transB")?.I ?? 0) == 1, bias, node.Output[0], node);
        }
        return null;
    }

    /// <summary>The linears that consume <paramref name="x"/> directly.</summary>
    public static List<LinearMatch> LinearsOf(OnnxGraph g, string x) =>
        g.Consumers(x).Select(n => Linear(g, n, x)).OfType<LinearMatch>().ToList();

    /// <summary>A MatMul's B operand as a stored weight: a 2-D constant (in, out), or Transpose(perm 1,0) of one (out, in).</summary>
    private static (string Name, bool OutIn)? Weight(OnnxGraph g, string b)
    {
        if (g.Constant(b) is { Tensor.Dims.Count: 2 } c) return (c.Name, false);
        if (g.Producer(b) is { OpType: "Transpose" } t && g.Constant(t.Input[0]) is { Tensor.Dims.Count: 2 } tc
            && (OnnxGraph.Attr(t, "perm")?.Ints is not { Count: > 0 } perm || perm.SequenceEqual(new long[] { 1, 0 })))
            return (tc.Name, true);
        return null;
    }

    /// <summary>A MatMul of two computed tensors (attention scores, attention context), not a projection.</summary>
    public static bool IsActivationMatMul(OnnxGraph g, NodeProto n) =>
        n.OpType == "MatMul" && n.Input.Count == 2 && !g.IsConstant(n.Input[0]) && !g.IsConstant(n.Input[1]) && Linear(g, n, n.Input[0]) is null;

    /// <summary>
    /// Walks forward from <paramref name="start"/> (breadth first, through data inputs only: shape arithmetic is not
    /// followed) and returns the first node for which <paramref name="stop"/> holds, with the input index it was
    /// reached by. Null when none is within <paramref name="maxNodes"/> nodes.
    /// </summary>
    public static (NodeProto Node, int Input)? Forward(OnnxGraph g, string start, Func<NodeProto, int, bool> stop, int maxNodes = 48)
    {
        var seen = new HashSet<NodeProto>();
        var todo = new Queue<string>();
        todo.Enqueue(start);
        while (todo.Count > 0 && seen.Count < maxNodes)
        {
            string t = todo.Dequeue();
            foreach (var n in g.Consumers(t))
            {
                for (int i = 0; i < n.Input.Count; i++)
                {
                    if (n.Input[i] != t) continue;
                    if (stop(n, i)) return (n, i);
                }
                if (!seen.Add(n) || !FollowsData(n, t)) continue;
                foreach (var o in n.Output) if (o.Length > 0) todo.Enqueue(o);
            }
        }
        return null;
    }

    /// <summary>Whether data flows from input <paramref name="t"/> to the node's output (false for Shape, and for a Reshape's shape).</summary>
    private static bool FollowsData(NodeProto n, string t) => n.OpType switch
    {
        "Shape" or "Size" or "ConstantOfShape" or "EyeLike" => false,
        "Reshape" or "Expand" or "Slice" or "Unsqueeze" or "Squeeze" or "Tile" or "Pad" or "Transpose" or "Cast" => n.Input[0] == t,
        _ => true,
    };

    /// <summary>The layer norm applied to <paramref name="x"/>, fused or decomposed; null when there is none.</summary>
    public static LayerNormMatch? LayerNorm(OnnxGraph g, string x)
    {
        foreach (var ln in g.Consumers(x, "LayerNormalization"))
        {
            if (ln.Input[0] != x || ln.Input.Count < 3) continue;
            if (g.Constant(ln.Input[1]) is not { } gamma || g.Constant(ln.Input[2]) is not { } beta) continue;
            long axis = OnnxGraph.Attr(ln, "axis")?.I ?? -1;
            if (axis != -1) continue;
            // onnx LayerNormalization: epsilon defaults to 1e-5.
            double eps = OnnxGraph.Attr(ln, "epsilon") is { } e ? e.F : 1e-5;
            return new LayerNormMatch(gamma.Name, beta.Name, eps, ln.Output[0], Fused: true);
        }
        return DecomposedLayerNorm(g, x);
    }

    /// <summary>
    /// (x - mean(x)) / sqrt(mean((x - mean(x))²) + eps) * gamma + beta, as torch.onnx writes nn.LayerNorm before
    /// opset 17: ReduceMean, Sub, Pow (or Mul by itself), ReduceMean, Add eps, Sqrt, Div, Mul gamma, Add beta.
    /// </summary>
    private static LayerNormMatch? DecomposedLayerNorm(OnnxGraph g, string x)
    {
        foreach (var mean in g.Consumers(x, "ReduceMean"))
        {
            string m = mean.Output[0];
            var centered = g.Consumers(m, "Sub").Where(s => s.Input[0] == x && s.Input[1] == m).Select(s => s.Output[0]).ToList();
            foreach (var d in centered)
            {
                var squares = g.Consumers(d, "Pow").Where(p => g.Scalar(p.Input[1]) == 2.0).Select(p => p.Output[0])
                    .Concat(g.Consumers(d, "Mul").Where(p => p.Input[0] == d && p.Input[1] == d).Select(p => p.Output[0]));
                foreach (var sq in squares)
                {
                    foreach (var variance in g.Consumers(sq, "ReduceMean"))
                    {
                        foreach (var addEps in g.Consumers(variance.Output[0], "Add"))
                        {
                            if (OnnxGraph.Other(addEps, variance.Output[0]) is not { } epsName || g.Scalar(epsName) is not { } eps) continue;
                            foreach (var sqrt in g.Consumers(addEps.Output[0], "Sqrt"))
                            {
                                foreach (var div in g.Consumers(sqrt.Output[0], "Div"))
                                {
                                    if (!centered.Contains(div.Input[0]) || div.Input[1] != sqrt.Output[0]) continue;
                                    if (Affine(g, div.Output[0]) is { } affine)
                                        return new LayerNormMatch(affine.Gamma, affine.Beta, eps, affine.Output, Fused: false);
                                }
                            }
                        }
                    }
                }
            }
        }
        return null;
    }

    /// <summary>Mul by a 1-D constant then Add of a 1-D constant (either operand order).</summary>
    private static (string Gamma, string Beta, string Output)? Affine(OnnxGraph g, string normalized)
    {
        foreach (var mul in g.Consumers(normalized, "Mul"))
        {
            if (OnnxGraph.Other(mul, normalized) is not { } gn || g.Constant(gn) is not { Tensor.Dims.Count: 1 } gamma) continue;
            foreach (var add in g.Consumers(mul.Output[0], "Add"))
            {
                if (OnnxGraph.Other(add, mul.Output[0]) is { } bn && g.Constant(bn) is { Tensor.Dims.Count: 1 } beta)
                    return (gamma.Name, beta.Name, add.Output[0]);
            }
        }
        return null;
    }

    /// <summary>
    /// The values of a shape tensor as far as they are constant: a constant, or a Concat of constants and computed
    /// pieces (each computed piece counted as one unknown entry, as torch.onnx builds a view's shape from Shape/Gather/Unsqueeze).
    /// </summary>
    public static long?[]? ShapeValues(OnnxGraph g, string shape)
    {
        if (g.Constant(shape) is { } c) return g.Longs(c.Name, c.Tensor).Select(v => (long?)v).ToArray();
        if (g.Producer(shape) is not { OpType: "Concat" } concat) return null;
        var values = new List<long?>();
        foreach (var part in concat.Input)
        {
            if (g.Constant(part) is { } pc) values.AddRange(g.Longs(pc.Name, pc.Tensor).Select(v => (long?)v));
            else values.Add(null);
        }
        return values.ToArray();
    }
}
