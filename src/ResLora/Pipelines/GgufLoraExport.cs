using System.Globalization;
using ResLora.Adapters;
using ResLora.IO.Gguf;
using ResLora.Models;

namespace ResLora.Pipelines;

/// <summary>What <c>reslora export --as gguf-lora</c> wrote.</summary>
public sealed record GgufLoraReport(string Path, string Architecture, int Modules, float Alpha, long Bytes, IReadOnlyList<string> Notes, ExportReport? Conversion)
{
    public string Describe() => string.Create(CultureInfo.InvariantCulture,
        $"wrote {Path}: llama.cpp LoRA adapter (GGUF v3, architecture {Architecture}), {Modules} modules, adapter.lora.alpha {Alpha}, {Bytes / 1024.0:0.#} KiB")
        + (Conversion is null ? "" : $"; converted first: {Conversion.Describe()}");
}

/// <summary>
/// The library function behind <c>reslora export --as gguf-lora</c>: an adapter as llama.cpp's LoRA GGUF, following
/// convert_lora_to_gguf.py: <c>general.type=adapter</c>, <c>adapter.type=lora</c>, <c>adapter.lora.alpha</c>, one
/// <c>.lora_a</c> (r, in) and <c>.lora_b</c> (out, r) pair per module under llama.cpp's tensor names, the rows of lora_b
/// permuted for q/k in the <c>llama</c> architecture. llama.cpp scales each pair by alpha / r. Adapters that are not plain
/// LoRA are first converted by <c>export --as lora</c> (ResLoRA fold, SVD) and that conversion's report is returned.
/// The pairs are written F32 (they are small; the merged ΔW is then exact).
/// </summary>
public static class GgufLoraExport
{
    public static GgufLoraReport Export(string modelDir, string adapterDir, string outPath, RuntimeOptions runtime, ExportOptions options, Action<string>? warn = null)
    {
        GgufExport.CheckOut(outPath);
        runtime = runtime with { Dtype = "float32" };
        var config = ModelSessions.ReadAdapterConfig(adapterDir, warn);
        if (config.ModulesToSave is { Count: > 0 })
            throw new UserInputException($"{adapterDir}: modules_to_save ({string.Join(", ", config.ModulesToSave)}) are fully trained weights, which a llama.cpp LoRA cannot carry; export the merged model instead: reslora export --as gguf --model {modelDir} --adapter {adapterDir} --out FILE.gguf.");
        using (var model = ModelSessions.LoadWithAdapter(modelDir, adapterDir, runtime, warn, config))
        {
            var adapters = AdapterModel.ByModulePath(model);
            if (adapters.Count > 0 && adapters.Values.All(a => a.GetType() == typeof(LoraLinear)))
                return Write(model, adapters.ToDictionary(kv => kv.Key, kv => (ILowRankPair)kv.Value, StringComparer.Ordinal), outPath, null);
        }
        // Not plain LoRA: export --as lora's conversion (ResLoRA fold, SVD) into a temporary folder next to the output.
        string tmp = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(outPath))!, $".{Path.GetFileName(outPath)}.lora-{Guid.NewGuid():N}");
        try
        {
            var conversion = ExportPipeline.AsLora(modelDir, adapterDir, tmp, runtime, options, warn);
            using var model = ModelSessions.LoadWithAdapter(modelDir, tmp, runtime, warn);
            var pairs = AdapterModel.ByModulePath(model).ToDictionary(kv => kv.Key, kv => (ILowRankPair)kv.Value, StringComparer.Ordinal);
            return Write(model, pairs, outPath, conversion);
        }
        finally
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        }
    }

    private static GgufLoraReport Write(CausalLM model, IReadOnlyDictionary<string, ILowRankPair> pairs, string outPath, ExportReport? conversion)
    {
        var c = model.Config;
        var names = ModelFamilies.ForCausalLM(c.ModelType).Gguf(c);
        var notes = new List<string>();
        // llama.cpp applies alpha / r with one alpha per file: exact when every module's scaling·r agrees (PEFT's usual
        // case). Otherwise each module's scaling is folded into lora_b and alpha is 0 (llama.cpp then scales by 1).
        var alphas = pairs.Values.Select(p => p.Scaling * p.LoraA.shape[0]).ToList();
        bool uniform = alphas.All(a => Math.Abs(a - alphas[0]) <= 1e-6 * Math.Abs(alphas[0]));
        float alpha = uniform && alphas.Count > 0 ? (float)alphas[0] : 0f;
        if (!uniform) notes.Add("the modules' scalings differ (rank_pattern, alpha_pattern or rsLoRA): each scaling is folded into lora_b and adapter.lora.alpha is 0, so llama.cpp applies the pairs as they are.");
        var w = new GgufWriter();
        w.Set("general.architecture", names.Architecture);
        w.Set("general.type", "adapter");
        w.Set("adapter.type", "lora");
        w.Set("adapter.lora.alpha", alpha);
        int modules = 0;
        foreach (var (path, p) in pairs.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            string hf = path + ".weight";
            string gg = names.ToGguf(hf) ?? throw new UserInputException($"adapter module '{path}' has no llama.cpp tensor in the {names.Architecture} architecture; export the merged model instead (--as gguf --adapter).");
            int? heads = names.PermuteHeads(hf, c);
            Tensor a = p.LoraA, b = p.LoraB;
            double fold = uniform ? 1.0 : p.Scaling;
            w.AddTensor(gg + ".lora_a", a.shape, GgmlType.F32, () => Floats(a, 1.0));
            long[] bShape = b.shape;
            w.AddTensor(gg + ".lora_b", bShape, GgmlType.F32, () =>
            {
                var v = Floats(b, fold);
                return heads is int h ? GgufNames.Permute(v, bShape, h) : v;
            });
            modules++;
        }
        if (modules == 0) throw new UserInputException("the adapter has no LoRA modules to export.");
        w.Write(outPath);
        return new GgufLoraReport(Path.GetFullPath(outPath), names.Architecture, modules, alpha, new FileInfo(outPath).Length, notes, conversion);
    }

    private static float[] Floats(Tensor t, double scale)
    {
        using var f = t.detach().to_type(ScalarType.Float32).cpu().contiguous();
        var v = f.data<float>().ToArray();
        if (scale != 1.0) for (int i = 0; i < v.Length; i++) v[i] = (float)(v[i] * scale);
        return v;
    }
}
