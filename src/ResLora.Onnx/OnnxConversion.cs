using System.Text.Json;
using System.Text.Json.Nodes;
using ResLora.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Onnx;

/// <summary>What <c>reslora convert onnx</c> reads and where it writes.</summary>
public sealed record OnnxConversionOptions
{
    /// <summary>The ONNX export of a BERT-family encoder (one file; external data is refused).</summary>
    public required string OnnxPath { get; init; }

    /// <summary>The WordPiece vocabulary (<c>vocab.txt</c>, one token a line) the model was trained with.</summary>
    public required string VocabPath { get; init; }

    /// <summary>The Hugging Face folder to write; must not exist or be empty.</summary>
    public required string OutDir { get; init; }

    /// <summary>Attention heads, for a graph that does not say (no head Reshape, no Attention op); null = read from the graph.</summary>
    public int? Heads { get; init; }

    /// <summary>Rejects a non-positive head count.</summary>
    public void Validate()
    {
        if (Heads is <= 0) throw new UserInputException($"--heads {Heads}: must be a positive head count, e.g. 12.");
    }
}

/// <summary>The converted folder: its config, where each tensor came from, and what the graph looked like.</summary>
/// <param name="OutDir">The folder written.</param>
/// <param name="Config">The config.json written.</param>
/// <param name="Sources">Each Hugging Face tensor and the initializer it came from, in the order found.</param>
/// <param name="Unused">Floating-point initializers with 2 or more dimensions that no tensor came from (a task head, say).</param>
/// <param name="HeadsFrom">Where the head count came from.</param>
/// <param name="FusedLayerNorm">True when the graph's layer norms are LayerNormalization ops, false when decomposed.</param>
/// <param name="OpCounts">The graph's op types with their counts, most frequent first.</param>
public sealed record OnnxConversionResult(
    string OutDir, EncoderConfigJson Config, IReadOnlyList<OnnxTensorSource> Sources, IReadOnlyList<string> Unused,
    string HeadsFrom, bool FusedLayerNorm, IReadOnlyList<KeyValuePair<string, int>> OpCounts);

/// <summary>
/// Turns a BERT-family ONNX export (e.g. what torch.onnx or optimum writes for a sentence-transformers model) into a
/// Hugging Face folder: <c>config.json</c>, <c>model.safetensors</c> with Hugging Face's tensor names and (out, in)
/// linear weights, <c>vocab.txt</c> and <c>tokenizer_config.json</c>. Roles are read from the graph's structure
/// (<see cref="BertGraphReader"/>), never from initializer names.
/// </summary>
public static class OnnxConversion
{
    /// <summary>Reads, converts and writes atomically; any input the converter cannot use is a one-line <see cref="UserInputException"/>.</summary>
    public static OnnxConversionResult Convert(OnnxConversionOptions options)
    {
        options.Validate();
        string outFull = Path.GetFullPath(options.OutDir);
        if (Directory.Exists(outFull) && Directory.EnumerateFileSystemEntries(outFull).Any())
            throw new UserInputException($"--out {options.OutDir} exists and is not empty; choose a new folder (finished output is never overwritten).");
        if (!File.Exists(options.VocabPath)) throw new FileNotFoundException($"--vocab {options.VocabPath}: no such file.", options.VocabPath);

        var graph = OnnxGraph.Load(options.OnnxPath);
        var bert = BertGraphReader.Read(graph, options.Heads);
        var vocab = ReadVocab(options.VocabPath, bert.Config.VocabSize);
        var config = bert.Config with { PadTokenId = vocab.IndexOf("[PAD]") is var pad and >= 0 ? pad : 0 };

        AtomicFolder.Write(options.OutDir, dir =>
        {
            using (var scope = torch.NewDisposeScope())
            {
                var weights = bert.Sources.Select(s => KeyValuePair.Create(s.HfName, Load(graph, s))).ToList();
                HfCheckpoint.SaveWeights(dir, weights);
            }
            var json = IO.Json.ReportJson.Indented; // tokenizer_config.json names specials such as [CLS] and <s>: written as they are
            AtomicFile.WriteAllText(Path.Combine(dir, "config.json"), JsonSerializer.Serialize(config, json) + "\n");
            File.Copy(options.VocabPath, Path.Combine(dir, "vocab.txt"));
            AtomicFile.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), TokenizerConfig(config).ToJsonString(json) + "\n");
        });

        var used = bert.Sources.Select(s => s.OnnxName).ToHashSet(StringComparer.Ordinal);
        var unused = graph.Initializers.Where(kv => !used.Contains(kv.Key) && OnnxGraph.IsFloating(kv.Value) && kv.Value.Dims.Count >= 2)
            .Select(kv => $"{kv.Key} [{string.Join(", ", kv.Value.Dims)}]").ToList();
        return new OnnxConversionResult(outFull, config, bert.Sources, unused, bert.HeadsFrom, bert.FusedLayerNorm, graph.OpCounts());
    }

    /// <summary>One initializer as the Hugging Face tensor: its stored dtype kept (float64 becomes float32), (in, out) transposed.</summary>
    private static Tensor Load(OnnxGraph g, OnnxTensorSource s)
    {
        var (name, proto) = g.Constant(s.OnnxName)!.Value;
        var t = torch.tensor(g.Floats(name, proto), OnnxGraph.Shape(proto)).to_type(OnnxGraph.TargetType(proto));
        return s.Transposed ? t.t().contiguous() : t;
    }

    /// <summary>
    /// The WordPiece vocabulary, checked against the model: no more tokens than the word-embedding table has rows
    /// (a table may be padded beyond the vocabulary, never the other way round), and BERT's special tokens present.
    /// </summary>
    private static List<string> ReadVocab(string path, int rows)
    {
        // Read as data files are: within BoundedFile.DataLimit (a device is one line), strictly UTF-8.
        var tokens = BoundedFile.ReadUtf8Text(path, BoundedFile.DataLimit, "vocabulary").Split('\n').Select(l => l.TrimEnd('\r')).ToList();
        while (tokens.Count > 0 && tokens[^1].Length == 0) tokens.RemoveAt(tokens.Count - 1);
        if (tokens.Count == 0) throw new UserInputException($"--vocab {path}: empty; expected a WordPiece vocab.txt, one token a line.");
        if (tokens.Count > rows)
            throw new UserInputException($"--vocab {path}: {tokens.Count} tokens, but the model's word-embedding table has {rows} rows; this vocabulary belongs to another model.");
        var missing = new[] { "[UNK]", "[CLS]", "[SEP]" }.Where(t => !tokens.Contains(t)).ToList();
        if (missing.Count > 0)
            throw new UserInputException($"--vocab {path}: no {string.Join(", ", missing)}; expected a BERT WordPiece vocab.txt.");
        return tokens;
    }

    /// <summary>What BertTokenizer reads beside vocab.txt (transformers' tokenization_bert.py argument names).</summary>
    private static JsonObject TokenizerConfig(EncoderConfigJson c) => new()
    {
        ["tokenizer_class"] = "BertTokenizer",
        ["do_lower_case"] = true,
        ["model_max_length"] = c.MaxPositionEmbeddings,
        ["unk_token"] = "[UNK]",
        ["sep_token"] = "[SEP]",
        ["pad_token"] = "[PAD]",
        ["cls_token"] = "[CLS]",
        ["mask_token"] = "[MASK]",
    };
}
