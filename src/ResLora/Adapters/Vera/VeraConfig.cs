using System.Text.Json.Serialization;

namespace ResLora.Adapters;

/// <summary>
/// PEFT's VeraConfig (Kopiczko et al. 2024, "VeRA: Vector-based Random Matrix Adaptation"): one pair of frozen random
/// projections vera_A (r, max in) and vera_B (max out, r) shared by every adapted layer, and per layer two trainable
/// vectors, vera_lambda_d (r) and vera_lambda_b (out). Field names and defaults are PEFT's (peft/tuners/vera/config.py);
/// VeRA has no lora_alpha, rank_pattern or exclude_modules.
/// </summary>
public sealed record VeraConfig : AdapterConfigBase
{
    [JsonPropertyName("peft_type")] public override string PeftType => "VERA";

    /// <summary>The rank of the shared projections (PEFT's default 256, far larger than LoRA's: only r + out numbers per layer train).</summary>
    [JsonPropertyName("r")] public int R { get; init; } = 256;

    /// <summary>The seed of the CPU generator vera_A and vera_B are drawn from (PEFT's default 0).</summary>
    [JsonPropertyName("projection_prng_key")] public long ProjectionPrngKey { get; init; }

    /// <summary>Whether vera_A / vera_B are written to the adapter file (PEFT's default true): then a loader needs no RNG parity.</summary>
    [JsonPropertyName("save_projection")] public bool SaveProjection { get; init; } = true;

    /// <summary>Dropout on the adapter path's input (training only).</summary>
    [JsonPropertyName("vera_dropout")] public double VeraDropout { get; init; }

    /// <summary>The value vera_lambda_d starts at (PEFT's default 0.1; vera_lambda_b starts at 0, so ΔW = 0).</summary>
    [JsonPropertyName("d_initial")] public double DInitial { get; init; } = 0.1;

    /// <summary>Conv1D (fan_in, fan_out) weights; the projections here are nn.Linear (out, in), so only false is accepted.</summary>
    [JsonPropertyName("fan_in_fan_out")] public bool FanInFanOut { get; init; }

    /// <summary>PEFT's bias mode ("none", "all", "vera_only"); base biases stay frozen here, so only "none" is accepted.</summary>
    [JsonPropertyName("bias")] public string Bias { get; init; } = "none";

    /// <summary>true: λ_b = 0, λ_d = d_initial (the layer starts as the base); false: λ_b = 1, λ_d ~ N(0, 1), as PEFT's unreset vectors.</summary>
    [JsonPropertyName("init_weights")] public bool InitWeights { get; init; } = true;

    /// <summary>
    /// The base record's exclude_modules, left out of adapter_config.json while null: PEFT's VeraConfig has no such field
    /// (a PEFT loader would drop it with a warning), so VeRA refuses exclusions instead of writing a field PEFT ignores.
    /// </summary>
    [JsonPropertyName("exclude_modules")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public new ModuleTargets? ExcludeModules { get => base.ExcludeModules; init => base.ExcludeModules = value; }

    [JsonIgnore] public override string Method => "vera";

    public override void Validate()
    {
        if (R <= 0) throw Bad("r", R, "must be a positive rank, e.g. 256 (--rank)");
        if (ProjectionPrngKey < 0) throw Bad("projection_prng_key", ProjectionPrngKey, "must be a seed ≥ 0 (--projection-prng-key)");
        if (!(VeraDropout >= 0 && VeraDropout < 1)) throw Bad("vera_dropout", VeraDropout, "must be in [0, 1) (--dropout)");
        if (!double.IsFinite(DInitial)) throw Bad("d_initial", DInitial, "must be a finite number, e.g. 0.1 (--d-initial)");
        if (FanInFanOut) throw Bad("fan_in_fan_out", "true", "the projections are nn.Linear with (out, in) weights; set it to false");
        if (Bias != "none") throw Bad("bias", $"\"{Bias}\"", "only \"none\" is supported (base biases stay frozen); \"all\"/\"vera_only\" are not implemented");
        if (base.ExcludeModules is not null)
            throw new UserInputException("--exclude / exclude_modules: PEFT's VeraConfig has no exclude_modules field, so a VeRA adapter cannot record it; narrow --targets (a regex string) instead.");
        base.Validate();
    }
}
