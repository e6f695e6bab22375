using System.Globalization;
using Onnx;
using static TorchSharp.torch;
using static ResLora.Onnx.OnnxPatterns;

namespace ResLora.Onnx;

/// <summary>Where one Hugging Face tensor comes from: an ONNX initializer, transposed when it was stored (in, out).</summary>
/// <param name="HfName">The Hugging Face state-dict key (<c>encoder.layer.0.attention.self.query.weight</c>).</param>
/// <param name="OnnxName">The initializer's name in the graph (often generated, e.g. <c>onnx::MatMul_123</c>).</param>
/// <param name="Transposed">True for a MatMul weight, stored (in, out) where Hugging Face keeps (out, in).</param>
public sealed record OnnxTensorSource(string HfName, string OnnxName, bool Transposed);

/// <summary>What the graph was found to be: the config it implies and where every weight comes from.</summary>
internal sealed record BertGraph(EncoderConfigJson Config, IReadOnlyList<OnnxTensorSource> Sources, string HeadsFrom, bool FusedLayerNorm);

/// <summary>
/// Names a BERT encoder's weights by following its ONNX graph, never by reading node or initializer names (exporters
/// generate those). The embedding block is found from the Gather over <c>input_ids</c>; each encoder layer from the
/// three projections that read one LayerNorm output (query and key meet in the score MatMul Q·Kᵀ, value in the
/// context MatMul after the softmax), the projection after the context, the residual LayerNorm, the projection
/// followed by the activation, and the projection after it; the pooler is the projection followed by Tanh.
/// </summary>
internal static class BertGraphReader
{
    /// <summary>Ops that only decoder LLM exports contain (causal masks, rotary positions, RMSNorm, KV-cache attention).</summary>
    private static readonly string[] DecoderOps =
    {
        "Trilu", "RotaryEmbedding", "GroupQueryAttention", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization",
    };

    public static BertGraph Read(OnnxGraph g, int? heads)
    {
        RefuseDecoder(g);
        var sources = new List<OnnxTensorSource>();
        var emb = Embeddings(g, sources);
        var headsSeen = new List<long>();
        string h = emb.Norm.Output, act = "";
        long intermediate = 0;
        int layer = 0;
        for (; ; layer++)
        {
            var projections = LinearsOf(g, h);
            if (projections.Count != 3) break;
            string p = $"encoder.layer.{layer}.";
            string where = $"{g.File}: encoder layer {layer}";
            var (q, k, v, context) = Attention(g, projections, where);
            AddLinear(sources, p + "attention.self.query", q, where);
            AddLinear(sources, p + "attention.self.key", k, where);
            AddLinear(sources, p + "attention.self.value", v, where);
            foreach (var proj in new[] { q, k, v })
            {
                if (HeadsOf(g, proj, emb.Hidden) is { } hd) headsSeen.Add(hd);
            }
            var attnOut = NextLinear(g, context) ?? throw new UserInputException($"{where}: no projection after the attention context (attention.output.dense).");
            AddLinear(sources, p + "attention.output.dense", attnOut, where);
            var norm1 = ResidualNorm(g, attnOut.Output) ?? throw new UserInputException($"{where}: no residual Add + LayerNorm after attention.output.dense.");
            AddNorm(sources, p + "attention.output.LayerNorm", norm1);
            var ffn = LinearsOf(g, norm1.Output);
            if (ffn.Count != 1) throw new UserInputException($"{where}: the attention LayerNorm output feeds {ffn.Count} projections; a BERT layer has one (intermediate.dense).");
            var inter = ffn[0];
            var output = NextLinear(g, inter.Output) ?? throw new UserInputException($"{where}: no projection after intermediate.dense (output.dense).");
            string layerAct = Activation(g, inter, output) ?? throw new UserInputException($"{where}: no Gelu/Erf (or Tanh-form GELU, Relu) between intermediate.dense and output.dense.");
            if (layer > 0 && layerAct != act) throw new UserInputException($"{where}: activation {layerAct}, but earlier layers use {act}.");
            act = layerAct;
            AddLinear(sources, p + "intermediate.dense", inter, where);
            AddLinear(sources, p + "output.dense", output, where);
            var norm2 = ResidualNorm(g, output.Output) ?? throw new UserInputException($"{where}: no residual Add + LayerNorm after output.dense.");
            AddNorm(sources, p + "output.LayerNorm", norm2);
            intermediate = Dims(g, inter.Weight, inter.WeightIsOutIn).Out;
            h = norm2.Output;
        }
        if (layer == 0) throw NoAttentionBlocks(g, emb.Norm.Output);
        Pooler(g, h, sources);

        var (nHeads, headsFrom) = Heads(g, headsSeen, heads, emb.Hidden);
        var dtype = OnnxGraph.TargetType(g.Constant(emb.WordTable)!.Value.Tensor);
        var config = new EncoderConfigJson
        {
            HiddenSize = checked((int)emb.Hidden),
            NumHiddenLayers = layer,
            NumAttentionHeads = nHeads,
            IntermediateSize = checked((int)intermediate),
            VocabSize = checked((int)emb.Vocab),
            MaxPositionEmbeddings = checked((int)emb.Positions),
            TypeVocabSize = checked((int)emb.TokenTypes),
            LayerNormEps = AsWritten(emb.Norm.Eps),
            HiddenAct = act,
            TorchDtype = dtype switch { ScalarType.Float16 => "float16", ScalarType.BFloat16 => "bfloat16", _ => "float32" },
        };
        CheckShapes(g, config, sources);
        return new BertGraph(config, sources, headsFrom, emb.Norm.Fused);
    }

    /// <summary>Epsilons are stored as float32: write the float's shortest decimal form (1E-12, not 9.9999999600419720E-13).</summary>
    private static double AsWritten(double eps) => double.Parse(((float)eps).ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);

    private static void RefuseDecoder(OnnxGraph g)
    {
        if (g.Graph.Node.FirstOrDefault(n => DecoderOps.Contains(n.OpType)) is { } op)
            throw new UserInputException($"{g.File}: op {op.OpType} of a GPT-style decoder; this converter reads BERT/RoBERTa encoder exports only.");
        string? cache = g.Inputs.FirstOrDefault(i => i.StartsWith("past", StringComparison.OrdinalIgnoreCase))
            ?? g.Graph.Output.Select(o => o.Name).FirstOrDefault(o => o.StartsWith("present", StringComparison.OrdinalIgnoreCase));
        if (cache is not null)
            throw new UserInputException($"{g.File}: KV-cache tensor '{cache}' of a GPT-style decoder; this converter reads BERT/RoBERTa encoder exports only.");
    }

    // ---- Embeddings: word + position + token type, then LayerNorm ----

    private sealed record EmbeddingBlock(string WordTable, long Vocab, long Hidden, long Positions, long TokenTypes, LayerNormMatch Norm);

    private static EmbeddingBlock Embeddings(OnnxGraph g, List<OnnxTensorSource> sources)
    {
        string inputs = string.Join(", ", g.Inputs);
        if (!g.Inputs.Contains("input_ids"))
            throw new UserInputException($"{g.File}: no graph input named input_ids (inputs: {inputs}); not a BERT-family encoder export.");
        var words = g.Graph.Node.Where(n => TableLookup(g, n) is not null && IndicesFrom(g, n.Input[1], "input_ids")).ToList();
        if (words.Count != 1)
            throw new UserInputException(words.Count == 0
                ? $"{g.File}: no Gather over input_ids (an embedding-table lookup); not a BERT-family encoder export (ops: {Ops(g)})."
                : $"{g.File}: input_ids feeds {words.Count} embedding-table Gathers; a BERT encoder has one word-embedding table.");
        var word = words[0];
        // The embedding sum: follow the Adds from the word lookup until a LayerNorm reads the sum.
        string sum = word.Output[0];
        var norm = LayerNorm(g, sum);
        for (int hop = 0; norm is null && hop < 4 && g.Consumers(sum, "Add").FirstOrDefault() is { } add; hop++)
        {
            sum = add.Output[0];
            norm = LayerNorm(g, sum);
        }
        if (norm is null) throw new UserInputException($"{g.File}: no LayerNorm after the word embeddings (BERT sums word, position and token-type embeddings, then normalizes).");
        var leaves = new List<string>();
        AddTreeLeaves(g, sum, leaves);
        var lookups = new List<NodeProto>();
        foreach (var leaf in leaves)
        {
            if (g.Producer(leaf) is { } p && TableLookup(g, p) is not null) lookups.Add(p);
            else throw new UserInputException($"{g.File}: the embedding sum adds '{leaf}', which is not a table lookup (Gather); a position or token-type table folded into a constant cannot be converted.");
        }
        var rest = lookups.Where(n => n != word).ToList();
        var tokenType = rest.FirstOrDefault(n => IndicesFrom(g, n.Input[1], "token_type_ids"));
        var position = rest.FirstOrDefault(n => IndicesFrom(g, n.Input[1], "position_ids"));
        if (rest.Count == 2 && (tokenType ?? position) is null)
        {
            // Token types were constant zeros at export: the token-type table is the small one (BERT: 2 rows, RoBERTa: 1).
            var bySize = rest.OrderBy(n => Rows(g, n)).ToList();
            if (Rows(g, bySize[0]) <= 16) (tokenType, position) = (bySize[0], bySize[1]);
        }
        else if (rest.Count == 2)
        {
            tokenType ??= rest.Single(n => n != position);
            position ??= rest.Single(n => n != tokenType);
        }
        if (rest.Count != 2 || tokenType is null || position is null || tokenType == position)
            throw new UserInputException($"{g.File}: the embeddings add {rest.Count} table lookups besides the word embeddings; BERT adds two (positions, and token types from token_type_ids).");
        if (g.DependsOn(position.Input[1], "input_ids"))
            throw new UserInputException($"{g.File}: the positions are computed from input_ids (RoBERTa's padding-offset positions); RoBERTa exports are not converted yet (their BPE tokenizer and position offset are not handled), only BERT-style ones.");
        string wordTable = g.Constant(word.Input[0])!.Value.Name;
        var (vocab, hidden) = Dims(g, wordTable, outIn: true);
        sources.Add(new("embeddings.word_embeddings.weight", wordTable, false));
        sources.Add(new("embeddings.position_embeddings.weight", g.Constant(position.Input[0])!.Value.Name, false));
        sources.Add(new("embeddings.token_type_embeddings.weight", g.Constant(tokenType.Input[0])!.Value.Name, false));
        AddNorm(sources, "embeddings.LayerNorm", norm);
        return new EmbeddingBlock(wordTable, vocab, hidden, Rows(g, position), Rows(g, tokenType), norm);
    }

    /// <summary>A Gather (axis 0) from a 2-D floating-point constant: an embedding lookup; returns the table.</summary>
    private static string? TableLookup(OnnxGraph g, NodeProto n) =>
        n.OpType == "Gather" && n.Input.Count == 2 && (OnnxGraph.Attr(n, "axis")?.I ?? 0) == 0
            && g.Constant(n.Input[0]) is { Tensor.Dims.Count: 2 } t && OnnxGraph.IsFloating(t.Tensor) ? t.Name : null;

    private static long Rows(OnnxGraph g, NodeProto lookup) => g.Constant(lookup.Input[0])!.Value.Tensor.Dims[0];

    /// <summary>Whether <paramref name="indices"/> is the graph input <paramref name="input"/> itself, or a Cast/Identity/Slice of it.</summary>
    private static bool IndicesFrom(OnnxGraph g, string indices, string input)
    {
        for (int hop = 0; hop < 4; hop++)
        {
            if (indices == input) return g.Inputs.Contains(input);
            if (g.Producer(indices) is { OpType: "Cast" or "Identity" or "Slice" or "Expand" } p) indices = p.Input[0];
            else return false;
        }
        return false;
    }

    private static void AddTreeLeaves(OnnxGraph g, string t, List<string> leaves)
    {
        if (g.Producer(t) is { OpType: "Add" } add && leaves.Count < 8)
        {
            AddTreeLeaves(g, add.Input[0], leaves);
            AddTreeLeaves(g, add.Input[1], leaves);
        }
        else leaves.Add(t);
    }

    // ---- One encoder layer ----

    /// <summary>
    /// Tells query, key and value apart by where each goes: query and key are the two operands (A, B) of the same
    /// MatMul of computed tensors (the scores Q·Kᵀ), value is operand B of another one (softmax(scores)·V), whose
    /// operand A comes from the scores through a Softmax. Returns the three and the context tensor.
    /// </summary>
    private static (LinearMatch Q, LinearMatch K, LinearMatch V, string Context) Attention(OnnxGraph g, List<LinearMatch> projections, string where)
    {
        var reach = projections.Select(p => (P: p, Hit: Forward(g, p.Output, (n, _) => IsActivationMatMul(g, n)))).ToList();
        if (reach.Any(r => r.Hit is null))
            throw new UserInputException($"{where}: three projections read the same LayerNorm output, but not all of them reach an attention MatMul (Q·Kᵀ, softmax·V).");
        var q = reach.Where(r => r.Hit!.Value.Input == 0).ToList();
        var kv = reach.Where(r => r.Hit!.Value.Input == 1).ToList();
        var scores = q.Count == 1 ? q[0].Hit!.Value.Node : null;
        var k = kv.Where(r => r.Hit!.Value.Node == scores).ToList();
        var v = kv.Where(r => r.Hit!.Value.Node != scores).ToList();
        if (scores is null || k.Count != 1 || v.Count != 1)
            throw new UserInputException($"{where}: the three projections of one LayerNorm output do not form attention (expected query and key to meet in one MatMul Q·Kᵀ and value in the softmax·V MatMul).");
        var ctx = v[0].Hit!.Value.Node;
        if (Forward(g, scores.Output[0], (n, _) => n.OpType == "Softmax") is null || Forward(g, scores.Output[0], (n, i) => n == ctx && i == 0) is null)
            throw new UserInputException($"{where}: the attention scores do not reach the value MatMul through a Softmax.");
        return (q[0].P, k[0].P, v[0].P, ctx.Output[0]);
    }

    /// <summary>The first projection fed (as its input A) by data flowing from <paramref name="from"/>.</summary>
    private static LinearMatch? NextLinear(OnnxGraph g, string from) =>
        Forward(g, from, (n, i) => i == 0 && Linear(g, n, n.Input[0]) is not null) is { } hit ? Linear(g, hit.Node, hit.Node.Input[0]) : null;

    /// <summary>The residual Add after a projection and the LayerNorm over it (post-LN, as BERT).</summary>
    private static LayerNormMatch? ResidualNorm(OnnxGraph g, string projected) =>
        g.Consumers(projected, "Add").Select(a => LayerNorm(g, a.Output[0])).FirstOrDefault(n => n is not null);

    /// <summary>
    /// The activation between intermediate.dense and output.dense: Erf (or a Gelu op) is BERT's exact GELU, Tanh (or
    /// FastGelu, or Gelu approximate="tanh") the tanh form, Relu is ReLU.
    /// </summary>
    private static string? Activation(OnnxGraph g, LinearMatch inter, LinearMatch output)
    {
        var hit = Forward(g, inter.Output, (n, _) => n.OpType is "Erf" or "Gelu" or "FastGelu" or "Tanh" or "Relu", maxNodes: 12);
        if (hit is not { } a || Forward(g, a.Node.Output[0], (n, _) => n == output.Node, maxNodes: 12) is null) return null;
        return a.Node.OpType switch
        {
            "Erf" => "gelu",
            "Gelu" => OnnxGraph.Attr(a.Node, "approximate")?.S.ToStringUtf8() == "tanh" ? "gelu_new" : "gelu",
            "Relu" => "relu",
            _ => "gelu_new",
        };
    }

    /// <summary>
    /// Heads from the Reshape that splits a projection's output into (batch, seq, heads, headDim): its shape is a
    /// constant or a Concat of the dynamic batch/seq pieces and constant heads, headDim.
    /// </summary>
    private static long? HeadsOf(OnnxGraph g, LinearMatch proj, long hidden)
    {
        if (Forward(g, proj.Output, (n, i) => n.OpType == "Reshape" && i == 0, maxNodes: 16) is not { } r) return null;
        if (ShapeValues(g, r.Node.Input[1]) is not { Length: 4 } shape) return null;
        if (shape[2] is > 0 and var heads) return heads;
        if (shape[3] is > 0 and var headDim && hidden % headDim == 0) return hidden / headDim;
        return null;
    }

    private static (int Heads, string From) Heads(OnnxGraph g, List<long> seen, int? flag, long hidden)
    {
        var found = seen.Distinct().ToList();
        if (found.Count > 1) throw new UserInputException($"{g.File}: the head Reshapes disagree on the head count ({string.Join(", ", found)}).");
        long? graph = found.Count == 1 ? found[0] : null;
        string from = found.Count == 1 ? "the head Reshape of the query/key/value projections" : "";
        if (graph is null && g.Graph.Node.FirstOrDefault(n => n.OpType is "Attention" or "MultiHeadAttention" && OnnxGraph.Attr(n, "num_heads") is not null) is { } att)
        {
            graph = OnnxGraph.Attr(att, "num_heads")!.I;
            from = $"the num_heads attribute of {att.OpType}";
        }
        if (graph is { } gh && flag is { } fh && gh != fh)
            throw new UserInputException($"--heads {fh}: the graph says {gh} heads ({from}); leave --heads out.");
        long heads = graph ?? flag ?? throw new UserInputException($"{g.File}: the head count could not be read from the graph (no head Reshape or Attention op); pass --heads N (e.g. --heads 12 for BERT-base).");
        if (flag is not null && graph is null) from = "--heads";
        if (heads <= 0 || hidden % heads != 0)
            throw new UserInputException($"{(graph is null ? "--heads" : g.File)}: {heads} heads do not divide the hidden size {hidden}.");
        return ((int)heads, from);
    }

    private static void Pooler(OnnxGraph g, string last, List<OnnxTensorSource> sources)
    {
        // BERT's pooler: the first token's state through dense + tanh.
        var hit = Forward(g, last, (n, i) => i == 0 && Linear(g, n, n.Input[0]) is { Bias: not null }, maxNodes: 8);
        if (hit is null) return;
        var pool = Linear(g, hit.Value.Node, hit.Value.Node.Input[0])!;
        if (g.Consumers(pool.Output, "Tanh").Any()) AddLinear(sources, "pooler.dense", pool, $"{g.File}: pooler");
    }

    private static UserInputException NoAttentionBlocks(OnnxGraph g, string embedded)
    {
        var readers = g.Consumers(embedded).Select(n => n.OpType).ToList();
        string fused = readers.Any(r => r is "Attention" or "MultiHeadAttention" or "SkipLayerNormalization")
            ? " It feeds ONNX Runtime's fused ops (an optimized export): convert the export made without graph optimization."
            : "";
        return new UserInputException($"{g.File}: found 0 attention blocks: the embedding LayerNorm output feeds {LinearsOf(g, embedded).Count} projections "
            + $"(ops reading it: {(readers.Count == 0 ? "none" : string.Join(", ", readers))}); a BERT layer starts with 3 (query, key, value).{fused}");
    }

    // ---- Sources and shapes ----

    private static void AddLinear(List<OnnxTensorSource> sources, string prefix, LinearMatch m, string where)
    {
        if (m.Bias is null) throw new UserInputException($"{where}: {prefix} has no bias Add; BERT's projections all have biases.");
        sources.Add(new(prefix + ".weight", m.Weight, Transposed: !m.WeightIsOutIn));
        sources.Add(new(prefix + ".bias", m.Bias, false));
    }

    private static void AddNorm(List<OnnxTensorSource> sources, string prefix, LayerNormMatch n)
    {
        sources.Add(new(prefix + ".weight", n.Gamma, false));
        sources.Add(new(prefix + ".bias", n.Beta, false));
    }

    /// <summary>(out, in) of a stored 2-D weight given its layout.</summary>
    private static (long Out, long In) Dims(OnnxGraph g, string weight, bool outIn)
    {
        var d = g.Constant(weight)!.Value.Tensor.Dims;
        return outIn ? (d[0], d[1]) : (d[1], d[0]);
    }

    /// <summary>Every tensor must have the shape the config implies (a wrong match fails here, not in the model).</summary>
    private static void CheckShapes(OnnxGraph g, EncoderConfigJson c, List<OnnxTensorSource> sources)
    {
        long h = c.HiddenSize, i = c.IntermediateSize;
        foreach (var s in sources)
        {
            var dims = g.Constant(s.OnnxName)!.Value.Tensor.Dims.ToArray();
            long[] hf = s.Transposed ? dims.Reverse().ToArray() : dims;
            long[] expected = s.HfName switch
            {
                "embeddings.word_embeddings.weight" => new[] { (long)c.VocabSize, h },
                "embeddings.position_embeddings.weight" => new[] { (long)c.MaxPositionEmbeddings, h },
                "embeddings.token_type_embeddings.weight" => new[] { (long)c.TypeVocabSize, h },
                var n when n.EndsWith("intermediate.dense.weight", StringComparison.Ordinal) => new[] { i, h },
                var n when n.EndsWith("intermediate.dense.bias", StringComparison.Ordinal) => new[] { i },
                var n when n.EndsWith("output.dense.weight", StringComparison.Ordinal) && !n.Contains("attention", StringComparison.Ordinal) => new[] { h, i },
                var n when n.EndsWith(".weight", StringComparison.Ordinal) && !n.Contains("LayerNorm", StringComparison.Ordinal) => new[] { h, h },
                _ => new[] { h },
            };
            if (!hf.SequenceEqual(expected))
                throw new UserInputException($"{g.File}: {s.HfName} (initializer '{s.OnnxName}') has shape [{string.Join(", ", hf)}], but hidden {h} / intermediate {i} imply [{string.Join(", ", expected)}].");
        }
    }

    private static string Ops(OnnxGraph g) => string.Join(", ", g.OpCounts().Take(8).Select(kv => $"{kv.Key}×{kv.Value}"));
}
