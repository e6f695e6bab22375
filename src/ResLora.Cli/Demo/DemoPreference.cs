using System.Globalization;
using System.Text;
using System.Text.Json;
using ResLora.IO;
using ResLora.IO.Json;
using ResLora.Pipelines;
using ResLora.Text;
using ResLora.Training;
using ResLora.Training.Preference;

namespace ResLora.Demo;

/// <summary>One method's SFT adapter before and after DPO on the demo's preference pairs.</summary>
/// <param name="Label">The method.</param>
/// <param name="SftAccuracy">Held-out pairs whose right answer the SFT model finds more likely than the wrong one.</param>
/// <param name="DpoAccuracy">The same after DPO from the SFT adapter.</param>
/// <param name="SftExactMatch">The SFT model's greedy exact-match accuracy on the held-out questions.</param>
/// <param name="DpoExactMatch">The same after DPO.</param>
/// <param name="RewardAccuracy">DPO's reward accuracy on the held-out pairs against its reference, the SFT model (TRL's eval rewards/accuracies).</param>
/// <param name="Margin">Mean reward margin on the held-out pairs (β = 0.1).</param>
/// <param name="AdapterDir">The DPO adapter.</param>
public sealed record DemoPreferenceRow(string Label, double SftAccuracy, double DpoAccuracy, double SftExactMatch, double DpoExactMatch, double RewardAccuracy, double Margin, string AdapterDir);

/// <summary>The demo's preference part: pairs written, steps run, one row per method.</summary>
public sealed record DemoPreferenceResult(int TrainPairs, int HeldOutPairs, int Steps, IReadOnlyList<DemoPreferenceRow> Rows, string TrainPath, string EvalPath);

/// <summary>
/// The demo's preference part: the fine-tuned (SFT) adapters of the language-model part are aligned with DPO on pairs
/// built from the same word problems, on-policy as preference data usually is: the right answer chosen, and rejected the
/// SFT model's own greedy answer where it is wrong (else a near miss). Each run starts from its SFT adapter
/// (<c>--init-adapter</c>, so the SFT model is the reference); the held-out pairs (built the same way from the held-out
/// questions) are scored before and after: how often the model finds the right answer more likely than the wrong one,
/// and its greedy exact-match accuracy. The pairs are ordinary TRL-format JSONL a user can pass to
/// <c>reslora train --objective dpo</c>.
/// </summary>
public static class DemoPreference
{
    /// <summary>DPO's learning rate and β for the demo (TRL's β; a third of the SFT runs' step size).</summary>
    public const double Lr = 1e-3, Beta = 0.1;

    public static DemoPreferenceResult Run(DemoResult lm, DemoOptions o, Action<string> log)
    {
        string outDir = Path.GetFullPath(o.OutDir), dataDir = Path.Combine(outDir, "data");
        var (train, eval) = DemoCorpus.FinetuneTask(o.TrainExamples, o.EvalExamples, (int)o.Seed);
        var tokenizer = TokenizerLoader.Load(lm.BaseModelDir);
        int pad = tokenizer.PadTokenId ?? (tokenizer.EosTokenIds.Count > 0 ? tokenizer.EosTokenIds[0] : 0);
        int steps = Math.Max(10, o.Steps / 2);
        var specs = DemoRunner.DefaultMethods(o.Rank).ToDictionary(m => m.Label, m => m.Spec);
        var rows = new List<DemoPreferenceRow>();
        string trainPath = "", evalPath = "";
        foreach (var row in lm.Rows.Where(r => r.Label == "lora" || r.Label.StartsWith("reslora", StringComparison.Ordinal)))
        {
            string sft = row.Default.AdapterDir, dir = Path.Combine(outDir, "runs-preference", row.Label);
            IReadOnlyList<PreferencePair> heldOut;
            double before, sftExact;
            using (var model = ModelSessions.Load(lm.BaseModelDir, sft, o.Runtime))
            {
                // This SFT model's own answers: its wrong ones are the rejected responses (on-policy pairs).
                var (trainAnswers, _) = Answers(model, tokenizer, train);
                (var evalAnswers, sftExact) = Answers(model, tokenizer, eval);
                trainPath = Write(Path.Combine(dataDir, $"preference-train-{row.Label}.jsonl"), train, trainAnswers, o.Seed);
                evalPath = Write(Path.Combine(dataDir, $"preference-eval-{row.Label}.jsonl"), eval, evalAnswers, o.Seed + 1);
                heldOut = PreferenceData.Tokenize(tokenizer, PreferenceRecords.Load(evalPath, null), 128).Pairs;
                before = PreferenceEvalPipeline.Score(model, heldOut, 16, pad, withReference: false).LikelihoodAccuracy;
            }
            var summary = FineTuning.Run(new FineTuneRequest
            {
                ModelDir = lm.BaseModelDir,
                DataPath = trainPath,
                EvalDataPath = evalPath,
                Method = specs[row.Label] with { Alpha = row.Default.Alpha },
                Preference = new PreferenceOptions { Beta = Beta },
                InitAdapter = sft,
                Runtime = o.Runtime,
                OutDir = dir,
                Overwrite = true,
                SeqLen = 128,
                Train = new TrainOptions { Steps = steps, BatchSize = 8, LearningRate = Lr, WarmupSteps = Math.Max(1, steps / 10), LogEvery = Math.Max(1, steps / 20), Seed = o.Seed, SaveEvery = 0, EvalGenerateExamples = 0 },
            });
            double after, dpoExact;
            using (var model = ModelSessions.Load(lm.BaseModelDir, dir, o.Runtime))
            {
                after = PreferenceEvalPipeline.Score(model, heldOut, 16, pad, withReference: false).LikelihoodAccuracy;
                dpoExact = Answers(model, tokenizer, eval).Accuracy;
            }
            var metrics = summary.FinalEvalMetrics ?? new Dictionary<string, double>();
            rows.Add(new DemoPreferenceRow(row.Label, before, after, sftExact, dpoExact, summary.FinalEvalAccuracy ?? double.NaN, metrics.GetValueOrDefault("rewards/margins", double.NaN), dir));
            log(string.Create(CultureInfo.InvariantCulture, $"{row.Label}: held-out preference accuracy {before:P0} (SFT) → {after:P0} after {steps} DPO steps; exact match {sftExact:P0} → {dpoExact:P0}"));
        }
        var result = new DemoPreferenceResult(train.Count, eval.Count, steps, rows, trainPath, evalPath);
        AppendToReport(Path.Combine(outDir, "report.md"), result);
        return result;
    }

    /// <summary>The part's section at the end of the demo's report.md.</summary>
    private static void AppendToReport(string report, DemoPreferenceResult r)
    {
        var md = new StringBuilder(File.Exists(report) ? File.ReadAllText(report).TrimEnd() + "\n\n" : "");
        md.Append("## Preference tuning (DPO)\n\n");
        md.Append(string.Create(CultureInfo.InvariantCulture, $"Each fine-tuned adapter was aligned with DPO on {r.TrainPairs} pairs built from the training problems (the right answer chosen; rejected the adapter's own wrong answer, else a near miss), starting from the adapter (`--init-adapter`, so the SFT model is DPO's reference), {r.Steps} steps, β {Beta}, lr {Lr}. Preference accuracy is the share of {r.HeldOutPairs} held-out pairs (built the same way from the held-out questions) whose right answer the model finds more likely; exact match is its greedy answers to those questions; reward accuracy and margin are DPO's on those pairs against the SFT model. DPO lowers the rejected answers' log-probability much more than the chosen ones', but it lowers both (likelihood displacement), which can cost greedy accuracy.\n\n"));
        md.Append("| method | preference accuracy SFT | after DPO | exact match SFT | after DPO | reward accuracy | reward margin |\n|---|---|---|---|---|---|---|\n");
        foreach (var x in r.Rows)
            md.Append(string.Create(CultureInfo.InvariantCulture, $"| {x.Label} | {x.SftAccuracy:P0} | {x.DpoAccuracy:P0} | {x.SftExactMatch:P0} | {x.DpoExactMatch:P0} | {x.RewardAccuracy:P0} | {x.Margin:0.000} |\n"));
        md.Append($"\nRe-run one: `reslora train --model <base> --objective dpo --data {r.TrainPath} --eval-data {r.EvalPath} --init-adapter runs/lora/... --out dpo-lora`.\n");
        AtomicFile.WriteAllText(report, md.ToString());
    }

    /// <summary>The model's greedy answers to the problems (as train's evaluation generates them) and its exact-match accuracy.</summary>
    private static (IReadOnlyList<ExactMatchAnswer> Answers, double Accuracy) Answers(Models.CausalLM model, ITextTokenizer tokenizer, IReadOnlyList<DemoExample> items)
    {
        var res = Evaluation.Run(model, tokenizer, items.Select(e => new TextExample(e.Prompt, e.Completion)).ToList(), 128, 16, 4, items.Count);
        return (res.Answers, res.Accuracy ?? double.NaN);
    }

    /// <summary>
    /// TRL-format pairs: the problem and its right answer chosen; rejected the model's own answer when it is a wrong
    /// number, else a near miss (±1, ±2, ±10, ×2).
    /// </summary>
    private static string Write(string path, IReadOnlyList<DemoExample> items, IReadOnlyList<ExactMatchAnswer> answers, long seed)
    {
        var text = new StringBuilder();
        for (int i = 0; i < items.Count; i++)
        {
            if (!int.TryParse(items[i].Completion.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int n)) continue;
            string lead = items[i].Completion[..(items[i].Completion.Length - items[i].Completion.TrimStart().Length)];
            var own = answers.FirstOrDefault(a => a.Index == i);
            string rejected;
            if (own is { Correct: false } && int.TryParse(own.Generated.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int mine) && mine != n)
                rejected = lead + mine.ToString(CultureInfo.InvariantCulture);
            else
            {
                var near = new[] { n + 1, n - 1, n + 2, n - 2, n + 10, n - 10, 2 * n }.Where(x => x > 0 && x != n).ToArray();
                rejected = lead + near[new Random(unchecked((int)seed * 7919 + i)).Next(near.Length)].ToString(CultureInfo.InvariantCulture);
            }
            text.Append(JsonSerializer.Serialize(new { prompt = items[i].Prompt, chosen = items[i].Completion, rejected }, ReportJson.Line)).Append('\n');
        }
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        AtomicFile.WriteAllText(path, text.ToString());
        return path;
    }
}
