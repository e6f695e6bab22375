using ResLora.Adapters;
using ResLora.IO;
using ResLora.Text;
using ResLora.Models;
using ResLora.Training;

namespace ResLora.Pipelines;

/// <summary>
/// What one fine-tuning run does differently for a model family's task, called by <see cref="FineTuning.Run"/> in this
/// order: read the data (before anything is written), check the method, prepare the base, load the model with the
/// adapter plan, build the <see cref="ITrainTask"/>, and save/load the weights with the task's record beside them.
/// </summary>
internal abstract class FineTuneTask(FineTuneRequest req)
{
    protected FineTuneRequest Request { get; } = req;

    /// <summary>The task of the model folder's family: causal language modelling, or classification/regression for an encoder.</summary>
    public static FineTuneTask For(FineTuneRequest req)
    {
        bool encoder = ModelFamilies.OfFolder(req.ModelDir)?.Kind == ModelKind.Encoder;
        if (req.Preference is { } p && encoder)
            throw new UserInputException($"--objective {p.ObjectiveName} tunes a causal LM on preference pairs; {req.ModelDir} is an encoder (sequence classification). Use a decoder model, or drop --objective.");
        return encoder ? new ClassifierFineTune(req) : req.Preference is not null ? new PreferenceFineTune(req) : new CausalLmFineTune(req);
    }

    /// <summary>Reads and checks the data and the task's own options (nothing is written yet); returns the training examples.</summary>
    public abstract int ReadData();

    /// <summary>Refuses, before anything is written, a method or option the task cannot train with.</summary>
    public virtual void CheckMethod(MethodSetup setup) { }

    /// <summary>The base folder and adapter config trained (a method's transformed base, RoLoRA's rotation, where the task has one).</summary>
    public virtual (string ModelDir, AdapterConfigBase Config) PrepareBase(MethodSetup setup, bool writes, ITrainObserver observer) => (Request.ModelDir, setup.Config);

    /// <summary>The adapter config the plan is built from (the base's path filled in; the task's PEFT task type).</summary>
    public abstract AdapterConfigBase PlanConfig(AdapterConfigBase config, string modelDir);

    /// <summary>Loads the base model with the plan's adapters (the seed is set).</summary>
    public abstract nn.Module LoadModel(string modelDir, AdapterPlan plan);

    /// <summary>The config the run saves (a classifier's head joins modules_to_save).</summary>
    public virtual AdapterConfigBase RunConfig(AdapterConfigBase planConfig) => planConfig;

    /// <summary>The base parameters trained fully and saved with the adapter (modules_to_save), by parameter path.</summary>
    public abstract IReadOnlyDictionary<string, Parameter> SavedModules(AdapterPlan plan, AdapterConfigBase config);

    /// <summary>The line that tells what is trained.</summary>
    public abstract string Describe(AdapterConfigBase config, int adaptedModules, long trainable, long total);

    /// <summary>Tokenizes the data and builds the training task (loss, batches, evaluation).</summary>
    public abstract ITrainTask CreateTask(ITrainObserver observer);

    /// <summary>The settings beyond the adapter config and <see cref="TrainOptions"/> that a resume must keep, by flag name.</summary>
    public abstract Dictionary<string, string> ResumeSettings();

    /// <summary>A method's snapshot config with the run's fields it must keep.</summary>
    public abstract AdapterConfigBase Snapshot(AdapterConfigBase snapshot, AdapterConfigBase config);

    /// <summary>Writes the adapter folder (adapter_config.json, the weights with the saved modules).</summary>
    /// <remarks><paramref name="forOriginalBase"/>: an adapter whose init changed the base (PiSSA, OLoRA, LoftQ) is written as a LoRA of the original base (<see cref="MutatedInitConversion"/>); false for the checkpoint a resume reads.</remarks>
    public abstract void SaveWeights(string dir, AdapterConfigBase config, IReadOnlyDictionary<string, Parameter> savedModules, bool forOriginalBase);

    /// <summary>Reads a folder written by <see cref="SaveWeights"/> back into the live model (resume).</summary>
    public abstract void LoadWeights(string dir);

    /// <summary>The task's record written beside the adapter (file name, JSON).</summary>
    public abstract (string File, string Json) Record();
}

/// <summary>Causal language modelling on a LLaMA-family decoder: templates and chat data, packing, --train-on-prompt, --grad-checkpoint.</summary>
internal class CausalLmFineTune(FineTuneRequest req) : FineTuneTask(req)
{
    private DataTemplates _templates = null!;
    private IReadOnlyList<TextExample> _train = null!, _eval = null!;
    private ITextTokenizer _tokenizer = null!;
    private CausalLM _model = null!;
    private int _seqLen;
    private TrainingDataRecord _record = null!;

    /// <summary>The model, its tokenizer, the sequence length and the data record, for a task built on this one.</summary>
    protected CausalLM LoadedModel => _model;
    protected ITextTokenizer Tokenizer => _tokenizer;
    protected int SeqLen => _seqLen;
    protected TrainingDataRecord DataRecord { get => _record; set => _record = value; }

    public override int ReadData()
    {
        var req = Request;
        if (req.Task is not null)
            throw new UserInputException($"--task {(req.Task == Training.Classification.LabelTask.Regress ? "regress" : "classify")} needs an encoder (model_type in config.json: {ModelFamilies.SupportedEncoders()}); {req.ModelDir} is a causal LM.");
        req.Templates.Validate();
        if (req.SeqLen is < 2) throw new UserInputException($"--seq-len must be at least 2, got {req.SeqLen}.");
        _templates = req.Templates.ForModel(req.ModelDir); // conversations render with the model's chat template
        (_train, _eval) = TrainingSplits.Make(DataSet.Load(req.DataPath, _templates),
            req.EvalDataPath is null ? null : DataSet.Load(req.EvalDataPath, _templates), req.EvalFraction, req.Train.Seed);
        return _train.Count;
    }

    /// <summary>--grad-checkpoint is refused before anything is written when the method's layers cannot be recomputed one at a time, or dropout could not be replayed.</summary>
    public override void CheckMethod(MethodSetup setup)
    {
        if (!Request.GradCheckpoint) return;
        if (new AdapterPlan(setup.Config).CheckpointRefusal is { } why) throw new UserInputException($"--grad-checkpoint: {why}");
        if (setup.Config is LowRankConfigBase { LoraDropout: > 0 and var dropout } && Request.Runtime.TorchDevice.type != DeviceType.CPU)
            throw new UserInputException($"--grad-checkpoint with --dropout {dropout} on {Request.Runtime.Device}: the recompute must replay the dropout masks, and TorchSharp exposes only the CPU generator's state. Use --dropout 0 there, or train on the CPU.");
    }

    public override (string ModelDir, AdapterConfigBase Config) PrepareBase(MethodSetup setup, bool writes, ITrainObserver observer)
    {
        var req = Request;
        var result = (req.ModelDir, setup.Config);
        if (setup.PrepareBase is { } prepare)
        {
            if (!writes) req.Communicator!.Barrier(); // rank 0 writes the prepared base first; the others then find it
            result = prepare(req.ModelDir, req.OutDir);
            if (writes) req.Communicator?.Barrier();
            observer.OnMessage($"training on the transformed base model in {result.Item1}");
        }
        return result;
    }

    public override AdapterConfigBase PlanConfig(AdapterConfigBase config, string modelDir) =>
        config with { BaseModelNameOrPath = config.BaseModelNameOrPath ?? Path.GetFullPath(modelDir) };

    public override nn.Module LoadModel(string modelDir, AdapterPlan plan) => LoadCausalLM(modelDir, plan);

    /// <summary>Loads the model through <paramref name="factory"/> (null: plain linears, for <c>--method full</c>) with the tokenizer, and fixes the sequence length.</summary>
    internal CausalLM LoadCausalLM(string modelDir, ILinearFactory? factory)
    {
        _tokenizer = TokenizerLoader.Load(modelDir);
        _model = ModelSessions.LoadBase(modelDir, Request.Runtime, factory);
        int positions = _model.Config.MaxPositionEmbeddings;
        if (Request.SeqLen > positions)
        {
            _model.Dispose();
            throw new UserInputException($"--seq-len {Request.SeqLen} is longer than the model's max_position_embeddings ({positions}); lower --seq-len.");
        }
        _seqLen = Request.SeqLen ?? Math.Min(256, _model.Config.MaxPositionEmbeddings);
        _model.GradientCheckpointing = Request.GradCheckpoint;
        return _model;
    }

    public override IReadOnlyDictionary<string, Parameter> SavedModules(AdapterPlan plan, AdapterConfigBase config) => SavedModuleParameters.Resolve(_model, plan);

    public override string Describe(AdapterConfigBase config, int adaptedModules, long trainable, long total) =>
        $"{config.Method}: {adaptedModules} adapted modules, {trainable:N0} trainable of {total:N0} parameters ({100.0 * trainable / total:0.###}%)";

    public override ITrainTask CreateTask(ITrainObserver observer)
    {
        var req = Request;
        // Evaluation scores the same tokens as training, so --train-on-prompt's eval loss is comparable with its train loss.
        if (TrainingSplits.PerTurnNote(_train.Concat(_eval)) is { } perTurn) observer.OnMessage(perTurn);
        var trainTok = Tokenization.Tokenize(_train, _tokenizer, _seqLen, trainOnPrompt: req.TrainOnPrompt);
        var evalTok = Tokenization.Tokenize(_eval, _tokenizer, _seqLen, trainOnPrompt: req.TrainOnPrompt);
        if (trainTok.Truncated + evalTok.Truncated > 0)
            observer.OnMessage($"{trainTok.Truncated + evalTok.Truncated} examples were longer than --seq-len {_seqLen} and were cut; {trainTok.DroppedWithoutLoss + evalTok.DroppedWithoutLoss} lost every completion token and were dropped.");
        var trainSeqs = req.Pack ? Tokenization.Pack(trainTok.Examples, _seqLen) : trainTok.Examples;
        if (trainSeqs.Count == 0) throw new UserInputException($"{req.DataPath}: no training sequence is left after tokenization (every example lost its completion to --seq-len {_seqLen}).");
        _record = new TrainingDataRecord
        {
            DataPath = Path.GetFullPath(req.DataPath),
            EvalDataPath = req.EvalDataPath is null ? null : Path.GetFullPath(req.EvalDataPath),
            EvalFraction = req.EvalDataPath is null ? req.EvalFraction : 0,
            Seed = req.Train.Seed,
            PromptTemplate = req.Templates.PromptTemplate,
            CompletionTemplate = req.Templates.CompletionTemplate,
            SeqLen = _seqLen,
        }.WithChat(_train.Concat(_eval).Any(e => e.IsConversation) ? _templates.Chat : null);
        return new CausalLmTask(_model, _tokenizer, trainSeqs, evalTok.Examples, _eval.Where(e => !e.IsPlainText).ToList());
    }

    public override Dictionary<string, string> ResumeSettings() => new()
    {
        ["--seq-len"] = _seqLen.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["--pack"] = Request.Pack ? "true" : "false",
        ["--train-on-prompt"] = Request.TrainOnPrompt ? "true" : "false",
    };

    public override AdapterConfigBase Snapshot(AdapterConfigBase snapshot, AdapterConfigBase config) =>
        snapshot with { LayersToTransform = config.LayersToTransform, LayersPattern = config.LayersPattern, ModulesToSave = config.ModulesToSave };

    public override void SaveWeights(string dir, AdapterConfigBase config, IReadOnlyDictionary<string, Parameter> savedModules, bool forOriginalBase)
    {
        if (forOriginalBase) MutatedInitConversion.Save(dir, config, _model);
        else AdapterFolder.Save(dir, config, _model);
    }

    public override void LoadWeights(string dir) => AdapterFolder.LoadInto(dir, _model);

    public override (string File, string Json) Record() => _record.Note();
}
