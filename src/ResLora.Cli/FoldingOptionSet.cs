using System.CommandLine;
using ResLora.Pipelines;

namespace ResLora.Cli;

/// <summary>The texts merge and export read: calibration (for ResLoRA's fold) and held-out (for the report).</summary>
internal sealed class FoldingOptionSet
{
    public Option<string?> Calib { get; } = new("--calib") { Description = "Calibration text (JSONL/JSON data file) for ResLoRA's least-squares fold; default: the adapter's own training data (recorded in reslora_data.json)." };
    public Option<string?> HeldOut { get; } = new("--heldout") { Description = "Held-out text for the report (mean KL, max |Δlogit|, |Δloss|, greedy agreement); default: the adapter's evaluation split." };
    public Option<int> CalibSequences { get; } = new("--calib-sequences") { Description = "Calibration sequences used.", DefaultValueFactory = _ => 64 };
    public Option<int> Distill { get; } = new("--distill") { Description = "ResLoRA is/ms: after the least-squares fold, train the LoRA this many steps towards the unmerged model (KL on the calibration text).", DefaultValueFactory = _ => 0 };

    public Option<double> DistillLr { get; } = new("--distill-lr") { Description = "Peak learning rate of --distill (AdamW, cosine).", DefaultValueFactory = _ => Distillation.DefaultLearningRate };

    public void AddTo(Command cmd)
    {
        foreach (var o in new Option[] { Calib, HeldOut, CalibSequences, Distill, DistillLr }) cmd.Options.Add(o);
    }

    public FoldingTextOptions Read(ParseResult r)
    {
        int n = r.GetValue(CalibSequences);
        if (n < 1) throw new UserInputException($"--calib-sequences must be at least 1, got {n}.");
        if (r.GetValue(Distill) < 0) throw new UserInputException($"--distill must be 0 or more steps, got {r.GetValue(Distill)}.");
        return new FoldingTextOptions { CalibrationPath = r.GetValue(Calib), HeldOutPath = r.GetValue(HeldOut), CalibrationSequences = n };
    }

    /// <summary>The held-out line printed after a merge or export.</summary>
    public static string HeldOutLine(ComparisonReport? held, string source) =>
        held is null ? "held-out: none available (give --heldout FILE)" : $"{ModelComparison.Describe(held)} [{source}]";
}
