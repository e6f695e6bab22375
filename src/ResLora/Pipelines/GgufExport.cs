using System.Globalization;
using ResLora.IO.Gguf;
using ResLora.Models;

namespace ResLora.Pipelines;

/// <summary>What <c>reslora export --as gguf</c> wrote.</summary>
public sealed record GgufExportReport(string Path, string Architecture, string TensorType, string Vocabulary, int Tensors, long Bytes, IReadOnlyList<string> Notes)
{
    /// <summary>The merge's measurements when an adapter was merged first.</summary>
    public MergeReport? Merge { get; init; }

    public string Describe() => string.Create(CultureInfo.InvariantCulture,
        $"wrote {Path}: GGUF v3, architecture {Architecture}, {Tensors} tensors ({TensorType} matrices, norms and biases F32), vocabulary {Vocabulary}, {Bytes / 1048576.0:0.##} MiB");
}

/// <summary>
/// The library function behind <c>reslora export --as gguf</c>: a causal LM (with an adapter merged into it first) as a
/// GGUF v3 file that llama.cpp (and Ollama, LM Studio, LLamaSharp) loads, following convert_hf_to_gguf.py: its metadata
/// keys, tensor names, the q/k row permutation of the <c>llama</c> architecture, llama3 rope scaling as a
/// <c>rope_freqs.weight</c> tensor, and the vocabulary of tokenizer.json. One-dimensional tensors (norms, biases) stay F32;
/// matrices take <c>--gguf-type</c>.
/// </summary>
public static class GgufExport
{
    public static GgufExportReport Export(string modelDir, string? adapterDir, string outPath, GgmlType type, RuntimeOptions runtime, Action<string>? warn = null)
    {
        CheckOut(outPath);
        var stored = ModelFolder.LoadConfig(modelDir);
        if (stored.ResloraQuantization is not null)
            warn?.Invoke($"{modelDir} records per-token activation quantization (reslora quantize); GGUF has no such step, so llama.cpp runs its (already quantized) weights with full-precision activations.");
        if (adapterDir is null)
        {
            if (stored.ResloraRotation is null)
            {
                // Nothing to merge or fold: each tensor is read from the checkpoint, converted and written, one at a time.
                var (config, ckpt, expected) = ModelFolder.OpenChecked(modelDir);
                using var _ = ckpt;
                var lazy = expected.Select(kv => (kv.Key, kv.Value, (Func<Tensor>)(() => ckpt.Load(kv.Key, ScalarType.Float32)))).ToList();
                return WriteWeights(config, lazy, modelDir, outPath, type);
            }
            // A rotated folder is loaded so its online Hadamard can be folded (Write); a bf16 checkpoint stays bf16 in memory
            // (bf16 → f32 is exact) and each tensor becomes float32 only while it is written.
            bool bf16 = string.Equals(stored.TorchDtype, "bfloat16", StringComparison.OrdinalIgnoreCase);
            using var model = ModelSessions.LoadBase(modelDir, runtime with { Dtype = bf16 ? "bfloat16" : "float32" });
            return Write(model, modelDir, outPath, type);
        }
        runtime = runtime with { Dtype = "float32" }; // merged in float32, rounded once when written
        GgufExportReport? report = null;
        using var probe = torch.arange(1, 17, dtype: ScalarType.Int64).unsqueeze(0);
        var merge = MergePipeline.MergeInMemory(modelDir, adapterDir, runtime, probe, new MergeOptions(), (merged, _) => report = Write(merged, modelDir, outPath, type), warn);
        return report! with { Merge = merge };
    }

    /// <summary>The output path must be a new .gguf file in an existing folder.</summary>
    public static void CheckOut(string outPath)
    {
        if (!outPath.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase))
            throw new UserInputException($"--out {outPath}: the GGUF export writes one file; give a path ending in .gguf.");
        if (Directory.Exists(outPath))
            throw new UserInputException($"--out {outPath} is a folder; give a file path ending in .gguf.");
        if (File.Exists(outPath))
            throw new UserInputException($"--out {outPath} exists; choose a new file (exporting never overwrites).");
        string? dir = Path.GetDirectoryName(Path.GetFullPath(outPath));
        if (dir is not null && !Directory.Exists(dir))
            throw new UserInputException($"--out {outPath}: the folder {dir} does not exist; create it first.");
    }

    /// <summary>
    /// Writes <paramref name="model"/> with the vocabulary of <paramref name="modelDir"/>. An online transform of a block's
    /// down-projection input (RoLoRA's Hadamard on a rotated folder) is folded into that weight, W' = W·Mᵀ with M the
    /// transform applied to the identity, since llama.cpp runs no such transform.
    /// </summary>
    public static GgufExportReport Write(CausalLM model, string modelDir, string outPath, GgmlType type)
    {
        var c = model.Config;
        var layout = model.Family.Layout;
        var transforms = new Dictionary<string, Func<Tensor, Tensor>>(StringComparer.Ordinal);
        for (int i = 0; i < model.Blocks.Count; i++)
            if (model.Blocks[i].DownProjInputTransform is { } t) transforms[layout.LayerPrefix(i) + layout.DownProj + ".weight"] = t;
        var weights = new List<(string, long[], Func<Tensor>)>();
        foreach (var (hf, tensor) in model.FullPrecisionWeights())
        {
            var src = tensor;
            Func<Tensor> get = transforms.TryGetValue(hf, out var transform)
                ? () =>
                {
                    using var scope = torch.NewDisposeScope();
                    using var noGrad = torch.no_grad();
                    var wf = src.detach().to_type(ScalarType.Float32);
                    var m = transform(torch.eye(wf.shape[1], dtype: ScalarType.Float32, device: wf.device)).to_type(ScalarType.Float32);
                    return scope.MoveToOuter(wf.matmul(m.t()));
                }
                : () => src.detach();
            weights.Add((hf, tensor.shape, get));
        }
        return WriteWeights(c, weights, modelDir, outPath, type);
    }

    /// <summary>Writes the base weights (name, shape, a function giving the tensor when it is written) with the metadata and vocabulary.</summary>
    private static GgufExportReport WriteWeights(ModelConfig c, IReadOnlyList<(string Name, long[] Shape, Func<Tensor> Tensor)> weights, string modelDir, string outPath, GgmlType type)
    {
        var names = ModelFamilies.ForCausalLM(c.ModelType).Gguf(c);
        string arch = names.Architecture;
        var notes = new List<string>();
        var w = new GgufWriter();
        w.Set("general.architecture", arch);
        w.Set("general.type", "model");
        w.Set("general.name", Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelDir))));
        w.Set("general.file_type", GgmlTypes.FileType(type));
        names.WriteMetadata?.Invoke(w, c);
        void Key(string key, uint v) { if (!w.Has(key)) w.Set(key, v); }
        void KeyF(string key, float v) { if (!w.Has(key)) w.Set(key, v); }
        Key($"{arch}.context_length", (uint)c.MaxPositionEmbeddings);
        Key($"{arch}.embedding_length", (uint)c.HiddenSize);
        Key($"{arch}.block_count", (uint)c.NumHiddenLayers);
        Key($"{arch}.feed_forward_length", (uint)c.IntermediateSize);
        Key($"{arch}.attention.head_count", (uint)c.NumAttentionHeads);
        Key($"{arch}.attention.head_count_kv", (uint)c.NumKeyValueHeads);
        if (c.HeadDimRaw is int hd)
        {
            Key($"{arch}.attention.key_length", (uint)hd);
            Key($"{arch}.attention.value_length", (uint)hd);
        }
        Key($"{arch}.rope.dimension_count", (uint)c.HeadDim);
        KeyF($"{arch}.rope.freq_base", (float)c.RopeTheta);
        KeyF($"{arch}.attention.layer_norm_rms_epsilon", (float)c.RmsNormEps);
        Key($"{arch}.vocab_size", (uint)c.VocabSize);
        float[]? ropeFreqs = names.OwnsRopeScaling ? null : RopeScaling(w, c, arch);

        string vocab = GgufVocabExport.Write(w, modelDir, c.VocabSize, notes);

        int count = 0;
        string outputMatrix = c.TieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
        foreach (var (hf, shape, tensor) in weights)
        {
            if (hf == "lm_head.weight" && c.TieWordEmbeddings) continue; // llama.cpp reuses token_embd
            string gg = names.ToGguf(hf) ?? throw new InvalidOperationException($"weight '{hf}' has no GGUF name in the {arch} architecture");
            int? heads = names.PermuteHeads(hf, c);
            var t = shape.Length == 1 ? GgmlType.F32
                : type == GgmlType.Q4_0 && hf == outputMatrix ? GgmlType.Q8_0 // llama-quantize keeps the output matrix finer than Q4_0
                : type;
            w.AddTensor(gg, shape, t, () =>
            {
                using var scope = torch.NewDisposeScope();
                var f = tensor().to_type(ScalarType.Float32).cpu().contiguous();
                var v = f.data<float>().ToArray();
                if (names.ToGgufValues is { } map) v = map(hf, v);
                return heads is int h ? GgufNames.Permute(v, shape, h) : v;
            });
            count++;
        }
        foreach (var (extraName, values) in names.ExtraTensors?.Invoke(c) ?? Array.Empty<(string, float[])>())
        {
            w.AddTensor(extraName, new long[] { values.Length }, GgmlType.F32, () => values);
            count++;
        }
        if (ropeFreqs is not null)
        {
            w.AddTensor("rope_freqs.weight", new long[] { ropeFreqs.Length }, GgmlType.F32, () => ropeFreqs);
            count++;
        }
        if (type == GgmlType.Q4_0) notes.Add($"q4_0: the output matrix ({names.ToGguf(outputMatrix)}) is written as Q8_0, as llama-quantize keeps it finer than the rest.");
        w.Write(outPath);
        return new GgufExportReport(Path.GetFullPath(outPath), arch, type.ToString(), vocab, count, new FileInfo(outPath).Length, notes);
    }

    /// <summary>
    /// Rope scaling as llama.cpp reads it: linear as <c>rope.scaling.type/factor</c> metadata; llama3 as the per-frequency
    /// factors of convert_hf_to_gguf's LlamaModel.generate_extra_tensors (returned, written as <c>rope_freqs.weight</c>).
    /// </summary>
    private static float[]? RopeScaling(GgufWriter w, ModelConfig c, string arch)
    {
        var rs = c.RopeScaling;
        if (rs is null || rs.Kind == "default") return null;
        if (rs.Kind == "linear")
        {
            w.Set($"{arch}.rope.scaling.type", "linear");
            w.Set($"{arch}.rope.scaling.factor", (float)rs.Factor);
            return null;
        }
        if (rs.Kind == "llama3" && arch == "llama")
        {
            int dim = c.HeadDim;
            double lowWavelen = rs.OriginalMaxPositionEmbeddings / rs.LowFreqFactor, highWavelen = rs.OriginalMaxPositionEmbeddings / rs.HighFreqFactor;
            var f = new float[dim / 2];
            for (int i = 0; i < f.Length; i++)
            {
                double freq = 1.0 / Math.Pow(c.RopeTheta, 2.0 * i / dim), wavelen = 2 * Math.PI / freq;
                if (wavelen < highWavelen) f[i] = 1f;
                else if (wavelen > lowWavelen) f[i] = (float)rs.Factor;
                else
                {
                    double smooth = (rs.OriginalMaxPositionEmbeddings / wavelen - rs.LowFreqFactor) / (rs.HighFreqFactor - rs.LowFreqFactor);
                    f[i] = (float)(1.0 / ((1 - smooth) / rs.Factor + smooth));
                }
            }
            return f;
        }
        throw new UserInputException($"config.json rope_scaling type '{rs.Kind}' is not exported to GGUF for the {arch} architecture (supported: linear, and llama3 for Llama).");
    }
}
