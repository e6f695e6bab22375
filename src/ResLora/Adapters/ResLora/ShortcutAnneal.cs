using System.Text.Json.Serialization;

namespace ResLora.Adapters;

/// <summary>
/// What <c>--anneal-shortcuts K</c> recorded in adapter_config.json (<c>reslora_anneal</c>): the window length, the
/// schedule, and the shortcut weight of the last optimizer step the saved adapter was trained with (0 once the
/// anneal completed: the adapter is then a plain LoRA and merges and exports exactly).
/// </summary>
public sealed record ResLoraAnneal
{
    [JsonPropertyName("steps")] public int Steps { get; init; }

    [JsonPropertyName("schedule")] public string Schedule { get; init; } = ShortcutAnneal.Linear;

    /// <summary>The residual paths' weight when the adapter was saved (1 before the window, 0 after its last step).</summary>
    [JsonPropertyName("final_weight")] public double FinalWeight { get; init; } = 1.0;

    /// <summary>True when the residual paths ended at weight 0: the blocks are plain LoRA pairs.</summary>
    [JsonIgnore] public bool Completed => FinalWeight == 0;

    public void Validate(string where)
    {
        if (Steps < 1) throw new UserInputException($"{where}: the anneal window must be at least 1 step, got {Steps}.");
        ShortcutAnneal.CheckSchedule(Schedule, where);
        if (!(FinalWeight >= 0 && FinalWeight <= 1)) throw new UserInputException($"{where}: the final shortcut weight must lie in [0, 1], got {FinalWeight}.");
    }
}

/// <summary>
/// The shortcut weight w(s) of ResLoRA's residual paths under <c>--anneal-shortcuts K</c>. Steps s are the trainer's
/// 1-based optimizer steps of a run of T steps; the forwards of step s use w(s). The window is the last K steps,
/// s = T−K+1 … T, with start = T−K (the last step at full weight) and end = T:
/// <list type="bullet">
/// <item>s ≤ T−K: w = 1;</item>
/// <item>linear: w = (T − s)/K;</item>
/// <item>cosine: w = ½(1 + cos(π·(s − (T−K))/K));</item>
/// <item>s ≥ T: w = 0 (both formulas give 0 at s = T; it is set exactly).</item>
/// </list>
/// So the first step of the window has w = (K−1)/K (linear) or ½(1 + cos(π/K)) (cosine), and the last one w = 0: the
/// final update is trained without shortcuts and the saved adapter is a plain LoRA. A pure function of the step,
/// so resuming mid-window continues exactly.
/// </summary>
public static class ShortcutAnneal
{
    public const string Linear = "linear";
    public const string Cosine = "cosine";

    public static double Weight(int step, int totalSteps, int windowSteps, string schedule)
    {
        if (windowSteps < 1) throw new ArgumentOutOfRangeException(nameof(windowSteps), windowSteps, "the anneal window must be at least 1 step.");
        int start = totalSteps - windowSteps;
        if (step <= start) return 1.0;
        if (step >= totalSteps) return 0.0;
        double k = windowSteps;
        return schedule switch
        {
            Linear => (totalSteps - step) / k,
            Cosine => 0.5 * (1.0 + Math.Cos(Math.PI * (step - start) / k)),
            _ => throw new ArgumentException($"unknown anneal schedule '{schedule}'.", nameof(schedule)),
        };
    }

    public static void CheckSchedule(string schedule, string where)
    {
        if (schedule is not (Linear or Cosine)) throw new UserInputException($"{where}: anneal schedule '{schedule}'; use linear or cosine.");
    }
}
