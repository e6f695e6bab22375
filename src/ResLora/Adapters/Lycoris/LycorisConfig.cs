using System.Text.Json.Serialization;
using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>PEFT's LycorisConfig fields shared by LoHa and LoKr (peft-format.md §2.7): <c>alpha</c> (not lora_alpha), rank/module dropout, init_weights.</summary>
public abstract record LycorisConfigBase : LowRankConfigBase
{
    /// <summary>PEFT's name for α in LyCORIS configs; kept equal to <see cref="LowRankConfigBase.LoraAlpha"/>.</summary>
    [JsonPropertyName("alpha")] public double Alpha { get => LoraAlpha; init => LoraAlpha = value; }
    [JsonPropertyName("rank_dropout")] public double RankDropout { get; init; }
    [JsonPropertyName("module_dropout")] public double ModuleDropout { get; init; }
    [JsonPropertyName("use_effective_conv2d")] public bool UseEffectiveConv2d { get; init; }

    public override void Validate()
    {
        base.Validate();
        if (!(RankDropout >= 0 && RankDropout < 1)) throw new UserInputException($"adapter_config.json: 'rank_dropout' must be in [0, 1), got {RankDropout}.");
        if (!(ModuleDropout >= 0 && ModuleDropout < 1)) throw new UserInputException($"adapter_config.json: 'module_dropout' must be in [0, 1), got {ModuleDropout}.");
    }
}

