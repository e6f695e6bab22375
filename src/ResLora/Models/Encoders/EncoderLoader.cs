using ResLora.IO;

namespace ResLora.Models.Encoders;

/// <summary>
/// How an encoder checkpoint names its tensors: the encoder's key prefix (none for <c>BertModel</c>, <c>bert.</c>,
/// <c>roberta.</c> or <c>deberta.</c> for task models), whether it has a pooler, and whether it carries a classification head.
/// </summary>
public sealed record EncoderCheckpointLayout(string Prefix, bool HasPooler, bool HasHead);

/// <summary>
/// Builds encoders and classifiers of every encoder family (<see cref="IEncoderFamily"/>) from Hugging Face folders, checking
/// the config against the weights first.
/// </summary>
public static class EncoderLoader
{
    /// <summary>
    /// The config and the open checkpoint, checked against each other before anything model-sized is allocated. The caller
    /// disposes the checkpoint. Extra tensors of pre-training heads (<c>cls.*</c>, <c>lm_head.*</c>) and the
    /// <c>position_ids</c> buffer are ignored; extra encoder layers are an error naming config.json. A weight stored as
    /// integers is an error naming it, and with <paramref name="loadAs"/> a load whose weights exceed the memory left is
    /// refused (<see cref="LoadChecks"/>, as for decoders).
    /// </summary>
    public static (EncoderConfig Config, HfCheckpoint Checkpoint, EncoderCheckpointLayout Layout) OpenChecked(string modelDir, ScalarType? loadAs = null)
    {
        var (config, ckpt, layout, _) = OpenChecked(modelDir, loadAs, refuseNonFloat: true);
        return (config, ckpt, layout);
    }

    /// <summary>As above, also giving the expected weights by stored name; <c>inspect --check</c> reports integer-typed weights instead of refusing them.</summary>
    internal static (EncoderConfig Config, HfCheckpoint Checkpoint, EncoderCheckpointLayout Layout, IReadOnlyDictionary<string, long[]> Expected) OpenChecked(string modelDir, ScalarType? loadAs, bool refuseNonFloat)
    {
        var config = EncoderConfig.Load(modelDir);
        var family = EncoderFamilies.Of(config);
        var ckpt = HfCheckpoint.Open(modelDir);
        try
        {
            string? prefix = new[] { "", config.BaseModelPrefix + ".", "bert.", "roberta." }
                .FirstOrDefault(p => ckpt.Contains(p + "embeddings.word_embeddings.weight"));
            if (prefix is null)
                throw new UserInputException($"{ckpt.Directory}: no tensor 'embeddings.word_embeddings.weight' (with or without a '{config.BaseModelPrefix}.' prefix); this is not a {config.ModelType} checkpoint.");
            var poolerWeights = family.StoredPoolerWeights(config, prefix);
            bool pooler = poolerWeights.Keys.All(ckpt.Contains);
            var expected = Prefixed(family.EncoderWeights(config), prefix);
            if (pooler) foreach (var kv in poolerWeights) expected[kv.Key] = kv.Value;
            var headWeights = family.HeadWeights(config);
            bool head = config.DeclaresClassificationHead && headWeights.All(kv => ckpt.Contains(kv.Key));
            if (head) foreach (var kv in headWeights) expected[kv.Key] = kv.Value;
            string configPath = Path.Combine(modelDir, "config.json");
            try
            {
                ckpt.ValidateAgainst(expected, name => !name.StartsWith(prefix + "encoder.", StringComparison.Ordinal) || name.EndsWith("position_ids", StringComparison.Ordinal));
            }
            catch (UserInputException e)
            {
                throw new UserInputException($"{configPath} does not match the weights: {e.Message}", e);
            }
            if (refuseNonFloat) LoadChecks.RefuseNonFloat(ckpt, expected);
            if (loadAs is { } dtype) LoadChecks.EnsureFitsInMemory(modelDir, expected, dtype);
            return (config, ckpt, new EncoderCheckpointLayout(prefix, pooler, head), expected);
        }
        catch
        {
            ckpt.Dispose();
            throw;
        }
    }

    /// <summary>The encoder alone (<c>BertModel</c>, <c>DebertaV2Model</c>), frozen, for embeddings; adapters through <paramref name="factory"/>.</summary>
    public static SequenceEncoder LoadEncoder(string modelDir, RuntimeOptions runtime, ILinearFactory? factory = null)
    {
        runtime.Apply();
        var (config, ckpt, layout) = OpenChecked(modelDir, runtime.TorchDevice.type == DeviceType.CPU ? runtime.ScalarType : null);
        using var _ = ckpt;
        var family = EncoderFamilies.Of(config);
        // The encoder keeps the pooler only where the family stores it inside the encoder (BERT), not in the head (DeBERTa).
        var stored = family.StoredPoolerWeights(config, layout.Prefix);
        bool inside = layout.HasPooler && family.ClassifierPoolerWeights(config).Keys.All(k => k.StartsWith(config.BaseModelPrefix + ".", StringComparison.Ordinal));
        var model = family.CreateEncoder(config, factory, runtime.ScalarType, runtime.TorchDevice, "", inside);
        try
        {
            var names = family.EncoderWeights(config).Keys.ToDictionary(k => k, k => layout.Prefix + k);
            if (inside) foreach (var k in stored.Keys) names[k[layout.Prefix.Length..]] = k;
            Copy(model, names, ckpt);
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// A classification model over the folder's encoder. With <paramref name="head"/> (a config carrying the labels to train,
    /// see <see cref="EncoderConfig.WithHead"/>) the head is new and initialised from <paramref name="seed"/>; without it the
    /// folder must carry a trained head (a merged classifier). Encoder weights are frozen; the head (and a pooler the
    /// checkpoint lacks) stay trainable.
    /// </summary>
    public static (EncoderClassifier Model, EncoderCheckpointLayout Layout) LoadClassifier(string modelDir, RuntimeOptions runtime, ILinearFactory? factory, EncoderConfig? head, long seed)
    {
        runtime.Apply();
        var (stored, ckpt, layout) = OpenChecked(modelDir, runtime.TorchDevice.type == DeviceType.CPU ? runtime.ScalarType : null);
        using var _ = ckpt;
        if (head is null && !layout.HasHead)
            throw new UserInputException($"{modelDir}: the folder has no trained classification head (config.json declares no *ForSequenceClassification with weights 'classifier.*'); train one with reslora train --task classify, or pass the adapter that holds it.");
        var config = head ?? stored;
        var family = EncoderFamilies.Of(config);
        var model = new EncoderClassifier(config, factory, runtime.ScalarType, runtime.TorchDevice);
        try
        {
            string p = config.BaseModelPrefix + ".";
            var names = family.EncoderWeights(config).Keys.ToDictionary(k => p + k, k => layout.Prefix + k);
            // The classifier's pooler (BERT: bert.pooler; DeBERTa: pooler) comes from the checkpoint when stored, else is new.
            var pooler = family.ClassifierPoolerWeights(config).Keys.ToList();
            var storedPooler = family.StoredPoolerWeights(config, layout.Prefix).Keys.ToList();
            var fresh = family.HeadWeights(config).Keys.ToList();
            if (layout.HasPooler) for (int i = 0; i < pooler.Count; i++) names[pooler[i]] = storedPooler[i];
            else fresh.AddRange(pooler);
            if (head is null) foreach (var k in family.HeadWeights(config).Keys) { names[k] = k; fresh.Remove(k); }
            BertEncoder.InitializeWeights(model, fresh, seed);
            Copy(model, names, ckpt);
            return (model, layout);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Copies checkpoint tensors (model name → stored name) into the model and freezes them.</summary>
    private static void Copy(nn.Module model, IReadOnlyDictionary<string, string> names, HfCheckpoint ckpt)
    {
        using var noGrad = torch.no_grad();
        var live = model.named_parameters().ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);
        foreach (var (name, stored) in names)
        {
            if (!live.TryGetValue(name, out var p))
                throw new InvalidOperationException($"model has no parameter '{name}': a linear factory must register the base weight as 'weight' (and 'bias').");
            using var scope = torch.NewDisposeScope();
            var src = ckpt.Load(stored);
            p.copy_(src.to(p.dtype, p.device));
            p.requires_grad = false;
        }
    }

    private static Dictionary<string, long[]> Prefixed(Dictionary<string, long[]> d, string prefix) =>
        d.ToDictionary(kv => prefix + kv.Key, kv => kv.Value, StringComparer.Ordinal);
}
