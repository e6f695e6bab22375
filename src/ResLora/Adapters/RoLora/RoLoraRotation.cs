using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.IO;
using ResLora.Models;
using ResLora.Quantization;

namespace ResLora.Adapters;

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
        var layout = ModelFamilies.ForCausalLM(c.ModelType).Layout;
        if (layout.RotationRefusal is { } why) throw new UserInputException($"RoLoRA's rotation is not available for model_type '{c.ModelType}': {why}");
        var warnings = new List<string>();
        var w = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (k, v) in weights) w[k] = v.detach().to_type(ScalarType.Float64).cpu().clone();
        // Tied embeddings: E needs E·R1 and lm_head needs (W·diag(γ_f))·R1; untie first (§3.2).
        if (c.TieWordEmbeddings || !w.ContainsKey(layout.LmHead)) w[layout.LmHead] = w[layout.EmbedTokens].clone();
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
            string p = layout.LayerPrefix(i);
            foreach (var (norm, readers) in layout.NormReaders) Fold(p + norm + ".weight", readers.Select(r => p + r + ".weight").ToArray());
        }
        Fold(layout.FinalNorm, layout.LmHead);

        // 2. R1 = diag(s)·Mᵀ (§3.2): readers W ← W R1, writers W ← R1ᵀ W (bias b ← R1ᵀ b).
        using var gen = new torch.Generator((ulong)seed);
        using var s = torch.randint(0, 2, new long[] { d }, generator: gen, dtype: ScalarType.Float64) * 2 - 1;
        using var m = Hadamard.Matrix(d, seed);
        using var r1 = s.unsqueeze(1) * m.t(); // diag(s) Mᵀ
        void Right(string k) { var old = w[k]; w[k] = old.matmul(r1); old.Dispose(); }
        void Left(string k) { if (!w.ContainsKey(k)) return; var old = w[k]; w[k] = old.dim() == 1 ? r1.t().matmul(old) : r1.t().matmul(old); old.Dispose(); }
        Right(layout.EmbedTokens);
        Right(layout.LmHead);
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            string p = layout.LayerPrefix(i);
            foreach (var (_, readers) in layout.NormReaders) foreach (var r in readers) Right(p + r + ".weight");
            foreach (var writer in layout.ResidualWriters) { Left(p + writer + ".weight"); Left(p + writer + ".bias"); }
        }

        // 3. R4 offline (§3.3): W_down ← W_down Mᵀ over its input (d_ff) axis; the model applies T(z) = z Mᵀ online.
        if (rotateDownProj)
            for (int i = 0; i < c.NumHiddenLayers; i++)
            {
                string k = layout.LayerPrefix(i) + layout.DownProj + ".weight";
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

    /// <summary>
    /// The load transform of a rotated folder (<see cref="ApplyOnline"/>): pass it to <see cref="ModelLoader.Load"/>
    /// with the quantization's recorded transforms whenever the folder may be rotated.
    /// </summary>
    public static IModelLoadTransform OnlineTransform { get; } = new RotationLoadTransform();

    private sealed class RotationLoadTransform : IModelLoadTransform
    {
        public void Apply(CausalLM model) => ApplyOnline(model);
    }
}
