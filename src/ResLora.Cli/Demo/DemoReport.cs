using System.Globalization;
using System.Text;

namespace ResLora.Demo;

/// <summary>The demo's report.md: what ran, the comparison table, the merge, an answer, and how to read it.</summary>
public static class DemoReport
{
    private static string F(double v, string fmt = "0.0000") => double.IsNaN(v) ? "-" : v.ToString(fmt, CultureInfo.InvariantCulture);

    private static string P(double v) => double.IsNaN(v) ? "-" : v.ToString("P0", CultureInfo.InvariantCulture);

    public static string Markdown(DemoResult r, DemoOptions o, DemoBaseSettings b)
    {
        var sb = new StringBuilder();
        sb.AppendLine("# ResLora demo report").AppendLine();
        sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $"Generated {DateTime.UtcNow:u} on {Environment.ProcessorCount} cores ({Environment.OSVersion}); wall time {r.WallSeconds:0} s{(o.Quick ? "; **quick mode: tiny model and budget, the numbers only show that the pipeline runs**" : "")}."));
        sb.AppendLine();
        sb.AppendLine("## What ran").AppendLine();
        sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $"- Base model: a LLaMA-style decoder ({b.Layers} layers, hidden {b.HiddenSize}, {b.Heads} heads / {b.KvHeads} key-value heads, character-level tokenizer) pre-trained for {b.PretrainSteps} steps on generated sentences, addition/subtraction word problems and the times table as bare facts (\"What is 3 times 4? Answer: 12\"). Cached at `{r.BaseModelDir}`."));
        sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $"- Fine-tuning task (never seen in pre-training): multiplication *word problems* (\"Each box holds 3 pens. How many pens are in 4 boxes? Answer: 12\"), {o.TrainExamples} for training and {o.EvalExamples} held out, disjoint by prompt (`data/train.jsonl`, `data/eval.jsonl`). The base model knows the facts but not that these questions ask for them: it scores **{P(r.BaseAccuracy)}** exact-match (eval loss {F(r.BaseEvalLoss)}) before fine-tuning."));
        sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $"- Every method: rank {o.Rank} on all linear layers, {o.Steps} steps, batch {DemoRunner.FineTuneBatch}, AdamW with warm-up and cosine decay, seed {o.Seed}, lr {o.DefaultLr}, alpha {o.DefaultAlpha}."));
        if (r.Swept)
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $"- Sweep (`--sweep`): each method (LoRA included) also ran at (lr, alpha) ∈ {{{string.Join(", ", o.Sweep.Select(x => $"({x.Lr}, {x.Alpha})"))}}}; \"best\" is the setting with the lowest eval loss."));
        sb.AppendLine();
        sb.AppendLine("## Results").AppendLine();
        string head = $"| method | eval loss | accuracy | train loss at step {r.Rows[0].EarlyStep} | steps to LoRA's final train loss |" + (r.Swept ? " eval loss (best) | accuracy (best) | best lr / alpha |" : "")
            + " wall ms / step | merge | merged vs unmerged: held-out KL / greedy agreement / max abs logit diff (probe) |";
        sb.AppendLine(head);
        sb.AppendLine(string.Concat(Enumerable.Repeat("|---", head.Count(c => c == '|') - 1)) + "|");
        foreach (var row in r.Rows)
        {
            sb.Append(string.Create(CultureInfo.InvariantCulture,
                $"| {row.Label} | {F(row.Default.EvalLoss)} | {P(row.Default.Accuracy)} | {F(row.LossAtEarlyStep)} | {(row.StepsToLoraFinal is { } s ? s.ToString(CultureInfo.InvariantCulture) : "not reached")} |"));
            if (r.Swept) sb.Append(string.Create(CultureInfo.InvariantCulture, $" {F(row.Best.EvalLoss)} | {P(row.Best.Accuracy)} | {row.Best.Lr} / {row.Best.Alpha} |"));
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $" {F(row.Default.Summary.MeanStepSeconds * 1000, "0.0")} | {row.MergeKind} | {F(row.MergeHeldOutKl, "0.###e0")} / {P(row.MergeGreedyAgreement)} / {row.MergeMaxDiff.ToString("0.##e0", CultureInfo.InvariantCulture)} |"));
        }
        sb.AppendLine();
        sb.AppendLine("![loss curves: every method (left), the best few zoomed (right)](loss.png)").AppendLine();
        sb.AppendLine("How to read it: \"steps to LoRA's final train loss\" counts logged steps until a method's training loss first reaches the loss LoRA ends with; a method that gets there sooner learns faster at that setting. A faster start can come from a larger effective step size rather than from the method's structure; `--sweep` runs every method at two larger step sizes too, which separates the two. \"wall ms / step\" is wall-clock time: on a machine shared with other jobs it measures their load as much as the method. The merge columns compare the merged model with the unmerged one on the held-out problems: exact (float rounding) for LoRA, DoRA and ResLoRA-bs; for ResLoRA-is/ms the merge that `--merge auto` picks among the norm-window merges (spec §4.2) and the least-squares fold calibrated on training text (docs/methods.md), the one with the smallest held-out KL.");
        sb.AppendLine();
        if (r.MultipleChoice.Count > 0)
        {
            sb.AppendLine("## Multiple choice").AppendLine();
            sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $"The {r.MultipleChoice[0].Questions} held-out questions again, each with its right number and three near misses (`data/{DemoMultipleChoice.TaskFile}`), scored the way `reslora eval --tasks` scores ARC: the choice with the highest log-likelihood after the prompt is the answer (acc), or the highest per character (acc_norm). Each adapter unmerged, at the default setting; ± is the standard error."));
            sb.AppendLine();
            sb.AppendLine("| model | acc | acc_norm |").AppendLine("|---|---|---|");
            foreach (var c in r.MultipleChoice)
                sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $"| {c.Label} | {c.Acc * 100:0.0} ± {c.Stderr * 100:0.0} | {c.AccNorm * 100:0.0} |"));
            sb.AppendLine();
            sb.AppendLine($"Score your own adapter on it: `./reslora eval --model {r.BaseModelDir} --adapter ADAPTER_DIR --tasks {Path.Combine(Path.GetDirectoryName(r.ReportPath)!, "data", DemoMultipleChoice.TaskFile)}`.");
            sb.AppendLine();
        }
        sb.AppendLine("## The merged model").AppendLine();
        sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $"The best adapter whose merge keeps the model (held-out KL < {DemoRunner.MergeKlBudget}; {r.MergedLabel}: {r.Merge.Method}, {r.Merge.MergedModules} modules) was folded into the base weights and written as a Hugging Face folder at `{r.MergedDir}` (merged vs unmerged: held-out KL {(r.Merge.HeldOut is { } h ? h.MeanKl.ToString("0.###e0", CultureInfo.InvariantCulture) : "-")}, max |Δlogit| on the probe {r.Merge.MaxAbsDiff:0.##e0})."));
        sb.AppendLine();
        sb.AppendLine(string.Create(CultureInfo.InvariantCulture, $"The merged model on {r.Answers.Count} held-out questions: **{r.Answers.Count(a => a.Correct)} of {r.Answers.Count} right ({P(r.AnswerAccuracy)})**."));
        sb.AppendLine();
        sb.AppendLine("| question | answer | reference | |").AppendLine("|---|---|---|---|");
        foreach (var a in r.Answers)
            sb.AppendLine($"| `{a.Prompt.Replace("\n", " ").Trim()}` | `{a.Answer.Trim()}` | `{a.Reference.Trim()}` | {(a.Correct ? "right" : "wrong")} |");
        sb.AppendLine();
        sb.AppendLine("Try it yourself:").AppendLine();
        sb.AppendLine("```");
        if (r.Answers.Count > 0) sb.AppendLine($"./reslora generate --model {r.MergedDir} --prompt \"{r.Answers[0].Prompt}\" --max-new-tokens 6");
        sb.AppendLine($"./reslora train --model {r.BaseModelDir} --data {Path.Combine(Path.GetDirectoryName(r.ReportPath)!, "data", "train.jsonl")} --method lora --targets all-linear --steps {o.Steps} --lr {o.DefaultLr} --out my-adapter");
        sb.AppendLine("```");
        return sb.ToString();
    }
}
