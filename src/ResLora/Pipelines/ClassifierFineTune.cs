using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models.Encoders;
using ResLora.Text;
using ResLora.Training;
using ResLora.Training.Classification;

namespace ResLora.Pipelines;

/// <summary>
/// Sequence classification or regression on an encoder (BERT family, DeBERTa-v2/v3): labelled data, a new head trained fully and saved as
/// PEFT's <c>modules_to_save</c> (SEQ_CLS), and <see cref="ClassificationTaskRecord"/> beside the adapter.
/// </summary>
internal sealed class ClassifierFineTune(FineTuneRequest req) : FineTuneTask(req)
{
    private EncoderConfig _head = null!;
    private ISentencePairTokenizer _pairs = null!;
    private LabelledDataOptions _data = null!;
    private List<LabelledExample> _train = null!, _held = null!;
    private EncoderClassifier _model = null!;
    private bool _hasPooler;
    private int _seqLen;

    public override int ReadData()
    {
        var req = Request;
        string dir = req.ModelDir;
        if (req.GradCheckpoint) throw new UserInputException($"--grad-checkpoint recomputes LLaMA-family decoder layers; {dir} is an encoder. Drop --grad-checkpoint.");
        if (req.TrainOnPrompt) throw new UserInputException($"--train-on-prompt is for causal LMs (prompt/completion, Alpaca and chat data); {dir} is an encoder trained on labels. Drop --train-on-prompt.");
        if (req.Method.ModulesToSave is not null) throw new UserInputException("--modules-to-save is for causal LMs; an encoder's classification head is already trained and saved as modules_to_save. Drop --modules-to-save.");
        if (req.Runtime.BaseStorage != BaseWeightStorage.Full)
            throw new UserInputException($"--base-bits {req.Runtime.BaseBits} packs the bases of LLaMA-family decoders; {dir} is an encoder, whose base stays full precision. Drop --base-bits.");
        var stored = EncoderConfig.Load(dir);
        (_, _pairs) = Classification.LoadTokenizer(dir);
        if (req.SeqLen is < 3) throw new UserInputException($"--seq-len must be at least 3 for an encoder ([CLS] text [SEP]), got {req.SeqLen}.");
        if (req.SeqLen > stored.MaxInputLength)
            throw new UserInputException($"--seq-len {req.SeqLen} is longer than the encoder's {stored.MaxInputLength} positions; lower --seq-len.");
        _seqLen = req.SeqLen ?? Math.Min(128, stored.MaxInputLength);

        var trainSet = ReadTrainingSet(req);
        _data = req.Fields with { Task = trainSet.Task, TextField = trainSet.TextField, PairField = trainSet.PairField, LabelMap = trainSet.Labels };
        if (req.EvalDataPath is not null)
        {
            _train = trainSet.Examples.ToList();
            _held = LabelledData.Read(req.EvalDataPath, _data).Examples.ToList();
        }
        else (_train, _held) = Classification.Split(trainSet.Examples, req.EvalFraction, req.Train.Seed);
        if (_train.Count == 0) throw new UserInputException($"{req.DataPath}: no training example is left after holding out --eval-fraction {req.EvalFraction}.");
        _head = stored.WithHead(trainSet.Labels?.Names);
        return _train.Count;
    }

    /// <summary>The training file with the task given, or (none given) as classes unless every label is a number and one has a fraction.</summary>
    private static LabelledDataSet ReadTrainingSet(FineTuneRequest req)
    {
        if (req.Task is { } given) return LabelledData.Read(req.DataPath, req.Fields with { Task = given });
        LabelledDataSet classes;
        try
        {
            classes = LabelledData.Read(req.DataPath, req.Fields with { Task = LabelTask.Classify });
        }
        catch (UserInputException) when (AsRegression(req) is { } values)
        {
            return values; // numeric labels with fractions are refused as classes
        }
        bool numbers = classes.Labels is { } map && map.Names.All(n => double.TryParse(n, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out _));
        bool fractions = numbers && classes.Labels!.Names.Any(n => double.Parse(n, System.Globalization.CultureInfo.InvariantCulture) % 1 != 0);
        return fractions ? LabelledData.Read(req.DataPath, req.Fields with { Task = LabelTask.Regress }) : classes;
    }

    private static LabelledDataSet? AsRegression(FineTuneRequest req)
    {
        try
        {
            return LabelledData.Read(req.DataPath, req.Fields with { Task = LabelTask.Regress });
        }
        catch (UserInputException)
        {
            return null;
        }
    }

    public override void CheckMethod(MethodSetup setup)
    {
        if (setup.PrepareBase is not null)
            throw new UserInputException($"--method {Request.Method.Method}: its base-model transform (RoLoRA's rotation) is implemented for LLaMA-family decoders, not for encoders; use lora, dora, reslora, reflora, adalora, loha, lokr or ia3.");
    }

    public override AdapterConfigBase PlanConfig(AdapterConfigBase config, string modelDir) =>
        config with { TaskType = "SEQ_CLS", BaseModelNameOrPath = config.BaseModelNameOrPath ?? Path.GetFullPath(modelDir) };

    public override nn.Module LoadModel(string modelDir, AdapterPlan plan)
    {
        var (model, layout) = EncoderLoader.LoadClassifier(modelDir, Request.Runtime, plan, _head, Request.Train.Seed);
        (_model, _hasPooler) = (model, layout.HasPooler);
        return model;
    }

    public override AdapterConfigBase RunConfig(AdapterConfigBase planConfig) => planConfig with { ModulesToSave = _model.TrainedModules(_hasPooler) };

    public override IReadOnlyDictionary<string, Parameter> SavedModules(AdapterPlan plan, AdapterConfigBase config) =>
        _model.named_parameters().Where(p => config.IsSavedModule(p.name)).ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);

    public override string Describe(AdapterConfigBase config, int adaptedModules, long trainable, long total) =>
        $"{config.Method} on {_head.ClassificationArchitecture} ({(_head.IsRegression ? "regression" : $"{_head.NumLabels} classes: {string.Join(", ", _head.Labels!)}")}): {adaptedModules} adapted modules + {string.Join(", ", config.ModulesToSave!)}, {trainable:N0} trainable of {total:N0} parameters ({100.0 * trainable / total:0.###}%)";

    public override ITrainTask CreateTask(ITrainObserver observer)
    {
        var trainEnc = Classification.Encode(_train, _pairs, _seqLen, _head, Request.DataPath);
        var heldEnc = Classification.Encode(_held, _pairs, _seqLen, _head, Request.EvalDataPath ?? Request.DataPath);
        return new SequenceClassificationTask(_model, _pairs.PadId, trainEnc, heldEnc);
    }

    public override Dictionary<string, string> ResumeSettings() => new() { ["--seq-len"] = _seqLen.ToString(System.Globalization.CultureInfo.InvariantCulture) };

    public override AdapterConfigBase Snapshot(AdapterConfigBase snapshot, AdapterConfigBase config) =>
        snapshot with { TaskType = config.TaskType, ModulesToSave = config.ModulesToSave, BaseModelNameOrPath = config.BaseModelNameOrPath };

    public override void SaveWeights(string dir, AdapterConfigBase config, IReadOnlyDictionary<string, Parameter> savedModules, bool forOriginalBase)
    {
        var saved = savedModules.ToDictionary(kv => kv.Key, kv => (Tensor)kv.Value);
        if (forOriginalBase) MutatedInitConversion.Save(dir, config, _model, saved);
        else AdapterFolder.Save(dir, config, AdapterModel.ByModulePath(_model), saved);
    }

    public override void LoadWeights(string dir)
    {
        using var contents = AdapterFolder.Load(dir);
        AdapterFolder.Apply(contents, AdapterModel.ByModulePath(_model), savedModulesHandled: true);
        AdapterFolder.ApplySavedModules(contents, _model);
    }

    public override (string File, string Json) Record() => (ClassificationTaskRecord.FileName, new ClassificationTaskRecord
    {
        Task = _head.IsRegression ? "regress" : "classify",
        Labels = _head.Labels,
        TextField = _data.TextField!,
        PairField = _data.PairField,
        LabelField = _data.LabelField,
        SeqLen = _seqLen,
    }.ToJson());
}
