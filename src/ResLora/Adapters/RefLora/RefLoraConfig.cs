using System.Text.Json.Serialization;

namespace ResLora.Adapters;

/// <summary>
/// RefLoRA (docs/specs/reflora.md): plain LoRA layers trained with a per-step optimal refactoring of each factor pair.
/// Full: after backward and clipping, before the optimizer step, grad_A ← S⁻¹ grad_A and grad_B ← grad_B S with S the
/// geometric mean of (AAᵀ)⁻¹ and BᵀB (§3.2). Scalar (RefLoRA-S): after the step, A ← pA, B ← B/p with p² = ‖B‖/‖A‖ and
/// Adam's moments transformed to match (§3.4). Both start after <c>warmup_steps</c> steps of plain LoRA (§3.3).
/// </summary>
public sealed record RefLoraConfig : LowRankConfigBase
{
    [JsonPropertyName("peft_type")] public override string PeftType => "REFLORA";

    /// <summary>full (matrix S, gradient preconditioning) or scalar (RefLoRA-S, physical rescale).</summary>
    [JsonPropertyName("variant")] public string Variant { get; init; } = "full";

    /// <summary>Optimizer steps of plain LoRA before refactoring starts (§3.3: with B = 0 at init, S = 0 and B would never move).</summary>
    [JsonPropertyName("refactor_warmup_steps")] public int RefactorWarmupSteps { get; init; } = 20;

    /// <summary>Refactor every this many optimizer steps after warm-up (§3.3, default 1).</summary>
    [JsonPropertyName("refactor_interval")] public int RefactorInterval { get; init; } = 1;

    [JsonIgnore] public override string Method => Variant == "scalar" ? "reflora-s" : "reflora";

    /// <summary>RefLoRA trains plain LoRA layers: PiSSA, OLoRA and LoftQ apply.</summary>
    [JsonIgnore] protected override bool InitFromBaseSupported => true;

    public override void Validate()
    {
        base.Validate();
        if (Variant is not ("full" or "scalar")) throw new UserInputException($"adapter_config.json: 'variant' is '{Variant}'; use full or scalar.");
        if (RefactorInterval < 1) throw new UserInputException($"adapter_config.json: 'refactor_interval' must be at least 1, got {RefactorInterval}.");
        if (RefactorWarmupSteps < 1 && InitLoraWeights != LoraInit.Random && !InitLoraWeights.MutatesBase)
            throw new UserInputException("adapter_config.json: 'refactor_warmup_steps' must be at least 1 with B initialised to zero (S would be 0 and B would never move, spec §3.3); use --refactor-warmup N.");
    }

}
