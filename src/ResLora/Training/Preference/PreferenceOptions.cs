using System.Globalization;

namespace ResLora.Training.Preference;

/// <summary>The preference objective <c>reslora train --objective</c> optimises.</summary>
public enum PreferenceObjective
{
    /// <summary>DPO's sigmoid loss over summed log-probabilities, against a reference (TRL's default).</summary>
    Dpo,
    /// <summary>IPO's squared loss over length-averaged log-probabilities, against a reference.</summary>
    Ipo,
    /// <summary>ORPO: the chosen responses' NLL plus λ times the odds-ratio term; no reference.</summary>
    Orpo,
    /// <summary>SimPO: the length-normalised reward with a target margin; no reference.</summary>
    SimPo,
}

/// <summary>
/// The settings of a preference-tuning run (<c>--objective dpo|ipo|orpo|simpo</c> and its flags). Defaults are TRL's,
/// except SimPO's β: 2.0, the paper's value (TRL's CPOConfig default of 0.1 is CPO's).
/// </summary>
public sealed record PreferenceOptions
{
    public PreferenceObjective Objective { get; init; } = PreferenceObjective.Dpo;

    /// <summary>β (DPO, IPO, SimPO); null for the objective's default (<see cref="EffectiveBeta"/>). ORPO takes <see cref="OrpoLambda"/>.</summary>
    public double? Beta { get; init; }

    /// <summary>ORPO's λ, the weight of the odds-ratio term (TRL's ORPOConfig.beta); null for 0.1.</summary>
    public double? OrpoLambda { get; init; }

    /// <summary>SimPO's target reward margin γ (TRL's simpo_gamma); null for 0.5.</summary>
    public double? SimpoGamma { get; init; }

    /// <summary>ε of robust/conservative DPO and SimPO: the assumed probability that a pair's label is flipped (0 = off).</summary>
    public double LabelSmoothing { get; init; }

    /// <summary>DPO/IPO: compute the reference log-probabilities once over the data before training (none during it).</summary>
    public bool PrecomputeReference { get; init; }

    /// <summary>The prompt's length in tokens when a pair must be cut (TRL's max_prompt_length); null for half of --seq-len.</summary>
    public int? MaxPromptLength { get; init; }

    /// <summary>β in effect: the given one, else 0.1 (DPO, IPO; TRL) or 2.0 (SimPO; the paper).</summary>
    public double EffectiveBeta => Beta ?? (Objective == PreferenceObjective.SimPo ? 2.0 : 0.1);

    public double EffectiveOrpoLambda => OrpoLambda ?? 0.1;

    public double EffectiveSimpoGamma => SimpoGamma ?? 0.5;

    /// <summary>Whether the loss compares with a reference model (DPO, IPO).</summary>
    public bool NeedsReference => Objective is PreferenceObjective.Dpo or PreferenceObjective.Ipo;

    /// <summary>The objective's command-line name.</summary>
    public string ObjectiveName => Name(Objective);

    public static string Name(PreferenceObjective o) => o switch
    {
        PreferenceObjective.Dpo => "dpo",
        PreferenceObjective.Ipo => "ipo",
        PreferenceObjective.Orpo => "orpo",
        _ => "simpo",
    };

    /// <summary>The objective of <c>--objective</c>'s value (sft is not a preference objective: null).</summary>
    public static PreferenceObjective? Parse(string value) => value.Trim().ToLowerInvariant() switch
    {
        "sft" => null,
        "dpo" => PreferenceObjective.Dpo,
        "ipo" => PreferenceObjective.Ipo,
        "orpo" => PreferenceObjective.Orpo,
        "simpo" => PreferenceObjective.SimPo,
        _ => throw new UserInputException($"--objective '{value}' is not known; use sft (supervised fine-tuning, the default), dpo, ipo, orpo or simpo."),
    };

    /// <summary>Refuses out-of-range values and flags the objective does not use, each naming the flag.</summary>
    public void Validate()
    {
        string obj = ObjectiveName;
        if (Beta is { } b && (!(b > 0) || double.IsInfinity(b))) throw new UserInputException($"--beta must be a positive number, got {b}.");
        if (Beta is not null && Objective == PreferenceObjective.Orpo) throw new UserInputException("--beta is not an ORPO setting: ORPO's weight of the odds-ratio term is --orpo-lambda (default 0.1).");
        if (OrpoLambda is { } l && (!(l > 0) || double.IsInfinity(l))) throw new UserInputException($"--orpo-lambda must be a positive number, got {l}.");
        if (OrpoLambda is not null && Objective != PreferenceObjective.Orpo) throw new UserInputException($"--orpo-lambda is ORPO's weight; this run's --objective is {obj}. Drop it or use --objective orpo.");
        if (SimpoGamma is { } g && (!(g >= 0) || double.IsInfinity(g))) throw new UserInputException($"--simpo-gamma must be 0 or a positive margin, got {g}.");
        if (SimpoGamma is not null && Objective != PreferenceObjective.SimPo) throw new UserInputException($"--simpo-gamma is SimPO's target margin; this run's --objective is {obj}. Drop it or use --objective simpo.");
        if (!(LabelSmoothing >= 0 && LabelSmoothing < 0.5)) throw new UserInputException($"--label-smoothing must be in [0, 0.5) (0 = off), got {LabelSmoothing}.");
        if (LabelSmoothing > 0 && Objective is PreferenceObjective.Ipo or PreferenceObjective.Orpo)
            throw new UserInputException($"--label-smoothing applies to the sigmoid losses (dpo, simpo), not to {obj}; drop it.");
        if (PrecomputeReference && !NeedsReference)
            throw new UserInputException($"--precompute-reference: {obj} compares with no reference model, so there is nothing to precompute; drop the flag.");
        if (MaxPromptLength is < 1) throw new UserInputException($"--max-prompt-length must be at least 1 token, got {MaxPromptLength}.");
    }

    /// <summary>The settings a resumed run must keep, by flag name.</summary>
    public IReadOnlyDictionary<string, string> ResumeSettings()
    {
        static string D(double v) => v.ToString("R", CultureInfo.InvariantCulture);
        var d = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["--objective"] = ObjectiveName,
            ["--label-smoothing"] = D(LabelSmoothing),
            ["--precompute-reference"] = PrecomputeReference ? "true" : "false",
        };
        if (Objective == PreferenceObjective.Orpo) d["--orpo-lambda"] = D(EffectiveOrpoLambda);
        else d["--beta"] = D(EffectiveBeta);
        if (Objective == PreferenceObjective.SimPo) d["--simpo-gamma"] = D(EffectiveSimpoGamma);
        if (MaxPromptLength is { } m) d["--max-prompt-length"] = m.ToString(CultureInfo.InvariantCulture);
        return d;
    }
}
