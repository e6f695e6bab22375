using System.CommandLine;
using ResLora.Training.Preference;

namespace ResLora.Cli;

/// <summary><c>train</c>'s preference-tuning flags (<c>--objective dpo|ipo|orpo|simpo</c> and the losses' settings) and <c>--init-adapter</c>.</summary>
internal sealed class PreferenceOptionSet
{
    public Option<string> Objective { get; } = new("--objective") { Description = "sft (supervised fine-tuning, the default), or preference tuning on {\"prompt\",\"chosen\",\"rejected\"} pairs (TRL's formats, docs/preference-data.md): dpo, ipo (both against the base model with the adapters off, or --init-adapter's), orpo or simpo (no reference).", DefaultValueFactory = _ => "sft" };
    public Option<double?> Beta { get; } = new("--beta") { Description = "dpo/ipo/simpo: β (default 0.1; simpo 2.0)." };
    public Option<double?> OrpoLambda { get; } = new("--orpo-lambda") { Description = "orpo: λ, the weight of the odds-ratio term (default 0.1)." };
    public Option<double?> SimpoGamma { get; } = new("--simpo-gamma") { Description = "simpo: the target reward margin γ (default 0.5)." };
    public Option<double> LabelSmoothing { get; } = new("--label-smoothing") { Description = "dpo/simpo: the assumed probability that a pair's preference is flipped (robust/conservative DPO; 0 = off).", DefaultValueFactory = _ => 0.0 };
    public Option<bool> PrecomputeReference { get; } = new("--precompute-reference") { Description = "dpo/ipo: score every pair under the reference once before training (kept in --out/reference_logps.json) instead of one extra forward per step." };
    public Option<int?> MaxPromptLength { get; } = new("--max-prompt-length") { Description = "Preference pairs longer than --seq-len: the prompt is cut to this many tokens, keeping its end (default: half of --seq-len)." };
    public Option<string?> InitAdapter { get; } = new("--init-adapter") { Description = "Start from this adapter folder (e.g. an SFT adapter before dpo; then dpo/ipo's reference is that adapter as loaded). Give its --method, --rank and --targets." };

    public void AddTo(Command cmd)
    {
        foreach (var o in new Option[] { Objective, Beta, OrpoLambda, SimpoGamma, LabelSmoothing, PrecomputeReference, MaxPromptLength, InitAdapter }) cmd.Options.Add(o);
    }

    /// <summary>The preference settings, or null for supervised fine-tuning (a preference flag without --objective is an error naming it).</summary>
    public PreferenceOptions? Read(ParseResult r)
    {
        var objective = PreferenceOptions.Parse(r.GetValue(Objective) ?? "sft");
        if (objective is null)
        {
            var stray = new Option[] { Beta, OrpoLambda, SimpoGamma, LabelSmoothing, PrecomputeReference, MaxPromptLength }
                .FirstOrDefault(o => r.GetResult(o) is { Implicit: false });
            if (stray is not null)
                throw new UserInputException($"{stray.Name} is a preference-tuning setting; add --objective dpo, ipo, orpo or simpo (this run is supervised fine-tuning).");
            return null;
        }
        var options = new PreferenceOptions
        {
            Objective = objective.Value,
            Beta = r.GetValue(Beta),
            OrpoLambda = r.GetValue(OrpoLambda),
            SimpoGamma = r.GetValue(SimpoGamma),
            LabelSmoothing = r.GetValue(LabelSmoothing),
            PrecomputeReference = r.GetValue(PrecomputeReference),
            MaxPromptLength = r.GetValue(MaxPromptLength),
        };
        options.Validate();
        return options;
    }
}
