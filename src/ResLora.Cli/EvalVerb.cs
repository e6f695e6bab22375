using System.CommandLine;
using System.Globalization;
using ResLora.IO;
using ResLora.Pipelines;
using ResLora.Quantization;
using ResLora.Training;
using ResLora.Training.Classification;

namespace ResLora.Cli;

internal static class EvalVerb
{
    public static Command Build()
    {
        var model = new Option<string?>("--model") { Description = "Hugging Face model folder (required, except for --tasks list)." };
        var adapter = new Option<string[]>("--adapter") { Description = "Adapter folder (PEFT format) to evaluate unmerged on top of the model; repeat as NAME=DIR to load several under names: when the data records pick one with their \"adapter\" field, each record is evaluated with its adapter (no field: the base model) and the totals follow; when no record has the field, each adapter is evaluated on every record, one line per NAME." };
        var data = new Option<string?>("--data") { Description = "JSONL or JSON-array data (same shapes and templates as train); with --tasks, the one task's data file (default: under --task-data)." };
        var promptTemplate = new Option<string?>("--prompt-template") { Description = "Prompt built from record fields." };
        var completionTemplate = new Option<string?>("--completion-template") { Description = "Completion built from record fields." };
        var chatTemplate = new Option<string?>("--chat-template") { Description = $"Chat template for {{\"messages\"}}/ShareGPT records (default: the model's own, else the one the adapter was trained with): a Jinja file, a JSON file with chat_template, or a built-in ({string.Join(", ", Text.Templates.BuiltInChatTemplates.Names)})." };
        var seqLen = new Option<int>("--seq-len") { Description = "Longest sequence in tokens.", DefaultValueFactory = _ => 256 };
        var batch = new Option<int>("--batch-size") { Description = "Sequences per batch.", DefaultValueFactory = _ => 8 };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Longest generated answer for exact-match accuracy (with --tasks: overrides each generate task's own limit). The answer is the greedy continuation, ending at EOS or, when the reference is one line, at the first newline (cut there); it is correct when it equals the reference after trimming white space (the rule train's evaluation uses).", DefaultValueFactory = _ => 16 };
        var limit = new Option<int>("--accuracy-examples") { Description = "Prompt/completion examples whose answers are generated (0 = skip accuracy).", DefaultValueFactory = _ => 200 };
        var wbits = new Option<int>("--wbits") { Description = "Fake-quantize decoder weights to this many bits first (16 = off; an adapter is merged before).", DefaultValueFactory = _ => 16 };
        var abits = new Option<int>("--abits") { Description = "Per-token activation bits on every decoder linear input (16 = off).", DefaultValueFactory = _ => 16 };
        var wquant = new Option<string>("--wquant") { Description = "rtn or gptq (gptq needs --calib).", DefaultValueFactory = _ => "rtn" };
        var calib = new Option<string?>("--calib") { Description = "Calibration data for GPTQ." };
        var predictions = new Option<string?>("--predictions") { Description = "Write one JSON line per example to this file (whole or not at all). Encoders: text, gold label, prediction, class probabilities. Causal LMs: each exact-match example (index, adapter when named, prompt, reference, generated answer as compared, correct)." };
        var textField = new Option<string?>("--text-field") { Description = "Encoders: the text field (default: the one the adapter was trained on)." };
        var pairField = new Option<string?>("--text-pair-field") { Description = "Encoders: the second text's field (default: the one the adapter was trained on)." };
        var labelField = new Option<string?>("--label-field") { Description = "Encoders: the label field (default: the one the adapter was trained on)." };
        var rt = new RuntimeOptionSet(baseBits: true);
        var preferenceData = new Option<string?>("--preference-data") { Description = "Held-out preference pairs ({\"prompt\",\"chosen\",\"rejected\"}, TRL's formats): how often the model prefers the chosen response (log-likelihood accuracy) and, with --adapter, DPO's reward accuracy against the base model (adapter off)." };
        var tasks = new EvalTasksOptions();
        var cmd = new Command("eval", "Loss, perplexity and exact-match accuracy of a causal LM (optionally with an adapter) on a data set; with --tasks, benchmark tasks (ARC, BoolQ, PIQA, SIQA, WinoGrande by log-likelihood; GSM8K, SVAMP, ... by generate-and-extract) for one or several adapters; for a BERT-family classifier: accuracy, F1, Matthews correlation (or Pearson/Spearman for regression) and per-example predictions.");
        foreach (var o in new Option[] { model, adapter, data, preferenceData, promptTemplate, completionTemplate, chatTemplate, seqLen, batch, maxNew, limit, wbits, abits, wquant, calib, predictions, textField, pairField, labelField }) cmd.Options.Add(o);
        tasks.AddTo(cmd);
        rt.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            if (tasks.Given(r) && r.GetValue(tasks.Tasks)!.Trim() == "list") return EvalTasksOptions.List();
            string modelDir = CliPaths.ModelDir(r.GetValue(model));
            var adapters = NamedAdapters.Parse(r.GetValue(adapter));
            if (tasks.Given(r))
            {
                if (Classification.IsEncoderFolder(modelDir)) throw new UserInputException("--tasks scores causal language models; a BERT-family classifier is evaluated with --data (labelled records).");
                return tasks.Run(r, new TaskEvalRequest
                {
                    ModelDir = modelDir,
                    Tasks = Array.Empty<string>(),
                    DataFile = r.GetValue(data),
                    AdapterDir = adapters.Single,
                    ScoredAdapters = adapters.Named,
                    BatchSize = r.GetResult(batch) is { Implicit: false } ? r.GetValue(batch) : 16,
                    MaxNewTokens = r.GetResult(maxNew) is { Implicit: false } ? r.GetValue(maxNew) : null,
                    Quantize = new QuantizeOptions { WBits = r.GetValue(wbits), ABits = r.GetValue(abits), Method = r.GetValue(wquant)! },
                    CalibrationPath = r.GetValue(calib),
                    Runtime = rt.Read(r),
                }, r.GetValue(predictions));
            }
            if (r.GetValue(preferenceData) is { } prefPath)
            {
                if (r.GetValue(data) is not null) throw new UserInputException("--preference-data and --data are two evaluations; run eval once for each.");
                if (Classification.IsEncoderFolder(modelDir)) throw new UserInputException("--preference-data scores a causal LM's responses; this model is an encoder.");
                if (adapters.IsNamed) throw new UserInputException("--preference-data scores one adapter against the base model; give one --adapter DIR.");
                var pr = PreferenceEvalPipeline.Run(modelDir, adapters.Single, prefPath, new DataTemplates { ChatTemplate = r.GetValue(chatTemplate) }, r.GetValue(seqLen), r.GetValue(batch), rt.Read(r), w => Console.Error.WriteLine($"warning: {w}"));
                string reward = pr.RewardAccuracy is { } ra ? string.Create(CultureInfo.InvariantCulture, $", reward accuracy {ra:P1} (margin {pr.MeanRewardMargin:0.000} over the base model)") : "";
                Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"pairs {pr.Pairs}: log-likelihood accuracy {pr.LikelihoodAccuracy:P1}{reward}; mean log-probability chosen {pr.MeanLogpChosen:0.000}, rejected {pr.MeanLogpRejected:0.000}"));
                return 0;
            }
            if (r.GetValue(data) is null) throw new UserInputException("eval needs --data FILE (records to score), --preference-data FILE (preference pairs), or --tasks NAMES (benchmark tasks; --tasks list shows them).");
            if (Classification.IsEncoderFolder(modelDir))
            {
                RuntimeOptionSet.RefuseBaseBits(rt.Read(r), modelDir);
                if (adapters.IsNamed) throw new UserInputException("several named adapters are for causal LMs; evaluate a classifier's adapter with one --adapter DIR.");
                return EvalClassifier(modelDir, adapters.Single, r.GetValue(data)!, r.GetValue(batch), r.GetValue(predictions), rt.Read(r),
                    new LabelledDataOptions { TextField = r.GetValue(textField), PairField = r.GetValue(pairField), LabelField = r.GetValue(labelField) ?? "label" }, r.GetValue(labelField) is not null);
            }
            string? predictionsPath = r.GetValue(predictions);
            if (predictionsPath is not null && r.GetValue(limit) <= 0)
                throw new UserInputException("--predictions writes the generated answers of exact-match accuracy; --accuracy-examples 0 generates none. Raise --accuracy-examples or drop --predictions.");
            var request = new EvalRequest
            {
                ModelDir = modelDir,
                AdapterDir = adapters.Single,
                DataPath = r.GetValue(data)!,
                Templates = new DataTemplates(r.GetValue(promptTemplate), r.GetValue(completionTemplate)) { ChatTemplate = r.GetValue(chatTemplate) },
                SeqLen = r.GetValue(seqLen),
                BatchSize = r.GetValue(batch),
                MaxNewTokens = r.GetValue(maxNew),
                AccuracyExamples = r.GetValue(limit),
                Quantize = new QuantizeOptions { WBits = r.GetValue(wbits), ABits = r.GetValue(abits), Method = r.GetValue(wquant)! },
                CalibrationPath = r.GetValue(calib),
                Runtime = rt.Read(r),
            };
            if (adapters.IsNamed)
            {
                var routed = RoutedEvalPipeline.Run(request, adapters.Named, w => Console.Error.WriteLine($"warning: {w}"));
                foreach (var (name, result) in routed.PerAdapter) Console.Out.WriteLine($"{name ?? "base"}: {Summary(result)}");
                if (routed.Routed) Console.Out.WriteLine($"all: {Summary(routed.Total)}");
                // Routed: in data order; otherwise adapter by adapter (the sort is stable).
                WritePredictions(predictionsPath, routed.PerAdapter.SelectMany(p => p.Result.Answers.Select(a => ((string?)(p.Adapter ?? "base"), a)))
                    .OrderBy(x => routed.Routed ? x.a.Index : 0));
                return 0;
            }
            var single = EvalPipeline.Run(request, w => Console.Error.WriteLine($"warning: {w}"));
            Console.Out.WriteLine(Summary(single));
            WritePredictions(predictionsPath, single.Answers.Select(a => ((string?)null, a)));
            return 0;
        }));
        return cmd;
    }

    private static void WritePredictions(string? path, IEnumerable<(string? Adapter, ExactMatchAnswer Answer)> answers)
    {
        if (path is null) return;
        ExactMatchPredictions.Write(path, answers);
        Console.Out.WriteLine($"predictions: {Path.GetFullPath(path)}");
    }

    /// <summary>A classifier's score as train prints it: accuracy as a percentage, the others as fractions.</summary>
    private static string Metric(string name, double value) =>
        name == "accuracy" ? string.Create(CultureInfo.InvariantCulture, $"{name} {value:P1}") : string.Create(CultureInfo.InvariantCulture, $"{name} {value:0.0000}");

    private static string Summary(EvalResult res)
    {
        string acc = res.Accuracy is { } a ? string.Create(CultureInfo.InvariantCulture, $", exact-match accuracy {a:P1} on {res.AccuracyExamples}") : "";
        return string.Create(CultureInfo.InvariantCulture, $"examples {res.Examples}, loss tokens {res.LossTokens}: loss {res.Loss:0.0000}, perplexity {res.Perplexity:0.000}") + acc;
    }

    private static int EvalClassifier(string modelDir, string? adapterDir, string dataPath, int batchSize, string? predictionsPath, RuntimeOptions runtime, LabelledDataOptions fields, bool labelGiven)
    {
        var (model, task) = Classification.Load(modelDir, adapterDir, runtime);
        using var _ = model;
        var (res, data) = Classification.Evaluate(model, task, dataPath, modelDir, batchSize, fields with { LabelField = labelGiven ? fields.LabelField : task.LabelField });
        string metrics = string.Join(", ", res.Metrics.Select(kv => Metric(kv.Key, kv.Value)));
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"examples {data.Examples.Count}: loss {res.Loss:0.0000}, {metrics}"));
        if (predictionsPath is not null)
        {
            if (model.Config.IsRegression) PredictionsWriter.Write(predictionsPath, data.Examples, res.Values);
            else PredictionsWriter.Write(predictionsPath, data.Examples, res.Predicted, new LabelMap(task.Labels!), res.Probabilities);
            Console.Out.WriteLine($"predictions: {Path.GetFullPath(predictionsPath)}");
        }
        return 0;
    }
}
