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

/// <summary>One classification fine-tuning run as <c>reslora train --task classify|regress</c> describes it.</summary>
public sealed record ClassifierTrainRequest
{
    public required string ModelDir { get; init; }
    public required string DataPath { get; init; }
    public string? EvalDataPath { get; init; }
    public double EvalFraction { get; init; } = 0.1;
    public LabelledDataOptions Data { get; init; } = new();
    /// <summary>The method; its targets default to PEFT's for BERT-family models (query, value) when null.</summary>
    public required MethodSpec Method { get; init; }
    public TrainOptions Train { get; init; } = new();
    public RuntimeOptions Runtime { get; init; } = new();
    public required string OutDir { get; init; }
    /// <summary>Longest input in tokens, specials included; null = min(128, the model's positions).</summary>
    public int? SeqLen { get; init; }
    public bool Resume { get; init; }
    /// <summary>Replace what <see cref="OutDir"/> holds (an adapter folder, or a previous run) instead of refusing.</summary>
    public bool Overwrite { get; init; }
    /// <summary>The ranks of a data-parallel job (null: one process); see <see cref="TrainRunSpec.Communicator"/>.</summary>
    public Training.Distributed.ICommunicator? Communicator { get; init; }
    /// <summary>Stops the run at the next step boundary with a resumable checkpoint (Ctrl+C); see <see cref="TrainRunSpec.Cancellation"/>.</summary>
    public CancellationToken Cancellation { get; init; }
}

/// <summary>
/// Sequence classification and regression on BERT-family encoders: training (an adapter plus a fully trained head saved
/// as PEFT's <c>modules_to_save</c> for SEQ_CLS), loading, prediction, metrics and merging into a complete
/// <c>*ForSequenceClassification</c> folder.
/// </summary>
public static class Classification
{
    /// <summary>PEFT's default targets for BERT-family models.</summary>
    public static readonly ModuleTargets DefaultTargets = ModuleTargets.List(BertFamily.Instance.DefaultTargets.ToArray());

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
            if (input.TypeIds.Any(t => t >= config.TypeVocabSize))
                throw new UserInputException($"{source}: line {e.Line} is a sentence pair, but the model has {config.TypeVocabSize} token type(s) and its tokenizer gives the second text type 1; drop --text-pair-field or use a tokenizer.json whose post-processor keeps type 0.");
            list.Add(new EncodedExample(input, e.Label, e.Value));
        }
        return list;
    }

    /// <summary>The library function behind <c>reslora train --task classify|regress</c>.</summary>
    public static TrainSummary Train(ClassifierTrainRequest req, ITrainObserver? observer = null)
    {
        observer ??= new SilentObserver();
        AtomicFolder.CheckTarget(req.OutDir, modelDir: req.ModelDir); // before the data is read
        req.Train.Validate();
        var stored = EncoderConfig.Load(req.ModelDir);
        var (_, pairs) = LoadTokenizer(req.ModelDir);
        if (req.SeqLen is < 3) throw new UserInputException($"--seq-len must be at least 3 for an encoder ([CLS] text [SEP]), got {req.SeqLen}.");
        if (req.SeqLen > stored.MaxInputLength)
            throw new UserInputException($"--seq-len {req.SeqLen} is longer than the encoder's {stored.MaxInputLength} positions; lower --seq-len.");
        int seqLen = req.SeqLen ?? Math.Min(128, stored.MaxInputLength);

        var trainSet = LabelledData.Read(req.DataPath, req.Data);
        var data = req.Data with { TextField = trainSet.TextField, PairField = trainSet.PairField, LabelMap = trainSet.Labels };
        List<LabelledExample> train, held;
        if (req.EvalDataPath is not null)
        {
            train = trainSet.Examples.ToList();
            held = LabelledData.Read(req.EvalDataPath, data).Examples.ToList();
        }
        else (train, held) = Split(trainSet.Examples, req.EvalFraction, req.Train.Seed);
        if (train.Count == 0) throw new UserInputException($"{req.DataPath}: no training example is left after holding out --eval-fraction {req.EvalFraction}.");
        var head = stored.WithHead(trainSet.Labels?.Names);

        var method = req.Method;
        var setup = AdapterMethods.Build(method with { TotalSteps = req.Train.TotalSteps(train.Count) });
        if (setup.PrepareBase is not null)
            throw new UserInputException($"--method {method.Method}: its base-model transform (RoLoRA's rotation) is implemented for LLaMA-family decoders, not for encoders; use lora, dora, reslora, reflora, adalora, loha, lokr or ia3.");
        // In a data-parallel job rank 0 alone checks, locks and writes --out; the others wait until it has.
        bool writes = req.Communicator is null || req.Communicator.Rank == 0;
        using var runLock = writes ? RunLock.Acquire(req.OutDir) : null; // first: a folder another run holds is named as such
        if (writes) FineTuning.PrepareOutDir(req.OutDir, req.Resume, req.Overwrite);
        int removed = writes ? AtomicFile.RemoveLeftovers(req.OutDir) : 0; // under the lock: no writer is active there
        if (removed > 0)
            observer.OnMessage($"removed {removed} temporary file(s) left in {req.OutDir} by an interrupted run");
        req.Communicator?.Barrier();

        torch.manual_seed(req.Train.Seed);
        using var gen = new torch.Generator((ulong)req.Train.Seed);
        var baseConfig = setup.Config with { TaskType = "SEQ_CLS", BaseModelNameOrPath = setup.Config.BaseModelNameOrPath ?? Path.GetFullPath(req.ModelDir) };
        var plan = new AdapterPlan(baseConfig, gen);
        var (model, layout) = EncoderLoader.LoadClassifier(req.ModelDir, req.Runtime, plan, head, req.Train.Seed);
        using var _ = model;
        var config = baseConfig with { ModulesToSave = model.TrainedModules(layout.HasPooler) };
        plan.EnsureAllPatternsMatched();
        AdapterModel.OnBaseWeightsLoaded(model);
        AdapterModel.FreezeAllButAdapters(model);
        var savedModules = SavedModuleParameters(model, config);
        foreach (var p in savedModules.Values) p.requires_grad = true;
        var (trainable, total) = AdapterModel.CountParameters(model);
        observer.OnMessage($"{config.Method} on {head.ClassificationArchitecture} ({(head.IsRegression ? "regression" : $"{head.NumLabels} classes: {string.Join(", ", head.Labels!)}")}): {AdapterModel.FindAdapters(model).Count} adapted modules + {string.Join(", ", config.ModulesToSave!)}, {trainable:N0} trainable of {total:N0} parameters ({100.0 * trainable / total:0.###}%)");

        var trainEnc = Encode(train, pairs, seqLen, head, req.DataPath);
        var heldEnc = Encode(held, pairs, seqLen, head, req.EvalDataPath ?? req.DataPath);
        var extras = setup.TrainingExtras?.Invoke(model).ToList() ?? new List<object>();
        var caps = AdapterModel.CollectCapabilities(model, extras.Prepend(plan.Builder).ToArray());
        var record = new ClassificationTaskRecord
        {
            Task = head.IsRegression ? "regress" : "classify",
            Labels = head.Labels,
            TextField = data.TextField!,
            PairField = data.PairField,
            LabelField = data.LabelField,
            SeqLen = seqLen,
        };
        return TrainLoop.Run(new TrainRunSpec
        {
            Task = new SequenceClassificationTask(model, pairs.PadId, trainEnc, heldEnc),
            Options = req.Train,
            OutDir = req.OutDir,
            Method = config.Method,
            Resume = req.Resume,
            ResumeSettings = FineTuning.AdapterResumeSettings(plan.Config, new Dictionary<string, string> { ["--seq-len"] = seqLen.ToString(System.Globalization.CultureInfo.InvariantCulture) }),
            Capabilities = caps.ExtraLossTerms.Cast<object>().Concat(caps.StepHooks).Append(plan.Builder),
            Communicator = req.Communicator,
            Cancellation = req.Cancellation,
            SaveWeights = dir =>
            {
                var snapshot = plan.Builder is IConfigSnapshot snap ? snap.SnapshotConfig() with { TaskType = config.TaskType, ModulesToSave = config.ModulesToSave, BaseModelNameOrPath = config.BaseModelNameOrPath } : config;
                AdapterFolder.Save(dir, snapshot, AdapterModel.ByModulePath(model), savedModules.ToDictionary(kv => kv.Key, kv => (Tensor)kv.Value));
                foreach (var (file, json) in extras.Prepend(plan.Builder).OfType<IAdapterFolderNote>().Select(n => n.Note()))
                    AtomicFile.WriteAllText(Path.Combine(dir, file), json);
                AtomicFile.WriteAllText(Path.Combine(dir, ClassificationTaskRecord.FileName), record.ToJson());
            },
            LoadWeights = dir =>
            {
                using var contents = AdapterFolder.Load(dir);
                AdapterFolder.Apply(contents, AdapterModel.ByModulePath(model), savedModulesHandled: true);
                AdapterFolder.ApplySavedModules(contents, model);
            },
        }, observer);
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

    /// <summary>The live parameters of the config's modules_to_save, by parameter path.</summary>
    private static Dictionary<string, Parameter> SavedModuleParameters(nn.Module model, AdapterConfigBase config) =>
        model.named_parameters().Where(p => config.IsSavedModule(p.name)).ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);

    /// <summary>A seeded held-out split (the same rule for every method, so runs compare on the same examples).</summary>
    private static (List<LabelledExample> Train, List<LabelledExample> Held) Split(IReadOnlyList<LabelledExample> all, double fraction, long seed)
    {
        if (!(fraction >= 0 && fraction < 1)) throw new UserInputException($"--eval-fraction must be in [0, 1), got {fraction}.");
        var order = Enumerable.Range(0, all.Count).ToArray();
        new Random(unchecked((int)(seed * 7919 + 17))).Shuffle(order);
        int held = (int)Math.Round(all.Count * fraction);
        if (fraction > 0 && all.Count >= 2) held = Math.Max(1, held);
        var heldSet = order.Take(held).ToHashSet();
        return (Enumerable.Range(0, all.Count).Where(i => !heldSet.Contains(i)).Select(i => all[i]).ToList(), order.Take(held).OrderBy(i => i).Select(i => all[i]).ToList());
    }

    private sealed class SilentObserver : ITrainObserver
    {
    }
}
