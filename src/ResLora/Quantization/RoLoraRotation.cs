using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.IO;
using ResLora.Models;

namespace ResLora.Quantization;

/// <summary>What was applied to a rotated model; stored in its config.json as <c>reslora_rotation</c> and checked on load.</summary>
public sealed record RotationRecord
{
    [JsonPropertyName("kind")] public string Kind { get; init; } = "rolora_r1r4";
    /// <summary>Seed of R1's random signs (and of a random K-factor where no Hadamard construction exists).</summary>
    [JsonPropertyName("seed")] public long Seed { get; init; }
    /// <summary>SHA-256 (hex, first 16) of the R1 sign vector: a merge or load with another rotation is refused.</summary>
    [JsonPropertyName("signs_sha256")] public string SignsHash { get; init; } = "";
    [JsonPropertyName("hidden_factor")] public string HiddenFactor { get; init; } = "";
    [JsonPropertyName("intermediate_factor")] public string IntermediateFactor { get; init; } = "";
    /// <summary>The loader must apply the online Hadamard T to down_proj's input (R4, spec §3.3).</summary>
    [JsonPropertyName("online_hadamard_down_proj")] public bool OnlineHadamardDownProj { get; init; } = true;

    /// <summary>The record in config.json, or null when there is none; a damaged record is an error naming the field.</summary>
    public static RotationRecord? FromConfig(ModelConfig c)
    {
        if (c.ResloraRotation is not { ValueKind: not JsonValueKind.Null } e) return null;
        // Ignoring a damaged record would load a rotated model without its online Hadamard: silently wrong outputs.
        static UserInputException Bad(string what) => new($"config.json: 'reslora_rotation' {what}; it is written by RoLoRA's rotation, restore it from the rotated folder.");
        try
        {
            return e.ValueKind == JsonValueKind.Object ? e.Deserialize<RotationRecord>() ?? throw Bad("is empty") : throw Bad($"is {e.ValueKind.ToString().ToLowerInvariant()}, not an object");
        }
        catch (JsonException x)
        {
            throw Bad($"is not a rotation record ({x.Message})");
        }
    }

    public JsonElement ToJsonElement() => JsonSerializer.SerializeToElement(this);
}

/// <summary>
/// RoLoRA's model transform (docs/specs/rolora.md §3) on a Hugging Face weight dictionary: untie embeddings, fold every
/// RMSNorm weight into the linears that read it (γ := 1), rotate the residual stream by R1 = diag(s)·Mᵀ (random-sign
/// normalized Hadamard), and rotate down_proj's input side by the Hadamard M (R4 offline part; the model applies T online).
/// All arithmetic in float64. No embedding-mean subtraction (§3.1: not an identity for RMSNorm models).
/// </summary>
public static class RoLoraRotation
{
    /// <summary>Returns the rotated weights (new tensors, float32) and the config of the rotated model.</summary>
    public static (Dictionary<string, Tensor> Weights, ModelConfig Config, IReadOnlyList<string> Warnings) Rotate(
        ModelConfig c, IReadOnlyDictionary<string, Tensor> weights, long seed = 0, bool rotateDownProj = true)
    {
        if (RotationRecord.FromConfig(c) is not null) throw new UserInputException("the model is already rotated (config.json has reslora_rotation); rotating twice is refused.");
        var warnings = new List<string>();
        var w = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (k, v) in weights) w[k] = v.detach().to_type(ScalarType.Float64).cpu().clone();
        // Tied embeddings: E needs E·R1 and lm_head needs (W·diag(γ_f))·R1; untie first (§3.2).
        if (c.TieWordEmbeddings || !w.ContainsKey("lm_head.weight")) w["lm_head.weight"] = w["model.embed_tokens.weight"].clone();
        int d = c.HiddenSize, dff = c.IntermediateSize;
        var (kh, ph, okh) = Hadamard.Factor(d);
        var (ki, pi, oki) = Hadamard.Factor(dff);
        if (!okh) warnings.Add($"hidden size {d} = {kh}·{ph}: no Hadamard of order {kh} is constructed here; a seeded random orthogonal {kh}×{kh} factor is used (exact invariance, not interchangeable with QuaRot's tables).");
        if (rotateDownProj && !oki) warnings.Add($"intermediate size {dff} = {ki}·{pi}: no Hadamard of order {ki}; a seeded random orthogonal factor is used for R4.");

        // 1. Norm fusion (§3.1): scale the input columns of each reader by γ, then γ := 1.
        void Fold(string norm, params string[] readers)
        {
            var g = w[norm];
            foreach (var r in readers) { var old = w[r]; w[r] = old * g.unsqueeze(0); old.Dispose(); }
            g.fill_(1.0);
        }
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            Fold(p + "input_layernorm.weight", p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight");
            Fold(p + "post_attention_layernorm.weight", p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight");
        }
        Fold("model.norm.weight", "lm_head.weight");

        // 2. R1 = diag(s)·Mᵀ (§3.2): readers W ← W R1, writers W ← R1ᵀ W (bias b ← R1ᵀ b).
        using var gen = new torch.Generator((ulong)seed);
        using var s = torch.randint(0, 2, new long[] { d }, generator: gen, dtype: ScalarType.Float64) * 2 - 1;
        using var m = Hadamard.Matrix(d, seed);
        using var r1 = s.unsqueeze(1) * m.t(); // diag(s) Mᵀ
        void Right(string k) { var old = w[k]; w[k] = old.matmul(r1); old.Dispose(); }
        void Left(string k) { if (!w.ContainsKey(k)) return; var old = w[k]; w[k] = old.dim() == 1 ? r1.t().matmul(old) : r1.t().matmul(old); old.Dispose(); }
        Right("model.embed_tokens.weight");
        Right("lm_head.weight");
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = $"model.layers.{i}.";
            Right(p + "self_attn.q_proj.weight"); Right(p + "self_attn.k_proj.weight"); Right(p + "self_attn.v_proj.weight");
            Right(p + "mlp.gate_proj.weight"); Right(p + "mlp.up_proj.weight");
            Left(p + "self_attn.o_proj.weight"); Left(p + "self_attn.o_proj.bias");
            Left(p + "mlp.down_proj.weight"); Left(p + "mlp.down_proj.bias");
        }

        // 3. R4 offline (§3.3): W_down ← W_down Mᵀ over its input (d_ff) axis; the model applies T(z) = z Mᵀ online.
        if (rotateDownProj)
            for (int i = 0; i < c.NumHiddenLayers; i++)
            {
                string k = $"model.layers.{i}.mlp.down_proj.weight";
                var old = w[k];
                w[k] = Hadamard.Apply(old, seed);
                old.Dispose();
            }

        var outW = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (k, v) in w) { outW[k] = v.to_type(ScalarType.Float32); v.Dispose(); }
        string hash = Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(s.to_type(ScalarType.Int8).bytes.ToArray()))[..16].ToLowerInvariant();
        var record = new RotationRecord { Seed = seed, SignsHash = hash, HiddenFactor = $"{kh}x{ph}", IntermediateFactor = $"{ki}x{pi}", OnlineHadamardDownProj = rotateDownProj };
        var cfg = c with { TieWordEmbeddings = false, ResloraRotation = record.ToJsonElement() };
        return (outW, cfg, warnings);
    }

    /// <summary>Rotates a Hugging Face model folder into a new folder (config records the rotation; tokenizer files copied).</summary>
    public static IReadOnlyList<string> RotateFolder(string modelDir, string outDir, long seed = 0, bool rotateDownProj = true)
    {
        var (config, weights) = ModelFolder.LoadBaseWeights(modelDir, ScalarType.Float32);
        try
        {
            var (rotated, cfg, warnings) = Rotate(config, weights, seed, rotateDownProj);
            try { ModelFolder.SaveNew(outDir, cfg, rotated, companionsFrom: modelDir); }
            finally { foreach (var t in rotated.Values) t.Dispose(); }
            return warnings;
        }
        finally
        {
            foreach (var t in weights.Values) t.Dispose();
        }
    }

    /// <summary>Applies what a rotated model's config asks of the live model: the online Hadamard before every down_proj.</summary>
    public static void ApplyOnline(CausalLM model)
    {
        if (RotationRecord.FromConfig(model.Config) is not { OnlineHadamardDownProj: true } rec) return;
        foreach (var layer in model.Blocks) layer.DownProjInputTransform = z => Hadamard.Apply(z, rec.Seed);
    }
}

/// <summary>
/// What a folder written by this library records in its config.json and the loader must re-apply to the live model:
/// the online Hadamard of a RoLoRA-rotated model, the activation quantizers of a <c>reslora quantize</c> output.
/// Pass <see cref="Recorded"/> to <see cref="ModelLoader.Load"/> whenever the folder may be one of these.
/// </summary>
public sealed class RecordedTransforms : IModelLoadTransform
{
    public static readonly IReadOnlyList<IModelLoadTransform> Recorded = new[] { new RecordedTransforms() };

    private RecordedTransforms() { }

    public void Apply(CausalLM model)
    {
        RoLoraRotation.ApplyOnline(model);
        ModelQuantizer.ApplyRecorded(model);
    }
}

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
            if (c.TieWordEmbeddings) w["lm_head.weight"] = w["model.embed_tokens.weight"].clone();
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
                string p = $"model.layers.{i}.";
                Plant(p + "input_layernorm.weight", p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight");
                Plant(p + "post_attention_layernorm.weight", p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight");
            }
            Plant("model.norm.weight", "lm_head.weight");
            var cfg = c with { TieWordEmbeddings = false };
            ModelFolder.SaveNew(outDir, cfg, w.Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value.to_type(ScalarType.Float32))), companionsFrom: modelDir);
        }
        finally
        {
            foreach (var t in w.Values) t.Dispose();
        }
    }
}
