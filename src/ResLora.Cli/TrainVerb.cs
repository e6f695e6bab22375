using System.CommandLine;
using System.Globalization;
using ResLora.Adapters;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Plots;
using ResLora.Training;
using ResLora.Training.Classification;
using Spectre.Console;

namespace ResLora.Cli;

internal static class TrainVerb
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face model folder (config.json, *.safetensors, tokenizer.json).", Required = true };
        var data = new Option<string>("--data") { Description = "Training data: JSONL or a JSON array of records ({\"text\"}, {\"prompt\",\"completion\"}, Alpaca, or any shape with templates; with --objective: preference pairs {\"prompt\",\"chosen\",\"rejected\"}).", Required = true };
        var evalData = new Option<string?>("--eval-data") { Description = "Held-out data file (default: --eval-fraction of --data)." };
        var evalFraction = new Option<double>("--eval-fraction") { Description = "Fraction of --data held out for evaluation when --eval-data is not given (0 = none).", DefaultValueFactory = _ => 0.1 };
        var promptTemplate = new Option<string?>("--prompt-template") { Description = "Prompt built from record fields, e.g. \"{Body} {Question}\\nAnswer:\"." };
        var completionTemplate = new Option<string?>("--completion-template") { Description = "Completion built from record fields, e.g. \" {Answer}\" (the loss covers only this part, unless --train-on-prompt)." };
        var trainOnPrompt = new Option<bool>("--train-on-prompt") { Description = "Causal LMs: the loss covers the prompt's tokens too (the Alpaca preamble, a conversation's system and user turns), not only the completion (LLaMA-Factory's train_on_prompt)." };
        var chatTemplate = new Option<string?>("--chat-template") { Description = $"Chat template for {{\"messages\"}}/ShareGPT records when the model has none or another is wanted: a Jinja file, a JSON file with chat_template, or a built-in ({string.Join(", ", Text.Templates.BuiltInChatTemplates.Names)})." };
        var output = new Option<string>("--out") { Description = "Output folder: adapter (PEFT format; with --method full a Hugging Face model folder), metrics.jsonl, train_summary.json, loss.png, checkpoint/.", Required = true };
        var resume = new Option<bool>("--resume") { Description = "Continue the run in --out from its last checkpoint." };
        var overwrite = new Option<bool>("--overwrite") { Description = "Replace what --out holds (an adapter folder, or a previous run's checkpoint, metrics and summary) instead of refusing." };
        var seqLen = new Option<int?>("--seq-len") { Description = "Longest sequence in tokens; longer examples are cut (default: 256 or the model's max_position_embeddings if smaller)." };
        var pack = new Option<bool>("--pack") { Description = "Pack examples into full --seq-len sequences instead of padding each." };
        var gradCheckpoint = new Option<bool>("--grad-checkpoint") { Description = "Activation checkpointing per decoder layer: keeps one input per layer instead of every activation, recomputes each layer in backward (its forward runs twice). Exact with dropout; refused for ResLoRA is/ms." };
        var steps = new Option<int>("--steps") { Description = "Optimizer steps (0: use --epochs).", DefaultValueFactory = _ => 200 };
        var epochs = new Option<double>("--epochs") { Description = "Epochs over the training data when --steps is 0.", DefaultValueFactory = _ => 0 };
        var batch = new Option<int>("--batch-size") { Description = "Sequences per micro-batch; under mpirun the global micro-batch, shared among the ranks.", DefaultValueFactory = _ => 8 };
        var accum = new Option<int>("--grad-accum") { Description = "Micro-batches per optimizer step.", DefaultValueFactory = _ => 1 };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate (AdamW).", DefaultValueFactory = _ => 2e-4 };
        var wd = new Option<double>("--weight-decay") { Description = "AdamW decoupled weight decay.", DefaultValueFactory = _ => 0.0 };
        var warmup = new Option<int>("--warmup-steps") { Description = "Linear warm-up steps.", DefaultValueFactory = _ => 0 };
        var schedule = new Option<string>("--schedule") { Description = "cosine, linear or constant decay after warm-up.", DefaultValueFactory = _ => "cosine" };
        var clip = new Option<double>("--max-grad-norm") { Description = "Gradient-norm clip (0 = off).", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<long>("--seed") { Description = "Seed for adapter init, data order and dropout.", DefaultValueFactory = _ => 42L };
        var logEvery = new Option<int>("--log-every") { Description = "Log (metrics.jsonl, progress) every N steps.", DefaultValueFactory = _ => 10 };
        var evalEvery = new Option<int>("--eval-every") { Description = "Evaluate every N steps (0 = only at the end).", DefaultValueFactory = _ => 0 };
        var saveEvery = new Option<int>("--save-every") { Description = "Every N steps write the resume checkpoint (checkpoint/, replaced each time; 0 = only at the end).", DefaultValueFactory = _ => 50 };
        var snapshotEvery = new Option<int>("--snapshot-every") { Description = "Every N steps also keep an adapter snapshot checkpoint-N/, a complete adapter folder the other verbs load (0 = none).", DefaultValueFactory = _ => 0 };
        var saveTotalLimit = new Option<int>("--save-total-limit") { Description = "Keep only the newest K checkpoint-N/ snapshots of --snapshot-every (0 = keep all).", DefaultValueFactory = _ => 0 };
        var patience = new Option<int>("--early-stopping-patience") { Description = "Stop when the eval loss has not improved for P consecutive evaluations (needs --eval-every and eval data; 0 = off). The saved adapter is the one at the stop.", DefaultValueFactory = _ => 0 };
        var threshold = new Option<double>("--early-stopping-threshold") { Description = "The least eval-loss decrease below the best that counts as an improvement for --early-stopping-patience.", DefaultValueFactory = _ => 0.0 };
        var evalExamples = new Option<int>("--eval-generate") { Description = "Examples whose answers are generated for exact-match accuracy at each evaluation (0 = off).", DefaultValueFactory = _ => 64 };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Longest generated answer during evaluation.", DefaultValueFactory = _ => 16 };
        var task = new Option<string?>("--task") { Description = "Encoders (BERT family, DeBERTa-v2/v3): classify or regress (a sequence-classification head, saved with the adapter); default: from the labels (numbers with fractions: regress, else classify). A causal LM has one task: leave it out." };
        var textField = new Option<string?>("--text-field") { Description = "classify/regress: the field (or TSV/CSV column) holding the text (default: text, sentence or sentence1)." };
        var pairField = new Option<string?>("--text-pair-field") { Description = "classify/regress: the field holding the second text of a pair (e.g. sentence2)." };
        var labelField = new Option<string>("--label-field") { Description = "classify/regress: the field holding the label (integer or string classes; a number for regress).", DefaultValueFactory = _ => "label" };
        var checkWeights = new Option<bool>("--check-weights") { Description = "Read every base weight once before training and refuse NaN/infinite values or integer-typed weights (as inspect --check; adapter tensors are always checked)." };
        var loraPlus = new Option<double?>("--loraplus-lr-ratio") { Description = "LoRA+: B's learning rate is this many times A's (PEFT's grouping; the paper suggests 16; default off)." };
        var precondition = new Option<string>("--precondition") { Description = "riemannian: PrecLoRA's r×r preconditioner of every (A, B) pair's gradients before each step (LoRA, DoRA, ResLoRA, RoLoRA); none (default).", DefaultValueFactory = _ => "none" };
        var preconditionDelta = new Option<double>("--precondition-delta") { Description = "--precondition riemannian: δ added to BᵀB and AAᵀ before inversion (PEFT's reg).", DefaultValueFactory = _ => Training.Optimization.RiemannianPreconditioner.DefaultDelta };
        var config = new Option<string?>(TrainRecipe.Flag) { Description = $"A recipe: a JSON file, or YAML (.yaml/.yml), whose keys are these flags without the dashes (snake_case or kebab-case), e.g. {{\"model\": \"m\", \"data\": \"d.jsonl\", \"steps\": 200, \"targets\": \"q_proj,v_proj\"}}. Flags on the command line override it; paths are read as on the command line. Every run writes its flags to --out/{TrainRecipe.FileName}, which --config re-runs." };
        var method = new MethodOptionSet();
        var preference = new PreferenceOptionSet();
        var rt = new RuntimeOptionSet(baseBits: true, heap: true);
        var cmd = new Command("train", "Fine-tune a model with an adapter method (a PEFT-format adapter folder) or every parameter (--method full: a Hugging Face model folder); writes metrics, a summary and a loss plot.");
        foreach (var o in new Option[] { config, model, data, evalData, evalFraction, task, textField, pairField, labelField, promptTemplate, completionTemplate, chatTemplate, trainOnPrompt, output, resume, overwrite, seqLen, pack, gradCheckpoint, steps, epochs, batch, accum, lr, wd, warmup, schedule, clip, seed, logEvery, evalEvery, saveEvery, snapshotEvery, saveTotalLimit, patience, threshold, evalExamples, maxNew, checkWeights, loraPlus, precondition, preconditionDelta })
            cmd.Options.Add(o);
        method.AddTo(cmd);
        preference.AddTo(cmd);
        rt.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Guard(() => DistributedLaunch.Run(comm =>
        {
            // Under mpirun every rank runs this; rank 0 alone shows progress and prints (the library writes on rank 0 only).
            bool shows = comm is null || comm.Rank == 0;
            string dir = CliPaths.ModelDir(r.GetValue(model));
            var runtime = rt.Read(r);
            string? taskName = r.GetValue(task)?.Trim().ToLowerInvariant();
            if (taskName is not (null or "lm" or "classify" or "regress"))
                throw new UserInputException($"--task '{taskName}' is not known; use classify or regress (encoders; default: from the labels), or leave it out for a causal LM.");
            var family = ModelFamilies.OfFolder(dir);
            // The dtype default follows a causal LM's size (bf16 for large ones); an encoder's stays float32.
            if (family?.Kind != ModelKind.Encoder && r.GetResult(rt.Dtype) is null or { Implicit: true })
                runtime = runtime.DefaultForModelSize(Models.ModelPresets.ParameterCount(Models.ModelFolder.LoadConfig(dir)), m => Console.Error.WriteLine($"note: {m}"));
            var trainOptions = new TrainOptions
            {
                Steps = r.GetValue(steps),
                Epochs = r.GetValue(epochs),
                BatchSize = r.GetValue(batch),
                GradAccum = r.GetValue(accum),
                LearningRate = r.GetValue(lr),
                WeightDecay = r.GetValue(wd),
                WarmupSteps = r.GetValue(warmup),
                Schedule = r.GetValue(schedule)!,
                MaxGradNorm = r.GetValue(clip),
                Seed = r.GetValue(seed),
                LogEvery = r.GetValue(logEvery),
                EvalEvery = r.GetValue(evalEvery),
                SaveEvery = r.GetValue(saveEvery),
                SnapshotEvery = r.GetValue(snapshotEvery),
                SaveTotalLimit = r.GetValue(saveTotalLimit),
                EarlyStoppingPatience = r.GetValue(patience),
                EarlyStoppingThreshold = r.GetValue(threshold),
                EvalGenerateExamples = r.GetValue(evalExamples),
                MaxNewTokens = r.GetValue(maxNew),
                LoraPlusLrRatio = r.GetValue(loraPlus),
                Precondition = r.GetValue(precondition)!.Trim().ToLowerInvariant(),
                PreconditionDelta = r.GetValue(preconditionDelta),
            };
            string outDir = r.GetValue(output)!;
            if (r.GetValue(checkWeights)) InspectPipeline.RequireCleanWeights(dir);
            // Ctrl+C: the first stops at the next step boundary with a checkpoint (exit 130); a second ends the process at once.
            // One process only: under mpirun the launcher signals every rank, which resume from the last periodic checkpoint.
            using var interrupt = comm is null ? new Interrupt() : null;
            var stop = interrupt?.Token ?? CancellationToken.None;
            TrainSummary summary;
            try
            {
                var req = new FineTuneRequest
                {
                    ModelDir = dir,
                    DataPath = r.GetValue(data)!,
                    EvalDataPath = r.GetValue(evalData),
                    EvalFraction = r.GetValue(evalFraction),
                    Templates = new DataTemplates(r.GetValue(promptTemplate), r.GetValue(completionTemplate)) { ChatTemplate = r.GetValue(chatTemplate) },
                    Fields = new LabelledDataOptions { TextField = r.GetValue(textField), PairField = r.GetValue(pairField), LabelField = r.GetValue(labelField)! },
                    Task = taskName switch { "classify" => LabelTask.Classify, "regress" => LabelTask.Regress, _ => null },
                    Method = method.ReadSpec(r, family is { } f ? ModuleTargets.List(f.DefaultTargets.ToArray()) : null),
                    Preference = preference.Read(r),
                    InitAdapter = r.GetValue(preference.InitAdapter),
                    Runtime = runtime,
                    OutDir = outDir,
                    Resume = r.GetValue(resume),
                    Overwrite = r.GetValue(overwrite),
                    SeqLen = r.GetValue(seqLen),
                    Pack = r.GetValue(pack),
                    TrainOnPrompt = r.GetValue(trainOnPrompt),
                    GradCheckpoint = r.GetValue(gradCheckpoint),
                    Train = trainOptions,
                    Communicator = comm,
                    Cancellation = stop,
                    Recipe = TrainRecipe.Record(r, cmd),
                };
                string title = family?.Kind == ModelKind.Encoder ? $"train {req.Method.Method} ({taskName ?? "classify/regress"})"
                    : req.Preference is { } pref ? $"train {req.Method.Method} ({pref.ObjectiveName})" : $"train {req.Method.Method}";
                summary = shows ? ProgressDisplay.Run(title, obs => FineTuning.Run(req, rt.AnnounceThreads(obs))) : FineTuning.Run(req);
            }
            catch (TrainingInterruptedException stopped)
            {
                Console.Error.WriteLine($"interrupted: stopped after step {stopped.Step} of {stopped.TotalSteps}; checkpoint saved in {Path.GetFullPath(stopped.CheckpointDir)}. Resume with: {ResumeCommand(r)}");
                return InterruptedExit;
            }
            if (!shows) return 0;
            string I(double? v) => v is { } x && !double.IsNaN(x) ? x.ToString("0.0000", CultureInfo.InvariantCulture) : "-";
            string extra = summary.FinalEvalMetrics is { Count: > 0 } m ? "; " + string.Join(", ", m.Select(kv => $"{kv.Key} {I(kv.Value)}")) : "";
            if (summary.StoppedEarly == true)
                Console.Out.WriteLine($"early stopping: stopped at step {summary.Steps} of {summary.PlannedSteps} (best eval loss {I(summary.BestEvalLoss)} at step {summary.BestEvalStep}); the adapter is the one at step {summary.Steps}");
            Console.Out.WriteLine($"done: {summary.Steps} steps in {summary.WallSeconds:0.0}s; train loss {I(summary.FinalTrainLoss)}, eval loss {I(summary.FinalEvalLoss)}, eval accuracy {(summary.FinalEvalAccuracy is { } a ? a.ToString("P1", CultureInfo.InvariantCulture) : "-")}{extra}");
            Console.Out.WriteLine(FullFineTuning.IsFull(new MethodSpec { Method = r.GetValue(method.Method)! })
                ? $"model: {Path.GetFullPath(outDir)} (Hugging Face folder: pass it as --model); plot: {Path.Combine(outDir, LossPlot.FileName)}"
                : $"adapter: {Path.GetFullPath(outDir)} (PEFT format); plot: {Path.Combine(outDir, LossPlot.FileName)}");
            return 0;
        })));
        return cmd;
    }

    /// <summary>The exit code of a run stopped by Ctrl+C (128 + SIGINT, as shells report it).</summary>
    public const int InterruptedExit = 130;

    /// <summary>Test hook (per thread): receives each run's interrupt source, so a test can request a stop without a signal.</summary>
    [ThreadStatic] internal static Action<CancellationTokenSource>? InterruptHook;

    /// <summary>The command that continues the run: this one's arguments with --resume (and without --overwrite), shell-quoted.</summary>
    internal static string ResumeCommand(ParseResult r)
    {
        var args = r.Tokens.Select(t => t.Value).Where(v => v != "--overwrite").ToList();
        if (!args.Contains("--resume")) args.Add("--resume");
        return "reslora " + string.Join(' ', args.Select(Quote));
    }

    private static string Quote(string arg) =>
        arg.Length > 0 && arg.All(c => char.IsAsciiLetterOrDigit(c) || "_-./:=,+@%".Contains(c)) ? arg : "'" + arg.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    /// <summary>Ctrl+C during a run: the first press requests a stop at the next step boundary, a second one is left to end the process.</summary>
    private sealed class Interrupt : IDisposable
    {
        private readonly CancellationTokenSource _cts = new();
        private int _presses;

        public Interrupt()
        {
            Console.CancelKeyPress += OnPress;
            InterruptHook?.Invoke(_cts);
        }

        public CancellationToken Token => _cts.Token;

        private void OnPress(object? sender, ConsoleCancelEventArgs e)
        {
            if (Interlocked.Increment(ref _presses) > 1) return; // e.Cancel stays false: the runtime ends the process now
            e.Cancel = true;
            Console.Error.WriteLine("stopping after the current step and saving a checkpoint; press Ctrl+C again to exit at once");
            _cts.Cancel();
        }

        public void Dispose()
        {
            Console.CancelKeyPress -= OnPress;
            _cts.Dispose();
        }
    }
}
