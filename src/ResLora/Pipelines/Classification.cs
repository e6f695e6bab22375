using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Models.Encoders;
using ResLora.Text;
using ResLora.Training;
using ResLora.Training.Classification;

namespace ResLora.Pipelines;

/// <summary>
/// What a classification adapter needs besides its weights, written beside them as <c>reslora_task.json</c>: the task,
/// the classes in id order, the data fields it was trained on and the sequence length.
/// </summary>
public sealed record ClassificationTaskRecord
{
    public const string FileName = "reslora_task.json";

    [JsonPropertyName("task")] public string Task { get; init; } = "classify";
    [JsonPropertyName("labels")] public IReadOnlyList<string>? Labels { get; init; }
    [JsonPropertyName("text_field")] public string TextField { get; init; } = "text";
    [JsonPropertyName("text_pair_field")] public string? PairField { get; init; }
    [JsonPropertyName("label_field")] public string LabelField { get; init; } = "label";
    [JsonPropertyName("seq_len")] public int SeqLen { get; init; } = 128;

    public LabelTask LabelTask => Task == "regress" ? LabelTask.Regress : LabelTask.Classify;

    public string ToJson() => JsonSerializer.Serialize(this, IO.Json.ReportJson.Indented);

    /// <summary>The record of an adapter folder, or null when it has none.</summary>
    public static ClassificationTaskRecord? Read(string adapterDir)
    {
        string path = Path.Combine(adapterDir, FileName);
        if (!File.Exists(path)) return null;
        try
        {
            return JsonSerializer.Deserialize<ClassificationTaskRecord>(File.ReadAllText(path)) ?? throw new UserInputException($"{path}: empty.");
        }
        catch (JsonException e)
        {
            throw new UserInputException($"{path}: not valid JSON ({e.Message}).", e);
        }
    }
}

/// <summary>
/// Sequence classification and regression on encoders (BERT family, DeBERTa-v2/v3): loading, prediction, metrics and merging into a
/// complete <c>*ForSequenceClassification</c> folder. Training is <see cref="FineTuning.Run"/>'s (an adapter plus a fully
/// trained head saved as PEFT's <c>modules_to_save</c> for SEQ_CLS).
/// </summary>
public static class Classification
{
    /// <summary>PEFT's default targets for BERT-family models.</summary>
    public static readonly ModuleTargets DefaultTargets = ModuleTargets.List(BertFamily.Instance.DefaultTargets.ToArray());

    /// <summary>PEFT's default targets for the encoder family of <paramref name="modelDir"/> (BERT's when it is not an encoder folder).</summary>
    public static ModuleTargets DefaultTargetsOf(string modelDir) =>
        ModelFamilies.OfFolder(modelDir) is { Kind: ModelKind.Encoder } f ? ModuleTargets.List(f.DefaultTargets.ToArray()) : DefaultTargets;

    /// <summary>Whether the folder holds a BERT-family encoder (its config.json names bert/roberta/xlm-roberta).</summary>
    public static bool IsEncoderFolder(string modelDir) => ModelFamilies.OfFolder(modelDir)?.Kind == ModelKind.Encoder;

    /// <summary>The folder's tokenizer, which must know how to frame single texts and pairs (BERT's or RoBERTa's specials).</summary>
    public static (ITextTokenizer Tokenizer, ISentencePairTokenizer Pairs) LoadTokenizer(string modelDir)
    {
        var tok = TokenizerLoader.Load(modelDir);
        if (tok is not ISentencePairTokenizer pairs)
            throw new UserInputException($"{modelDir}: the tokenizer does not say how to add an encoder's special tokens (no BERT/RoBERTa/template post-processor in tokenizer.json, and no vocab.txt); use the tokenizer files that came with the encoder.");
        return (tok, pairs);
    }

    /// <summary>Encodes labelled examples with the specials, truncated to <paramref name="seqLen"/> (longest_first).</summary>
    public static List<EncodedExample> Encode(IReadOnlyList<LabelledExample> examples, ISentencePairTokenizer tok, int seqLen, EncoderConfig config, string source)
    {
        var list = new List<EncodedExample>(examples.Count);
        foreach (var e in examples)
        {
            var input = tok.EncodeForModel(e.Text, e.Pair, seqLen);
            // A model without token types (DeBERTa-v3: type_vocab_size 0) ignores them, as transformers does.
            if (config.TypeVocabSize > 0 && input.TypeIds.Any(t => t >= config.TypeVocabSize))
                throw new UserInputException($"{source}: line {e.Line} is a sentence pair, but the model has {config.TypeVocabSize} token type(s) and its tokenizer gives the second text type 1; drop --text-pair-field or use a tokenizer.json whose post-processor keeps type 0.");
            list.Add(new EncodedExample(input, e.Label, e.Value));
        }
        return list;
    }

    /// <summary>
    /// A classifier ready to predict: a merged <c>*ForSequenceClassification</c> folder alone, or a base encoder with a
    /// SEQ_CLS adapter (adapter weights and the trained head). Returns the model and the task record (null for a merged folder
    /// without one, whose labels come from its config).
    /// </summary>
    public static (EncoderClassifier Model, ClassificationTaskRecord Task) Load(string modelDir, string? adapterDir, RuntimeOptions runtime)
    {
        if (adapterDir is null)
        {
            var (merged, _) = EncoderLoader.LoadClassifier(modelDir, runtime, null, null, 0);
            merged.eval();
            var c = merged.Config;
            var rec = ClassificationTaskRecord.Read(modelDir) ?? new ClassificationTaskRecord { Task = c.IsRegression ? "regress" : "classify", Labels = c.Labels };
            return (merged, rec);
        }
        var task = ClassificationTaskRecord.Read(adapterDir)
            ?? throw new UserInputException($"{adapterDir}: no {ClassificationTaskRecord.FileName}; it is not a classification adapter trained by reslora train --task classify|regress.");
        using var contents = AdapterFolder.Load(adapterDir);
        if (contents.Config.TaskType != "SEQ_CLS")
            throw new UserInputException($"{adapterDir}: adapter_config.json has task_type '{contents.Config.TaskType}', not SEQ_CLS.");
        var head = EncoderConfig.Load(modelDir).WithHead(task.LabelTask == LabelTask.Regress ? null : task.Labels);
        var plan = new AdapterPlan(contents.Config with { InferenceMode = false });
        var (model, _) = EncoderLoader.LoadClassifier(modelDir, runtime, plan, head, 0);
        try
        {
            plan.EnsureAllPatternsMatched();
            AdapterModel.OnBaseWeightsLoaded(model); // before the adapter's own tensors (DoRA's magnitudes start from the base)
            AdapterFolder.Apply(contents, AdapterModel.ByModulePath(model), savedModulesHandled: true);
            AdapterFolder.ApplySavedModules(contents, model);
            model.eval();
            return (model, task);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Predictions and metrics of a classifier on a labelled file (the fields and classes of its task record).</summary>
    public static (ClassificationResult Result, LabelledDataSet Data) Evaluate(EncoderClassifier model, ClassificationTaskRecord task, string dataPath, string modelDir, int batchSize, LabelledDataOptions? fields = null)
    {
        var (_, pairs) = LoadTokenizer(modelDir);
        var options = new LabelledDataOptions
        {
            TextField = fields?.TextField ?? task.TextField,
            PairField = fields?.PairField ?? task.PairField,
            LabelField = fields?.LabelField ?? task.LabelField,
            Task = task.LabelTask,
            LabelMap = task.LabelTask == LabelTask.Classify && task.Labels is { } l ? new LabelMap(l) : null,
        };
        var data = LabelledData.Read(dataPath, options);
        var enc = Encode(data.Examples, pairs, Math.Min(task.SeqLen, model.Config.MaxInputLength), model.Config, dataPath);
        return (SequenceClassificationTask.Run(model, enc, pairs.PadId, batchSize), data);
    }

    /// <summary>The predicted class name and its probability (or the predicted value for regression) of each text.</summary>
    public static List<(string Label, double Score)> Predict(EncoderClassifier model, ClassificationTaskRecord task, IReadOnlyList<string> texts, string modelDir)
    {
        var (_, pairs) = LoadTokenizer(modelDir);
        var enc = texts.Select(t => new EncodedExample(pairs.EncodeForModel(t, null, Math.Min(task.SeqLen, model.Config.MaxInputLength)), 0, 0f)).ToList();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        model.eval();
        var logits = Logits(model, enc, pairs.PadId).to_type(ScalarType.Float32).cpu();
        var result = new List<(string, double)>();
        if (model.Config.IsRegression)
        {
            foreach (float v in logits.squeeze(-1).data<float>()) result.Add(("value", v));
            return result;
        }
        var p = nn.functional.softmax(logits, -1);
        var best = p.argmax(-1).data<long>().ToArray();
        for (int i = 0; i < texts.Count; i++)
            result.Add((task.Labels is { } l ? l[(int)best[i]] : best[i].ToString(System.Globalization.CultureInfo.InvariantCulture), p[i, best[i]].item<float>()));
        return result;
    }

    /// <summary>
    /// Merges a SEQ_CLS adapter into its encoder and writes a complete <c>*ForSequenceClassification</c> folder (config with
    /// the labels, weights with Hugging Face's prefixed names and the head, tokenizer files, the task record), atomically.
    /// Returns the largest |logit| difference between the merged and the unmerged model on <paramref name="check"/> inputs.
    /// </summary>
    public static double Merge(string modelDir, string adapterDir, string outDir, RuntimeOptions runtime, IReadOnlyList<EncodedExample>? check = null)
    {
        var (model, task) = Load(modelDir, adapterDir, runtime);
        using var _ = model;
        var (_, pairs) = LoadTokenizer(modelDir);
        check ??= Array.Empty<EncodedExample>();
        Tensor? before = check.Count > 0 ? Logits(model, check, pairs.PadId) : null;
        AdapterModel.MergeAll(model);
        double maxDiff = 0;
        if (before is not null)
        {
            using var after = Logits(model, check, pairs.PadId);
            maxDiff = (after - before).abs().max().item<float>();
            before.Dispose();
        }
        var weights = model.state_dict()
            .Where(kv => !IsAdapterKey(kv.Key))
            .Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value))
            .ToList();
        AtomicFolder.Write(outDir, tmp =>
        {
            HfCheckpoint.SaveWeights(tmp, weights);
            var raw = model.Config.Raw.DeepClone().AsObject();
            raw["torch_dtype"] = weights[0].Value.dtype == ScalarType.BFloat16 ? "bfloat16" : weights[0].Value.dtype == ScalarType.Float16 ? "float16" : "float32";
            AtomicFile.WriteAllText(Path.Combine(tmp, "config.json"), raw.ToJsonString(IO.Json.ReportJson.Indented));
            AtomicFile.WriteAllText(Path.Combine(tmp, ClassificationTaskRecord.FileName), task.ToJson());
        }, modelDir, flag: "--out");
        return maxDiff;
    }

    private static Tensor Logits(EncoderClassifier model, IReadOnlyList<EncodedExample> examples, int pad)
    {
        using var noGrad = torch.no_grad();
        using var batch = SequenceClassificationTask.Collate(examples, pad, model.Config.IsRegression, model.Device);
        return model.Forward(batch.InputIds, batch.AttentionMask, batch.TokenTypeIds);
    }

    /// <summary>Adapter state lives under a module's adapter parameters; merged weights are the base keys.</summary>
    private static bool IsAdapterKey(string key)
    {
        var prefixes = AdapterMethods.ParameterPrefixes;
        return key.Split('.').Any(seg => prefixes.Any(p => seg.StartsWith(p, StringComparison.Ordinal)));
    }

    /// <summary>A seeded held-out split (the same rule for every method, so runs compare on the same examples).</summary>
    internal static (List<LabelledExample> Train, List<LabelledExample> Held) Split(IReadOnlyList<LabelledExample> all, double fraction, long seed)
    {
        if (!(fraction >= 0 && fraction < 1)) throw new UserInputException($"--eval-fraction must be in [0, 1), got {fraction}.");
        var order = Enumerable.Range(0, all.Count).ToArray();
        new Random(unchecked((int)(seed * 7919 + 17))).Shuffle(order);
        int held = (int)Math.Round(all.Count * fraction);
        if (fraction > 0 && all.Count >= 2) held = Math.Max(1, held);
        var heldSet = order.Take(held).ToHashSet();
        return (Enumerable.Range(0, all.Count).Where(i => !heldSet.Contains(i)).Select(i => all[i]).ToList(), order.Take(held).OrderBy(i => i).Select(i => all[i]).ToList());
    }
}
