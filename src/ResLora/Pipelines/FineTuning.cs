using ResLora.Adapters;
using ResLora.IO;
using ResLora.Text;
using ResLora.Training;
using ResLora.Training.Classification;

namespace ResLora.Pipelines;

/// <summary>One fine-tuning run as <c>reslora train</c> describes it, for any model family (the task follows the family).</summary>
public sealed record FineTuneRequest
{
    public required string ModelDir { get; init; }
    public required string DataPath { get; init; }
    /// <summary>A separate evaluation file; when null, <see cref="EvalFraction"/> of the data is held out (0 = no evaluation).</summary>
    public string? EvalDataPath { get; init; }
    public double EvalFraction { get; init; } = 0.1;
    public DataTemplates Templates { get; init; } = new();
    /// <summary>The adapter method and its hyperparameters; the run's total steps are filled in for methods that need them.</summary>
    public required MethodSpec Method { get; init; }
    /// <summary>Preference tuning (<c>--objective dpo|ipo|orpo|simpo</c>) on preference pairs instead of supervised fine-tuning; null for SFT.</summary>
    public Training.Preference.PreferenceOptions? Preference { get; init; }
    /// <summary>
    /// An adapter folder the run starts from (<c>--init-adapter</c>, e.g. an SFT adapter before preference tuning): its
    /// weights are loaded into the run's adapters, which must be of the same method, rank and targets.
    /// </summary>
    public string? InitAdapter { get; init; }
    public TrainOptions Train { get; init; } = new();
    public RuntimeOptions Runtime { get; init; } = new();
    public required string OutDir { get; init; }
    /// <summary>Longest sequence; null = min(256, the model's max_position_embeddings) for a causal LM, min(128, its positions) for an encoder.</summary>
    public int? SeqLen { get; init; }
    public bool Pack { get; init; }
    /// <summary>The loss covers the prompt's tokens as well as the completion's (<c>--train-on-prompt</c>, LLaMA-Factory's <c>train_on_prompt</c>).</summary>
    public bool TrainOnPrompt { get; init; }
    public bool Resume { get; init; }
    /// <summary>Activation checkpointing per decoder layer (<c>--grad-checkpoint</c>): less activation memory, each layer's forward twice.</summary>
    public bool GradCheckpoint { get; init; }
    /// <summary>Replace what <see cref="OutDir"/> holds (an adapter folder, or a previous run) instead of refusing.</summary>
    public bool Overwrite { get; init; }
    /// <summary>The ranks of a data-parallel job (null: one process); see <see cref="TrainRunSpec.Communicator"/>.</summary>
    public Training.Distributed.ICommunicator? Communicator { get; init; }
    /// <summary>Stops the run at the next step boundary with a resumable checkpoint (Ctrl+C); see <see cref="TrainRunSpec.Cancellation"/>.</summary>
    public CancellationToken Cancellation { get; init; }

    /// <summary>
    /// Encoders: the fields holding the text, the optional second text and the label (<c>--text-field</c>,
    /// <c>--text-pair-field</c>, <c>--label-field</c>); their <see cref="LabelledDataOptions.Task"/> is replaced by <see cref="Task"/>.
    /// </summary>
    public LabelledDataOptions Fields { get; init; } = new();

    /// <summary>
    /// Encoders: classification or regression (<c>--task classify|regress</c>); null decides from the training labels
    /// (every label a number and one with a fraction: regression; otherwise classes). Causal LMs have one task and refuse these.
    /// </summary>
    public LabelTask? Task { get; init; }

    /// <summary>The run's recipe (<c>reslora train</c>'s flags as JSON), written to <see cref="FineTuning.RecipeFile"/> in <see cref="OutDir"/>; null writes none.</summary>
    public string? Recipe { get; init; }
}

/// <summary>
/// The library function behind <c>reslora train</c>: model + adapter plan + data → trained adapter folder. One pipeline
/// for every model family: the family's task (<see cref="FineTuneTask.For"/>: causal language modelling, or sequence
/// classification/regression on an encoder) supplies the data, the model and what is saved beside the adapter; locking,
/// resume, checkpoints, Ctrl+C, early stopping, data-parallel steps, metrics and the summary are shared.
/// </summary>
public static class FineTuning
{
    public static TrainSummary Run(FineTuneRequest req, ITrainObserver? observer = null)
    {
        observer ??= SilentTrainObserver.Instance;
        req.Train.Validate();
        if (FullFineTuning.IsFull(req.Method)) return FullFineTuning.Run(req, observer); // every parameter, no adapter
        if (req.InitAdapter is { } initDir && !File.Exists(Path.Combine(initDir, AdapterFolder.ConfigFileName)))
            throw new UserInputException($"--init-adapter {initDir}: no {AdapterFolder.ConfigFileName} there; give the folder of an adapter (a train run's --out or a PEFT adapter).");
        AtomicFolder.CheckTarget(req.OutDir, modelDir: req.ModelDir); // before the data is read
        var task = FineTuneTask.For(req);
        int trainCount = task.ReadData();
        // The method is built (and checked) before anything is written; steps are known up to packing, which only
        // shortens epoch-based runs, so AdaLoRA's schedule uses the unpacked count.
        var setup = AdapterMethods.Build(req.Method with { TotalSteps = req.Train.TotalSteps(trainCount) });
        task.CheckMethod(setup);
        // In a data-parallel job rank 0 alone checks, locks and writes --out; the others wait until it has.
        bool writes = req.Communicator is null || req.Communicator.Rank == 0;
        // The lock first: a folder another run holds is named as such, whatever it holds; a refusal releases it (and
        // removes the folder again if the lock created it).
        using var runLock = writes ? RunLock.Acquire(req.OutDir) : null; // one run per folder, for the run's lifetime
        if (writes) PrepareOutDir(req.OutDir, req.Resume, req.Overwrite);
        if (writes && !req.Resume) FullFineTuning.RemoveOtherKindOfOutput(req.OutDir, full: false); // a full run's model, replaced with --overwrite
        int removed = writes ? AtomicFile.RemoveLeftovers(req.OutDir) : 0; // under the lock: no writer is active there
        if (removed > 0)
            observer.OnMessage($"removed {removed} temporary file(s) left in {req.OutDir} by an interrupted run");
        req.Communicator?.Barrier();

        var (modelDir, adapterConfig) = task.PrepareBase(setup, writes, observer);
        torch.manual_seed(req.Train.Seed);
        using var gen = new torch.Generator((ulong)req.Train.Seed);
        var plan = new AdapterPlan(task.PlanConfig(adapterConfig, modelDir), gen);
        using var model = task.LoadModel(modelDir, plan);
        var config = task.RunConfig(plan.Config);
        plan.EnsureAllPatternsMatched();
        AdapterModel.OnBaseWeightsLoaded(model);
        AdapterModel.FreezeAllButAdapters(model);
        var savedModules = task.SavedModules(plan, config);
        foreach (var p in savedModules.Values) p.requires_grad = true; // modules_to_save (--modules-to-save, a classifier's head): trained fully
        if (req.InitAdapter is { } init) LoadInitAdapter(init, plan.Config, model, observer);
        var (trainable, total) = AdapterModel.CountParameters(model);
        observer.OnMessage(task.Describe(config, AdapterModel.FindAdapters(model).Count, trainable, total));
        var trainTask = task.CreateTask(observer);

        var extras = setup.TrainingExtras?.Invoke(model).ToList() ?? new List<object>();
        var caps = AdapterModel.CollectCapabilities(model, extras.Prepend(plan.Builder).ToArray());
        // Written once the run's inputs have passed every check, so a refused run leaves no recipe behind; a resume
        // keeps the recipe of the run it continues.
        string recipePath = Path.Combine(req.OutDir, RecipeFile);
        if (writes && req.Recipe is { } recipe && !(req.Resume && File.Exists(recipePath))) AtomicFile.WriteAllText(recipePath, recipe);
        void Save(string dir, bool forOriginalBase)
        {
            // A method's snapshot (AdaLoRA's ranks, RefLoRA as LoRA) keeps the run's own fields (task's choice).
            task.SaveWeights(dir, plan.Builder is IConfigSnapshot snap ? task.Snapshot(snap.SnapshotConfig(), config) : config, savedModules, forOriginalBase);
            foreach (var (file, json) in extras.Prepend(plan.Builder).OfType<IAdapterFolderNote>().Select(n => n.Note()).Append(task.Record()))
                AtomicFile.WriteAllText(Path.Combine(dir, file), json);
        }
        return TrainLoop.Run(new TrainRunSpec
        {
            Task = trainTask,
            Options = req.Train,
            OutDir = req.OutDir,
            Method = config.Method,
            Resume = req.Resume,
            ResumeSettings = AdapterResumeSettings(plan.Config, task.ResumeSettings()),
            Capabilities = caps.ExtraLossTerms.Cast<object>().Concat(caps.StepHooks).Append(plan.Builder),
            Communicator = req.Communicator,
            Cancellation = req.Cancellation,
            SaveWeights = dir => Save(dir, forOriginalBase: true),
            // PiSSA/OLoRA/LoftQ: the adapter a user gets applies to the original base (rank 2r, PEFT's conversion); the
            // checkpoint keeps the trained rank-r pair, which a resume loads over the residual its init recomputes.
            SaveResumeWeights = dir => Save(dir, forOriginalBase: false),
            LoadWeights = task.LoadWeights,
        }, observer);
    }

    /// <summary>
    /// Copies <c>--init-adapter</c>'s weights into the run's freshly built adapters (a resume then loads its checkpoint
    /// over them). The folder's method and rank must be the run's: the message says which flags to give.
    /// </summary>
    private static void LoadInitAdapter(string dir, AdapterConfigBase runConfig, nn.Module model, ITrainObserver observer)
    {
        if (!File.Exists(Path.Combine(dir, AdapterFolder.ConfigFileName)))
            throw new UserInputException($"--init-adapter {dir}: no {AdapterFolder.ConfigFileName} there; give the folder of an adapter (a train run's --out or a PEFT adapter).");
        using var contents = AdapterFolder.Load(dir);
        var saved = contents.Config;
        string Describe(AdapterConfigBase c) => c is LowRankConfigBase lr ? $"{c.PeftType} r={lr.R}" : c.PeftType;
        if (saved.PeftType != runConfig.PeftType || (saved is LowRankConfigBase a && runConfig is LowRankConfigBase b && a.R != b.R))
            throw new UserInputException($"--init-adapter {dir}: it holds a {Describe(saved)} adapter and this run builds {Describe(runConfig)}; give the folder's method and rank (--method, --rank, and its --targets) so its weights fit.");
        try { AdapterFolder.LoadInto(dir, model); }
        catch (UserInputException e) { throw new UserInputException($"--init-adapter {dir}: {e.Message} Train with the folder's --targets, --rank and --method.", e); }
        observer.OnMessage($"starting from the adapter in {dir}");
    }

    /// <summary>The recipe a run was given (<see cref="FineTuneRequest.Recipe"/>), which <c>reslora train --config</c> reads back.</summary>
    public const string RecipeFile = "train_config.json";

    /// <summary>The loss plot the CLI writes beside the adapter (one name for the plotter and for <see cref="IsRunFile"/>).</summary>
    public const string LossPlotFile = "loss.png";

    /// <summary>
    /// Whether <paramref name="name"/> is a file a training run writes directly in --out and a new run would replace:
    /// the adapter (or a full run's config.json and weights), metrics, summary, data record, recipe, loss plot and TensorBoard event files.
    /// </summary>
    public static bool IsRunFile(string name) =>
        name is AdapterFolder.ConfigFileName or AdapterFolder.WeightsFileName or Models.ModelFolder.ConfigFile or IO.HfCheckpoint.SingleFile or IO.HfCheckpoint.IndexFile or TrainLoop.MetricsFile or TrainLoop.SummaryFile
            or TrainingDataRecord.FileName or ClassificationTaskRecord.FileName or LossPlotFile or RecipeFile or PreferenceFineTune.ReferenceFile
        || name.StartsWith(TensorBoardLog.FilePrefix, StringComparison.Ordinal);

    /// <summary>
    /// Checks what --out holds, under the run's lock (<see cref="AtomicFolder.CheckTarget"/> has checked where it is):
    /// an existing run there is continued only with --resume, and files a run writes (<see cref="IsRunFile"/>) without a
    /// run to resume (a downloaded PEFT adapter, an earlier run's metrics or plot) are replaced only with --overwrite
    /// (never overwritten silently); --resume without a checkpoint is an error rather than a fresh start.
    /// </summary>
    public static void PrepareOutDir(string outDir, bool resume, bool overwrite = false)
    {
        if (resume && overwrite)
            throw new UserInputException("--resume continues the run in --out and --overwrite starts a new one there; give one of them.");
        bool hasCheckpoint = Directory.Exists(outDir) && TrainCheckpoint.Find(outDir) is not null;
        if (resume && !hasCheckpoint)
            throw new UserInputException(Directory.Exists(outDir) && Directory.EnumerateFiles(outDir).Any(f => IsRunFile(Path.GetFileName(f)))
                ? $"--resume: no checkpoint in {outDir} (the run there stopped before its first one); run with --overwrite instead of --resume to start it again."
                : $"--resume: no checkpoint in {outDir}; run without --resume to start.");
        if (!resume && hasCheckpoint && !overwrite)
            throw new UserInputException($"--out {outDir} already holds a training run; add --resume to continue it, --overwrite to start it again, or choose another --out folder.");
        if (resume || hasCheckpoint || overwrite || !Directory.Exists(outDir)) return;
        if (new[] { AdapterFolder.ConfigFileName, AdapterFolder.WeightsFileName }.FirstOrDefault(f => File.Exists(Path.Combine(outDir, f))) is { } adapter)
            throw new UserInputException($"--out {outDir} holds an adapter ({adapter}) but no training run (a downloaded PEFT adapter?); training would overwrite it. Choose another --out folder, or add --overwrite to replace it.");
        if (new[] { Models.ModelFolder.ConfigFile, IO.HfCheckpoint.SingleFile }.FirstOrDefault(f => File.Exists(Path.Combine(outDir, f))) is { } weights)
            throw new UserInputException($"--out {outDir} holds a model ({weights}) but no training run; training would overwrite it. Choose another --out folder, or add --overwrite to replace it.");
        if (Directory.EnumerateFiles(outDir).Select(Path.GetFileName).Order(StringComparer.Ordinal).FirstOrDefault(f => IsRunFile(f!)) is { } held)
            throw new UserInputException($"--out {outDir} holds {held} from an earlier run, but no checkpoint to resume; training would replace it. Choose another --out folder, or add --overwrite to replace it.");
    }

    /// <summary>
    /// The run's settings a resume must keep: <paramref name="run"/> plus every field of the adapter config as
    /// adapter_config.json writes it (rank, alpha, dropout, targets, the method's own options), as
    /// "adapter_config.json field" → its JSON text. The base model's path may move between runs and is not compared.
    /// </summary>
    internal static Dictionary<string, string> AdapterResumeSettings(AdapterConfigBase config, Dictionary<string, string> run)
    {
        var fields = System.Text.Json.Nodes.JsonNode.Parse(AdapterConfigJson.Serialize(config))!.AsObject();
        foreach (var (name, value) in fields)
            if (name is not ("base_model_name_or_path" or "revision"))
                run[$"adapter_config.json {name}"] = value?.ToJsonString() ?? "null";
        // Not in adapter_config.json, but a resume recomputes LoftQ's base from it: it must not change.
        if (config is LowRankConfigBase { InitLoraWeights.Kind: LoraInitKind.Loftq } lr)
            run["--loftq-iter"] = lr.LoftqIter.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return run;
    }
}
