using System.Text.Json.Serialization;
using ResLora.Models;
using ResLora.Quantization;

namespace ResLora.Adapters;

/// <summary>
/// RoLoRA (shared/specs/rolora.md §4): LoRA trained on a rotated model (norm fusion + R1 + R4). The layers are LoRA's;
/// the adapter records which rotation it belongs to (seed and a hash of R1's sign vector), and loading it on a model
/// rotated differently — or not at all — is refused (§9: R1 drawn again at merge time breaks the model).
/// </summary>
public sealed record RoLoraConfig : AdapterConfigBase
{
    [JsonPropertyName("peft_type")] public override string PeftType => "ROLORA";

    [JsonPropertyName("rotation_seed")] public long RotationSeed { get; init; }

    [JsonPropertyName("rotation_signs_sha256")] public string RotationSignsHash { get; init; } = "";

    [JsonPropertyName("rotate_down_proj")] public bool RotateDownProj { get; init; } = true;

    [JsonIgnore] public override string Method => "rolora";

    [JsonIgnore] public override string LayerMethod => "lora";


    /// <summary>Refuses a model whose rotation differs from the one this adapter was trained on.</summary>
    public void CheckModel(ModelConfig model, string where)
    {
        var rec = RotationRecord.FromConfig(model);
        if (rec is null)
            throw new InvalidOperationException($"{where}: this RoLoRA adapter was trained on a rotated model (seed {RotationSeed}), but the model is not rotated. Rotate it first: reslora quantize --model DIR --rotate --seed {RotationSeed} --wbits 16 --abits 16 --out ROTATED.");
        if (RotationSignsHash.Length > 0 && rec.SignsHash != RotationSignsHash)
            throw new InvalidOperationException($"{where}: the model was rotated with seed {rec.Seed} (signs {rec.SignsHash}), the adapter with seed {RotationSeed} (signs {RotationSignsHash}); a different R1 breaks the model. Use the rotated base the adapter was trained on.");
    }
}

/// <summary>RoLoRA's layers are LoRA's; the builder checks the model's rotation when the model is built.</summary>
internal sealed class RoLoraLayerBuilder(RoLoraConfig config, TorchSharp.torch.Generator? generator) : IAdapterLayerBuilder
{
    private readonly LoraLayerBuilder _inner = new(config.AsLora(), generator);

    public string Method => "rolora";

    public TorchSharp.torch.nn.Module<TorchSharp.torch.Tensor, TorchSharp.torch.Tensor> Build(AdapterTarget target, TorchSharp.torch.ScalarType dtype, TorchSharp.torch.Device device) =>
        _inner.Build(target, dtype, device);
}
