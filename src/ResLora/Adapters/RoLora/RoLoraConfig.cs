using System.Text.Json.Serialization;

namespace ResLora.Adapters;

/// <summary>
/// RoLoRA (docs/specs/rolora.md §4): LoRA trained on a rotated model (norm fusion + R1 + R4). The layers are LoRA's;
/// the adapter records which rotation it belongs to (seed and a hash of R1's sign vector), and loading it on a model
/// rotated differently — or not at all — is refused (§9: R1 drawn again at merge time breaks the model).
/// </summary>
public sealed record RoLoraConfig : LowRankConfigBase
{
    [JsonPropertyName("peft_type")] public override string PeftType => "ROLORA";

    [JsonPropertyName("rotation_seed")] public long RotationSeed { get; init; }

    [JsonPropertyName("rotation_signs_sha256")] public string RotationSignsHash { get; init; } = "";

    [JsonPropertyName("rotate_down_proj")] public bool RotateDownProj { get; init; } = true;

    [JsonIgnore] public override string Method => "rolora";
}
