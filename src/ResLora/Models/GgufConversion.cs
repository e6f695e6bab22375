using System.Globalization;
using ResLora.IO;
using ResLora.IO.Gguf;
using ResLora.Text;

namespace ResLora.Models;

/// <summary>What <see cref="GgufConversion.Convert"/> wrote, for the CLI's report.</summary>
public sealed record GgufConversionResult(ModelConfig Config, string OutDir, int Tensors, IReadOnlyDictionary<GgmlType, int> StoredTypes,
    GgufTokenizerFiles.Summary Tokenizer, IReadOnlyList<string> Ignored);

/// <summary>
/// <c>reslora convert gguf</c>: a llama.cpp GGUF model of architecture <c>llama</c>, <c>qwen2</c> or <c>qwen3</c> becomes a
/// Hugging Face folder (config.json, safetensors, tokenizer.json, tokenizer_config.json), written atomically. The
/// metadata keys read are those convert_hf_to_gguf.py writes (gguf-py constants.py); q/k rows of the <c>llama</c>
/// architecture are un-permuted (<see cref="GgufNames.Permute"/>). Beyond the reader's structural checks, the metadata
/// and tensors are checked against each other: every tensor the block count implies, with the shape the sizes imply,
/// and a vocabulary as long as the embedding.
/// </summary>
public static class GgufConversion
{
    /// <summary>GGUF architectures (general.architecture) this converter reads, and the model_type each becomes.</summary>
    public static readonly IReadOnlyList<string> SupportedArchitectures = new[] { "llama", "qwen2", "qwen3", "smollm3" };

    private static readonly Dictionary<string, string> HfArchitecture = new(StringComparer.Ordinal)
    {
        ["llama"] = "LlamaForCausalLM", ["qwen2"] = "Qwen2ForCausalLM", ["qwen3"] = "Qwen3ForCausalLM",
        // llama.cpp's smollm3 skips rotary on every 4th layer with no key for it: SmolLM3's default no_rope_layer_interval.
        ["smollm3"] = "SmolLM3ForCausalLM",
    };

    /// <summary>Converts <paramref name="ggufPath"/> into the new folder <paramref name="outDir"/>, weights stored as <paramref name="dtype"/> (bfloat16 or float32).</summary>
    public static GgufConversionResult Convert(string ggufPath, string outDir, ScalarType dtype = ScalarType.BFloat16)
    {
        if (dtype is not (ScalarType.BFloat16 or ScalarType.Float32)) throw new UserInputException($"--dtype {dtype}: choose bf16 or f32.");
        AtomicFolder.CheckWritable(outDir);
        using var g = GgufFile.Open(ggufPath);
        var (config, names) = ReadConfig(g);
        var family = ModelFamilies.ForCausalLM(config.ModelType, ggufPath);
        var expected = family.ExpectedWeights(config);
        var plan = new List<(string Hf, GgufTensorInfo T, int? Heads)>();
        foreach (var (hf, shape) in expected)
        {
            if (hf == "lm_head.weight" && config.TieWordEmbeddings) continue;
            string gg = names.ToGguf(hf) ?? throw new InvalidOperationException($"no GGUF name for {hf}");
            var t = g.Tensors.FirstOrDefault(x => x.Name == gg)
                ?? throw new UserInputException($"{ggufPath}: tensor '{gg}' is missing ({config.ModelType} with block_count {config.NumHiddenLayers} needs it); the file is incomplete or not a {names.Architecture} model.");
            if (!t.Shape.SequenceEqual(shape))
                throw new UserInputException($"{ggufPath}: tensor '{gg}' has shape [{string.Join(", ", t.Shape)}], but the metadata implies [{string.Join(", ", shape)}].");
            if (GgmlTypes.Geometry(t.Type) is null || !CanDecode(t.Type))
                throw new UserInputException($"{ggufPath}: tensor '{gg}' is stored as {t.Type}, which this converter cannot decode (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K are supported).");
            plan.Add((hf, t, names.PermuteHeads(hf, config)));
        }
        var used = plan.Select(p => p.T.Name).ToHashSet(StringComparer.Ordinal);
        var ignored = g.Tensors.Where(t => !used.Contains(t.Name)).Select(t => t.Name).ToList();
        var weights = plan.Select(p => new LazyTensor(p.Hf, dtype, p.T.Shape, () =>
        {
            float[] w = g.ReadFloats(p.T);
            if (p.Heads is { } heads) w = GgufNames.Permute(w, p.T.Shape, heads, inverse: true);
            if (names.FromGgufValues is { } map) w = map(p.Hf, w);
            using var f = torch.tensor(w, p.T.Shape);
            return f.to_type(dtype);
        })).ToList();
        GgufTokenizerFiles.Summary? tok = null;
        AtomicFolder.Write(outDir, tmp =>
        {
            tok = GgufTokenizerFiles.Write(g, tmp, config.VocabSize, config.MaxPositionEmbeddings);
            ModelFolder.Save(tmp, config, weights);
        });
        var types = plan.GroupBy(p => p.T.Type).ToDictionary(x => x.Key, x => x.Count());
        return new GgufConversionResult(config, outDir, plan.Count, types, tok!, ignored);
    }

    private static bool CanDecode(GgmlType t) => t is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_K or GgmlType.Q6_K;

    /// <summary>
    /// The config.json of the GGUF's metadata (convert_hf_to_gguf's set_gguf_parameters read back) and the tensor names of
    /// its architecture; an unsupported architecture, a missing size or a rope scaling that cannot be expressed is an error naming the file.
    /// </summary>
    public static (ModelConfig Config, GgufNames Names) ReadConfig(GgufFile g)
    {
        string src = g.Path;
        string arch = g.GetString("general.architecture") ?? throw new UserInputException($"{src}: no general.architecture; not a llama.cpp model file.");
        if (!SupportedArchitectures.Contains(arch))
            throw new UserInputException($"{src}: GGUF architecture '{arch}' is not supported; supported: {string.Join(", ", SupportedArchitectures)}.");
        int Size(string key, int? fallback = null)
        {
            long? v = g.GetInteger($"{arch}.{key}");
            if (v is null) return fallback ?? throw new UserInputException($"{src}: no {arch}.{key}; the model's metadata is incomplete.");
            if (v <= 0 || v > int.MaxValue) throw new UserInputException($"{src}: {arch}.{key} is {v}, not a positive size.");
            return (int)v;
        }
        var embd = g.Tensors.FirstOrDefault(t => t.Name == "token_embd.weight") ?? throw new UserInputException($"{src}: tensor 'token_embd.weight' is missing; the file is incomplete.");
        if (embd.Shape.Length != 2) throw new UserInputException($"{src}: token_embd.weight has {embd.Shape.Length} dimensions, not 2.");
        int hidden = Size("embedding_length"), heads = Size("attention.head_count");
        if (embd.Shape[1] != hidden) throw new UserInputException($"{src}: token_embd.weight has {embd.Shape[1]} columns, but {arch}.embedding_length is {hidden}.");
        if (embd.Shape[0] > int.MaxValue) throw new UserInputException($"{src}: token_embd.weight has {embd.Shape[0]} rows, too many.");
        int vocab = (int)embd.Shape[0];
        if (g.GetInteger($"{arch}.vocab_size") is { } vs && vs != vocab)
            throw new UserInputException($"{src}: {arch}.vocab_size is {vs}, but token_embd.weight has {vocab} rows.");
        int keyLength = Size("attention.key_length", hidden / heads);
        if (g.GetInteger($"{arch}.attention.value_length") is { } vl && vl != keyLength)
            throw new UserInputException($"{src}: {arch}.attention.value_length ({vl}) differs from key_length ({keyLength}); such models are not supported.");
        RopeScaling? rope = null;
        string? scaling = g.GetString($"{arch}.rope.scaling.type");
        if (scaling is "linear")
        {
            double factor = Number(g, $"{arch}.rope.scaling.factor") ?? throw new UserInputException($"{src}: {arch}.rope.scaling.type is linear but {arch}.rope.scaling.factor is missing.");
            rope = new RopeScaling { RopeType = "linear", Factor = factor };
        }
        else if (scaling is not (null or "none"))
            throw new UserInputException($"{src}: {arch}.rope.scaling.type '{scaling}' is not supported (none and linear are).");
        if (g.Tensors.Any(t => t.Name == "rope_freqs.weight"))
            throw new UserInputException($"{src}: the file stores rope_freqs.weight (Llama 3.1-style rope scaling as per-dimension factors); its llama3 parameters cannot be recovered exactly, so it is not converted. Convert the original Hugging Face model instead.");
        bool bias = g.Tensors.Any(t => t.Name == "blk.0.attn_q.bias");
        bool hasOutput = g.Tensors.Any(t => t.Name == "output.weight");
        long? bos = g.GetInteger("tokenizer.ggml.bos_token_id"), eos = g.GetInteger("tokenizer.ggml.eos_token_id"), pad = g.GetInteger("tokenizer.ggml.padding_token_id");
        var config = new ModelConfig
        {
            Architectures = new[] { HfArchitecture[arch] },
            ModelType = arch,
            VocabSize = vocab,
            HiddenSize = hidden,
            IntermediateSize = Size("feed_forward_length"),
            NumHiddenLayers = Size("block_count"),
            NumAttentionHeads = heads,
            NumKeyValueHeadsRaw = Size("attention.head_count_kv", heads),
            HeadDimRaw = keyLength != hidden / heads || arch == "qwen3" ? keyLength : null,
            RmsNormEps = Number(g, $"{arch}.attention.layer_norm_rms_epsilon") ?? throw new UserInputException($"{src}: no {arch}.attention.layer_norm_rms_epsilon; the model's metadata is incomplete."),
            RopeTheta = Number(g, $"{arch}.rope.freq_base") ?? 10000.0,
            RopeScaling = rope,
            MaxPositionEmbeddings = Size("context_length"),
            TieWordEmbeddings = !hasOutput,
            AttentionBias = arch == "llama" && bias,
            BosTokenId = bos is { } b && b >= 0 && b < vocab ? (int)b : null,
            EosTokenIds = eos is { } e && e >= 0 && e < vocab ? new[] { (int)e } : null,
            PadTokenId = pad is { } p && p >= 0 && p < vocab ? (int)p : null,
        };
        config.Validate(src);
        var names = ModelFamilies.ForCausalLM(arch, src).Gguf(config);
        if (names.Architecture != arch) throw new InvalidOperationException($"family of {arch} maps to GGUF architecture {names.Architecture}");
        return (config, names);
    }

    /// <summary>A float metadata value as its shortest decimal (1e-6f reads 1E-06, not 9.99999997e-07), as the Hugging Face config held it.</summary>
    private static double? Number(GgufFile g, string key)
    {
        if (!g.Metadata.TryGetValue(key, out var v)) return null;
        return v switch
        {
            float f => double.Parse(f.ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture),
            double d => d,
            _ => g.GetNumber(key) ?? throw new UserInputException($"{g.Path}: {key} is not a number."),
        };
    }
}
