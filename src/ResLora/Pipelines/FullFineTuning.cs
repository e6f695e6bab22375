using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Training;

namespace ResLora.Pipelines;

/// <summary>
/// Full fine-tuning (<c>reslora train --method full</c>): every parameter of a causal LM trained by the same trainer as
/// the adapter methods (AdamW, schedule, clipping, checkpoints with exact resume, <c>--grad-checkpoint</c>, bf16,
/// data-parallel steps), with no adapter. <c>--out</c> becomes a complete Hugging Face model folder (config.json, the
/// safetensors weights, the base's tokenizer files) that every verb loads as <c>--model</c>; each file is written
/// atomically. The resume checkpoint holds the full weights and AdamW's two moments: three times the weights' bytes.
/// </summary>
public static class FullFineTuning
{
    /// <summary>The <c>--method</c> value.</summary>
    public const string MethodName = "full";

    /// <summary>Whether <paramref name="spec"/> asks for full fine-tuning rather than an adapter method.</summary>
    public static bool IsFull(MethodSpec spec) => string.Equals(spec.Method.Trim(), MethodName, StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// Refuses, before anything is read or written, what cannot apply to a run without an adapter: a packed base, an
    /// adapter to start from, adapter options set in the spec, optimiser variants of LoRA pairs, and DPO/IPO with a
    /// reference forward (there is no adapter to switch off).
    /// </summary>
    internal static void Check(FineTuneRequest req)
    {
        if (req.Runtime.BaseStorage != BaseWeightStorage.Full)
            throw new UserInputException($"--base-bits {req.Runtime.BaseBits} with --method full: packed base weights are not trainable (full fine-tuning updates every weight). Drop --base-bits (--dtype bf16 halves the memory instead), or train an adapter on the packed base (--method lora).");
        if (req.InitAdapter is { } init)
            throw new UserInputException($"--init-adapter {init} with --method full: a full run has no adapter to load weights into. Merge that adapter into the base first (reslora merge) and pass the merged folder as --model.");
        var m = req.Method;
        var given = new List<string>();
        if (m.ModulesToSave is not null) given.Add("--modules-to-save");
        if (m.LayersToTransform is not null) given.Add("--layers-to-transform");
        if (m.Refactor is not null) given.Add("--refactor");
        if (m.Init != LoraInit.Default) given.Add("--init");
        if (m.Options is not null) given.Add("the method's own options");
        if (given.Count > 0)
            throw new UserInputException($"{string.Join(", ", given)} with --method full: these shape an adapter, and a full run trains every parameter without one. Drop them, or choose an adapter method.");
        if (req.Train.LoraPlusLrRatio is not null)
            throw new UserInputException("--loraplus-lr-ratio with --method full: LoRA+ sets the learning rate of LoRA's B matrices, and a full run has none. Drop --loraplus-lr-ratio.");
        if (req.Train.Precondition is not ("none" or ""))
            throw new UserInputException($"--precondition {req.Train.Precondition} with --method full: the preconditioner acts on LoRA's (A, B) pairs, and a full run has none. Drop --precondition.");
        if (req.Preference is { NeedsReference: true, PrecomputeReference: false } p)
            throw new UserInputException($"--objective {p.ObjectiveName} with --method full: {p.ObjectiveName} compares with a reference model, which an adapter run gets by switching its adapter off; a full run has no adapter, and a frozen copy of the model would double the weights' memory. Add --precompute-reference (the reference is scored once before training), or use --objective orpo or simpo (no reference).");
        if (ModelFamilies.OfFolder(req.ModelDir)?.Kind == ModelKind.Encoder)
            throw new UserInputException($"--method full trains causal LMs; {req.ModelDir} is an encoder (sequence classification). Train an adapter with the head saved beside it (--method lora; the head is trained fully), or use a decoder model.");
    }

    /// <summary>The run: <see cref="FineTuning.Run"/>'s locking, resume, checkpoints and summary, with the whole model trained and saved as a model folder.</summary>
    internal static TrainSummary Run(FineTuneRequest req, ITrainObserver observer)
    {
        Check(req);
        AtomicFolder.CheckTarget(req.OutDir, modelDir: req.ModelDir); // before the data is read
        var task = (CausalLmFineTune)FineTuneTask.For(req); // a causal LM: encoders were refused above
        task.ReadData();
        bool writes = req.Communicator is null || req.Communicator.Rank == 0;
        using var runLock = writes ? RunLock.Acquire(req.OutDir) : null;
        if (writes) FineTuning.PrepareOutDir(req.OutDir, req.Resume, req.Overwrite);
        if (writes && !req.Resume) RemoveOtherKindOfOutput(req.OutDir, full: true);
        int removed = writes ? AtomicFile.RemoveLeftovers(req.OutDir) : 0;
        if (removed > 0)
            observer.OnMessage($"removed {removed} temporary file(s) left in {req.OutDir} by an interrupted run");
        req.Communicator?.Barrier();

        torch.manual_seed(req.Train.Seed);
        using var model = task.LoadCausalLM(req.ModelDir, factory: null);
        foreach (var p in model.parameters()) p.requires_grad = true; // the loader freezes the base; here the base is what trains
        long count = model.parameters().Sum(p => p.numel()), bytes = model.parameters().Sum(p => p.numel() * p.ElementSize);
        observer.OnMessage($"{MethodName}: every parameter trained, {count:N0} in {model.Dtype} (no adapter); AdamW keeps two moments of the same size, and the resume checkpoint holds weights and moments ({3 * bytes / 1e6:0.#} MB)");
        var trainTask = task.CreateTask(observer);

        string recipePath = Path.Combine(req.OutDir, FineTuning.RecipeFile);
        if (writes && req.Recipe is { } recipe && !(req.Resume && File.Exists(recipePath))) AtomicFile.WriteAllText(recipePath, recipe);
        long shard = ModelFolder.ShardSizeOf(req.ModelDir);
        void Save(string dir, bool complete)
        {
            SaveModel(dir, model, shard, complete ? req.ModelDir : null);
            var (file, json) = task.Record();
            if (complete) AtomicFile.WriteAllText(Path.Combine(dir, file), json);
        }
        return TrainLoop.Run(new TrainRunSpec
        {
            Task = trainTask,
            Options = req.Train,
            OutDir = req.OutDir,
            Method = MethodName,
            Resume = req.Resume,
            ResumeSettings = task.ResumeSettings(),
            Communicator = req.Communicator,
            Cancellation = req.Cancellation,
            SaveWeights = dir => Save(dir, complete: true),
            SaveResumeWeights = dir => Save(dir, complete: false), // the weights alone, at the model's dtype: a resume continues bit-exactly
            LoadWeights = dir =>
            {
                using var ckpt = HfCheckpoint.Open(dir);
                model.LoadWeights(ckpt);
            },
        }, observer);
    }

    /// <summary>
    /// A new run replacing what --out held (--overwrite) removes the other kind of result there: an adapter run's
    /// adapter files before a full run (<paramref name="full"/>), a full run's config.json and weights before an adapter
    /// run; otherwise a verb could load the stale one (an adapter folder beside a model, or a model beside an adapter).
    /// </summary>
    internal static void RemoveOtherKindOfOutput(string outDir, bool full)
    {
        if (!Directory.Exists(outDir)) return;
        var stale = full
            ? new[] { AdapterFolder.ConfigFileName, AdapterFolder.WeightsFileName }
            : new[] { ModelFolder.ConfigFile, HfCheckpoint.SingleFile, HfCheckpoint.IndexFile }
                .Concat(Directory.EnumerateFiles(outDir, "model-*-of-*.safetensors").Select(Path.GetFileName).OfType<string>());
        foreach (var name in stale)
            if (File.Exists(Path.Combine(outDir, name))) File.Delete(Path.Combine(outDir, name));
    }

    /// <summary>
    /// Writes the live weights (Hugging Face names, the model's dtype) and config.json into <paramref name="dir"/>, each
    /// file atomically (an existing --out keeps its other files), and with <paramref name="companionsFrom"/> the base's
    /// tokenizer and generation files, so the folder is a model every verb loads.
    /// </summary>
    internal static void SaveModel(string dir, CausalLM model, long maxShardBytes, string? companionsFrom)
    {
        Directory.CreateDirectory(dir);
        using (var scope = torch.NewDisposeScope())
        using (torch.no_grad())
        {
            // Detached views of the parameters: written as they are, one tensor at a time.
            var weights = model.FullPrecisionWeights().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value.detach())).ToList();
            ModelFolder.Save(dir, model.Config, weights, maxShardBytes);
        }
        if (companionsFrom is null) return;
        foreach (var name in AtomicFolder.CompanionFiles)
        {
            string src = Path.Combine(companionsFrom, name);
            if (File.Exists(src)) AtomicFile.Write(Path.Combine(dir, name), s => { using var f = File.OpenRead(src); f.CopyTo(s); });
        }
    }
}
