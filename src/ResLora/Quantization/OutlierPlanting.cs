using ResLora.IO;
using ResLora.Models;

namespace ResLora.Quantization;

/// <summary>
/// Plants activation outliers without changing the model's function, for RoLoRA benchmarks on small models that have
/// none: the RMSNorm weights γ of a few channels are multiplied by <c>factor</c> and the matching input columns of the
/// linears that read those norms (q/k/v, gate/up, lm_head) are divided by it. The normed activations — exactly what the
/// activation quantizers see — then carry the large per-channel outliers real LLMs have.
/// </summary>
public static class OutlierPlanting
{
    public static void PlantFolder(string modelDir, string outDir, int channels, double factor, long seed)
    {
        var (c, w) = ModelFolder.LoadBaseWeights(modelDir, ScalarType.Float64);
        try
        {
            var layout = ModelFamilies.ForCausalLM(c.ModelType).Layout;
            if (c.TieWordEmbeddings) w[layout.LmHead] = w[layout.EmbedTokens].clone();
            var rng = new Random((int)seed);
            var idx = Enumerable.Range(0, c.HiddenSize).OrderBy(_ => rng.Next()).Take(channels).Select(i => (long)i).ToArray();
            using var ix = torch.tensor(idx);
            void Plant(string norm, params string[] readers)
            {
                w[norm].index_copy_(0, ix, w[norm].index_select(0, ix) * factor);
                foreach (var r in readers) w[r].index_copy_(1, ix, w[r].index_select(1, ix) / factor);
            }
            for (int i = 0; i < c.NumHiddenLayers; i++)
            {
                string p = layout.LayerPrefix(i);
                foreach (var (norm, readers) in layout.NormReaders) Plant(p + norm + ".weight", readers.Select(r => p + r + ".weight").ToArray());
            }
            Plant(layout.FinalNorm, layout.LmHead);
            var cfg = c with { TieWordEmbeddings = false };
            ModelFolder.SaveNew(outDir, cfg, w.Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value.to_type(ScalarType.Float32))), companionsFrom: modelDir);
        }
        finally
        {
            foreach (var t in w.Values) t.Dispose();
        }
    }
}
