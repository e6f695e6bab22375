using System.Text.Json.Serialization;
using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>PEFT's <c>LoraConfig</c> (peft-format.md §2.3); <c>use_dora</c> switches the layer to DoRA (§3.2).</summary>
public sealed record LoraConfig : LowRankConfigBase
{
    [JsonPropertyName("peft_type")] public override string PeftType => "LORA";

    [JsonPropertyName("use_dora")] public bool UseDora { get; init; }

    [JsonIgnore] public override string Method => UseDora ? "dora" : "lora";

    /// <summary>LoRA and DoRA layers are a pair A, B over the base: PiSSA, OLoRA and LoftQ apply (PEFT runs dora_init after them).</summary>
    [JsonIgnore] protected override bool InitFromBaseSupported => true;
}

/// <summary>
/// Options shared by LoRA and DoRA layers, resolved from a config for one module; <c>LoftqIter</c> is LoftQ's number of
/// alternating steps (<c>--loftq-iter</c>, PEFT's <c>loftq_config.loftq_iter</c>).
/// </summary>
public sealed record LoraLayerOptions(int R, double Alpha, double Dropout = 0, bool UseRslora = false, LoraInit Init = default, int LoftqIter = 1)
{
    /// <summary>§3.1: s = α/r, or α/√r with rsLoRA.</summary>
    public double Scaling => UseRslora ? Alpha / Math.Sqrt(R) : Alpha / R;
}

/// <summary>Builds <see cref="LoraLinear"/> or <see cref="DoraLinear"/> for each targeted projection.</summary>
public sealed class LoraLayerBuilder : IAdapterLayerBuilder
{
    private readonly LoraConfig _config;
    private readonly Generator? _generator;

    public LoraLayerBuilder(LoraConfig config, Generator? generator = null)
    {
        _config = config;
        _generator = generator;
    }

    public nn.Module<Tensor, Tensor> Build(AdapterTarget target, ScalarType dtype, Device device)
    {
        var o = new LoraLayerOptions(target.R, target.Alpha, _config.LoraDropout, _config.UseRslora, _config.InitLoraWeights, _config.LoftqIter);
        return _config.UseDora
            ? new DoraLinear(target.Spec, o, dtype, device, _generator)
            : new LoraLinear(target.Spec, o, dtype, device, _generator);
    }
}
