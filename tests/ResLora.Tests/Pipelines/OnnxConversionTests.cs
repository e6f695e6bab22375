using System.Text.Json.Nodes;
using Google.Protobuf;
using Onnx;
using ResLora.Cli;
using ResLora.IO;
using ResLora.Onnx;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.Pipelines;

/// <summary>
/// <c>convert onnx</c>: a tiny BERT export (built here, names generated) becomes a Hugging Face folder whose every
/// tensor is the right initializer in the right layout; other graphs and damaged files are one-line errors.
/// </summary>
[Collection("console")]
public sealed class OnnxConversionTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-onnx-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, byte[] bytes)
    {
        string p = Path.Combine(_dir, name);
        File.WriteAllBytes(p, bytes);
        return p;
    }

    /// <summary>A WordPiece vocabulary with BERT's specials, [PAD] first, no larger than the tiny model's table.</summary>
    private string Vocab(int tokens = TinyBertOnnx.Vocab)
    {
        var lines = new[] { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]" }.Concat(Enumerable.Range(0, tokens - 5).Select(i => $"tok{i}"));
        string p = Path.Combine(_dir, $"vocab-{tokens}.txt");
        File.WriteAllLines(p, lines);
        return p;
    }

    private OnnxConversionResult Convert(string onnx, string outName = "out", int? heads = null) =>
        OnnxConversion.Convert(new OnnxConversionOptions { OnnxPath = onnx, VocabPath = Vocab(), OutDir = Path.Combine(_dir, outName), Heads = heads });

    public static TheoryData<TinyBertVariant> Variants() => new()
    {
        new TinyBertVariant(),
        new TinyBertVariant(FusedLayerNorm: true),
        new TinyBertVariant(Storage: OnnxStorage.FloatData, ConcatHeadShape: false),
        new TinyBertVariant(FusedLayerNorm: true, Storage: OnnxStorage.RawFloat16, GemmPooler: false),
        new TinyBertVariant(Storage: OnnxStorage.Int32DataFloat16),
    };

    [Theory, MemberData(nameof(Variants))]
    public void Convert_TinyBert_EveryTensorIsItsInitializerInHuggingFaceLayout(TinyBertVariant variant)
    {
        var bert = new TinyBertOnnx(variant);
        var result = Convert(Write("model.onnx", bert.Bytes()));

        bool half = variant.Storage is OnnxStorage.RawFloat16 or OnnxStorage.Int32DataFloat16;
        using var st = SafetensorsFile.Open(Path.Combine(result.OutDir, HfCheckpoint.SingleFile));
        Assert.Equal(bert.Expected.Keys.Order(StringComparer.Ordinal), st.Entries.Select(e => e.Name).Order(StringComparer.Ordinal));
        foreach (var (name, (values, shape)) in bert.Expected)
        {
            using var t = st.Load(name);
            Assert.Equal(half ? torch.ScalarType.Float16 : torch.ScalarType.Float32, t.dtype);
            Assert.Equal(shape, t.shape);
            Assert.True(values.SequenceEqual(t.to_type(torch.ScalarType.Float32).data<float>().ToArray()), $"{name} differs from its initializer");
        }
        Assert.Equal(variant.FusedLayerNorm, result.FusedLayerNorm);
        Assert.Empty(result.Unused);
    }

    [Fact]
    public void Convert_TinyBert_WritesTheConfigAndTokenizerFiles()
    {
        var result = Convert(Write("model.onnx", new TinyBertOnnx(new TinyBertVariant()).Bytes()));

        var c = JsonNode.Parse(File.ReadAllText(Path.Combine(result.OutDir, "config.json")))!;
        Assert.Equal("bert", (string)c["model_type"]!);
        Assert.Equal("BertModel", (string)c["architectures"]![0]!);
        Assert.Equal(TinyBertOnnx.Hidden, (int)c["hidden_size"]!);
        Assert.Equal(TinyBertOnnx.Layers, (int)c["num_hidden_layers"]!);
        Assert.Equal(TinyBertOnnx.Heads, (int)c["num_attention_heads"]!);
        Assert.Equal(TinyBertOnnx.Intermediate, (int)c["intermediate_size"]!);
        Assert.Equal(TinyBertOnnx.Vocab, (int)c["vocab_size"]!);
        Assert.Equal(TinyBertOnnx.Positions, (int)c["max_position_embeddings"]!);
        Assert.Equal(TinyBertOnnx.Types, (int)c["type_vocab_size"]!);
        Assert.Equal(1e-12, (double)c["layer_norm_eps"]!);
        Assert.Equal("gelu", (string)c["hidden_act"]!);
        Assert.Equal(0, (int)c["pad_token_id"]!);
        Assert.Equal("float32", (string)c["torch_dtype"]!);
        Assert.Equal(File.ReadAllText(Vocab()), File.ReadAllText(Path.Combine(result.OutDir, "vocab.txt")));
        var tc = JsonNode.Parse(File.ReadAllText(Path.Combine(result.OutDir, "tokenizer_config.json")))!;
        Assert.True((bool)tc["do_lower_case"]!);
        Assert.Equal(TinyBertOnnx.Positions, (int)tc["model_max_length"]!);
    }

    [Fact]
    public void Convert_HeadsNotInGraph_AsksForHeadsThenUsesIt()
    {
        string onnx = Write("model.onnx", new TinyBertOnnx(new TinyBertVariant(HeadsInGraph: false)).Bytes());

        var e = Assert.Throws<UserInputException>(() => Convert(onnx));
        Assert.Contains("pass --heads N", e.Message);
        Assert.False(Directory.Exists(Path.Combine(_dir, "out")));

        var result = Convert(onnx, heads: 2);
        Assert.Equal(2, result.Config.NumAttentionHeads);
        Assert.Equal("--heads", result.HeadsFrom);
    }

    [Fact]
    public void Convert_HeadsFlagDisagreeingWithGraph_IsRefused()
    {
        string onnx = Write("model.onnx", new TinyBertOnnx(new TinyBertVariant()).Bytes());
        var e = Assert.Throws<UserInputException>(() => Convert(onnx, heads: 4));
        Assert.Contains("--heads 4: the graph says 2 heads", e.Message);
    }

    [Fact]
    public void Convert_GptStyleDecoder_IsRefusedNamingTheOp()
    {
        var e = Assert.Throws<UserInputException>(() => Convert(Write("gpt.onnx", GptLike(causalMaskOp: true))));
        Assert.Contains("op Trilu of a GPT-style decoder", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void Convert_PreNormDecoderWithoutTrilu_SaysWhatItsEmbeddingsLack()
    {
        var e = Assert.Throws<UserInputException>(() => Convert(Write("gpt.onnx", GptLike(causalMaskOp: false))));
        Assert.Contains("the embeddings add 1 table lookups besides the word embeddings; BERT adds two", e.Message);
    }

    [Fact]
    public void Convert_PreNormDecoderWithTokenTypes_FindsNoAttentionBlocks()
    {
        var e = Assert.Throws<UserInputException>(() => Convert(Write("gpt.onnx", GptLike(causalMaskOp: false, tokenTypes: true))));
        Assert.Contains("found 0 attention blocks", e.Message);
        Assert.Contains("feeds 1 projections (ops reading it: MatMul)", e.Message);
    }

    [Fact]
    public void Convert_RobertaPositions_AreRefusedNotConvertedAsBert()
    {
        var e = Assert.Throws<UserInputException>(() => Convert(Write("roberta.onnx", new TinyBertOnnx(new TinyBertVariant(RobertaPositions: true)).Bytes())));
        Assert.Contains("positions are computed from input_ids (RoBERTa's padding-offset positions)", e.Message);
    }

    [Fact]
    public void Convert_GraphWithoutEmbeddingLookup_SaysNoGatherOverInputIds()
    {
        var g = new GraphProto { Name = "mlp" };
        g.Input.Add(new ValueInfoProto { Name = "input_ids" });
        g.Initializer.Add(new TensorProto { Name = "w", DataType = 1, Dims = { 4, 4 }, FloatData = { new float[16] } });
        g.Node.Add(new NodeProto { OpType = "Cast", Input = { "input_ids" }, Output = { "x" }, Attribute = { new AttributeProto { Name = "to", I = 1, Type = AttributeProto.Types.AttributeType.Int } } });
        g.Node.Add(new NodeProto { OpType = "MatMul", Input = { "x", "w" }, Output = { "y" } });
        var e = Assert.Throws<UserInputException>(() => Convert(Write("mlp.onnx", new ModelProto { IrVersion = 8, Graph = g }.ToByteArray())));
        Assert.Contains("no Gather over input_ids", e.Message);
    }

    [Fact]
    public void Convert_TruncatedFile_IsOneLineErrorNamingTheFile()
    {
        var bytes = new TinyBertOnnx(new TinyBertVariant()).Bytes();
        string onnx = Write("cut.onnx", bytes[..(bytes.Length / 2)]);

        var e = Assert.Throws<UserInputException>(() => Convert(onnx));
        Assert.StartsWith($"{onnx}: not a readable ONNX model", e.Message);
        Assert.DoesNotContain('\n', e.Message);

        var (rc, _, err) = CliHarness.Run("convert", "onnx", "--onnx", onnx, "--vocab", Vocab(), "--out", Path.Combine(_dir, "cli-out"));
        Assert.Equal(CliErrors.UserErrorExit, rc);
        Assert.Single(err.TrimEnd().Split('\n'));
        Assert.StartsWith($"error: {onnx}: not a readable ONNX model", err);
    }

    [Fact]
    public void Convert_ExternalData_IsRefusedWithTheFix()
    {
        var bert = new TinyBertOnnx(new TinyBertVariant());
        var word = bert.Model.Graph.Initializer.First(t => t.Dims.SequenceEqual(new long[] { TinyBertOnnx.Vocab, TinyBertOnnx.Hidden }));
        word.RawData = ByteString.Empty;
        word.DataLocation = TensorProto.Types.DataLocation.External;
        word.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = "model.onnx.data" });

        var e = Assert.Throws<UserInputException>(() => Convert(Write("model.onnx", bert.Bytes())));
        Assert.Contains("stored as external data (in model.onnx.data)", e.Message);
        Assert.Contains("save_as_external_data=False", e.Message);
    }

    [Fact]
    public void Convert_InitializerDeclaringMoreRowsThanTheFileHolds_IsOneLineBeforeAllocating()
    {
        var bert = new TinyBertOnnx(new TinyBertVariant());
        var word = bert.Model.Graph.Initializer.First(t => t.Dims.SequenceEqual(new long[] { TinyBertOnnx.Vocab, TinyBertOnnx.Hidden }));
        word.Dims[0] = 1_000_000_000_000; // 10^12 rows, 8 * 10^12 floats: was exit 70 with a crash file
        string onnx = Write("model.onnx", bert.Bytes());

        var e = Assert.Throws<UserInputException>(() => Convert(onnx));
        Assert.StartsWith($"{onnx}: initializer '{word.Name}' declares shape [1000000000000, {TinyBertOnnx.Hidden}]", e.Message);
        var (rc, _, err) = CliHarness.Run("convert", "onnx", "--onnx", onnx, "--vocab", Vocab(), "--out", Path.Combine(_dir, "cli"));
        Assert.Equal(2, rc);
        Assert.Single(err.Trim().Split('\n'));
    }

    [Fact]
    public void Convert_VocabThatIsNotUtf8OrIsADevice_IsOneLineNamingIt()
    {
        string onnx = Write("model.onnx", new TinyBertOnnx(new TinyBertVariant()).Bytes());
        string bad = Write("bad-vocab.txt", System.Text.Encoding.Latin1.GetBytes("[PAD]\n[UNK]\ncaf\xe9\n[CLS]\n[SEP]\n[MASK]\n"));
        var e = Assert.Throws<UserInputException>(() =>
            OnnxConversion.Convert(new OnnxConversionOptions { OnnxPath = onnx, VocabPath = bad, OutDir = Path.Combine(_dir, "out") }));
        Assert.Equal($"{bad}:3: not valid UTF-8 (byte 0xE9); save the vocabulary as UTF-8.", e.Message);
        if (!File.Exists("/dev/zero")) return;
        string zero = Path.Combine(_dir, "zero-vocab.txt");
        File.CreateSymbolicLink(zero, "/dev/zero");
        var z = Assert.Throws<UserInputException>(() =>
            OnnxConversion.Convert(new OnnxConversionOptions { OnnxPath = onnx, VocabPath = zero, OutDir = Path.Combine(_dir, "out") }));
        Assert.StartsWith($"{zero}: more than ", z.Message);
    }

    [Fact]
    public void Convert_NonEmptyOut_IsRefusedBeforeReading()
    {
        Directory.CreateDirectory(Path.Combine(_dir, "out"));
        File.WriteAllText(Path.Combine(_dir, "out", "keep.txt"), "x");
        var e = Assert.Throws<UserInputException>(() => Convert(Path.Combine(_dir, "missing.onnx")));
        Assert.Contains("exists and is not empty", e.Message);
        Assert.True(File.Exists(Path.Combine(_dir, "out", "keep.txt")));
    }

    [Fact]
    public void Convert_VocabLargerThanTheTable_IsRefused()
    {
        string onnx = Write("model.onnx", new TinyBertOnnx(new TinyBertVariant()).Bytes());
        var e = Assert.Throws<UserInputException>(() =>
            OnnxConversion.Convert(new OnnxConversionOptions { OnnxPath = onnx, VocabPath = Vocab(30), OutDir = Path.Combine(_dir, "out") }));
        Assert.Contains("30 tokens, but the model's word-embedding table has 20 rows", e.Message);
    }

    [Fact]
    public void ConvertVerb_TinyBert_WritesTheFolderAndReportsWhatItFound()
    {
        string onnx = Write("model.onnx", new TinyBertOnnx(new TinyBertVariant(FusedLayerNorm: true)).Bytes());
        string outDir = Path.Combine(_dir, "cli-out");

        var (rc, stdout, err) = CliHarness.Run("convert", "onnx", "--onnx", onnx, "--vocab", Vocab(), "--out", outDir);

        Assert.True(rc == 0, err);
        Assert.Contains("found: 2 layers, hidden 8, 2 heads", stdout);
        Assert.Contains("LayerNormalization ops", stdout);
        Assert.True(File.Exists(Path.Combine(outDir, "config.json")));
        Assert.True(File.Exists(Path.Combine(outDir, HfCheckpoint.SingleFile)));
    }

    /// <summary>
    /// A GPT-2-shaped block: word + position lookups, a pre-LN, one fused QKV projection (in, 3·hidden) and, when
    /// asked, the causal mask's Trilu and a token-type table (GPT-2 adds token-type ids through wte, here a table of its own).
    /// </summary>
    private static byte[] GptLike(bool causalMaskOp, bool tokenTypes = false)
    {
        var g = new GraphProto { Name = "gpt" };
        g.Input.Add(new ValueInfoProto { Name = "input_ids" });
        g.Input.Add(new ValueInfoProto { Name = "position_ids" });
        TensorProto F(string name, params long[] dims) =>
            new() { Name = name, DataType = 1, Dims = { dims }, FloatData = { new float[dims.Aggregate(1L, (a, d) => a * d)] } };
        g.Initializer.Add(new[] { F("wte", 20, 8), F("wpe", 16, 8), F("ln_g", 8), F("ln_b", 8), F("c_attn_w", 8, 24), F("c_attn_b", 24), F("ones", 16, 16) });
        void N(string op, string[] inputs, string output) => g.Node.Add(new NodeProto { OpType = op, Input = { inputs }, Output = { output } });
        N("Gather", new[] { "wte", "input_ids" }, "tok");
        N("Gather", new[] { "wpe", "position_ids" }, "pos");
        N("Add", new[] { "tok", "pos" }, tokenTypes ? "h0" : "h");
        if (tokenTypes)
        {
            g.Input.Add(new ValueInfoProto { Name = "token_type_ids" });
            g.Initializer.Add(F("wtt", 2, 8));
            N("Gather", new[] { "wtt", "token_type_ids" }, "tt");
            N("Add", new[] { "h0", "tt" }, "h");
        }
        N("LayerNormalization", new[] { "h", "ln_g", "ln_b" }, "ln");
        N("MatMul", new[] { "ln", "c_attn_w" }, "qkv0");
        N("Add", new[] { "qkv0", "c_attn_b" }, "qkv");
        if (causalMaskOp) N("Trilu", new[] { "ones" }, "causal");
        return new ModelProto { IrVersion = 8, Graph = g }.ToByteArray();
    }
}
