namespace ResLora.Adapters;

/// <summary>LoRA's options: <c>use_dora</c> switches the layers to DoRA (weight-decomposed LoRA).</summary>
public sealed record LoraOptions(bool UseDora = false) : MethodOptions;

/// <summary>LoRA (peft-format.md §3.1) and its variant DoRA (§3.2), both saved as PEFT's LORA.</summary>
public sealed class LoraMethod() : AdapterMethod("lora", "LORA", typeof(LoraConfig),
    "LoRA: y = W₀x + (α/r)·B A x (Hu et al. 2021); variant dora: weight-decomposed LoRA (Liu et al. 2024).", "lora_")
{
    public override MethodOptions DefaultOptions => new LoraOptions();

    public override IReadOnlyList<MethodVariant> Variants => new[]
    {
        new MethodVariant("dora", new LoraOptions(UseDora: true), "DoRA: a learned magnitude per output row times the LoRA-updated direction."),
    };

    public override MethodSetup Build(MethodSpec spec, MethodOptions? options) =>
        new(WithCommon(new LoraConfig { UseDora = OptionsOr(options, new LoraOptions()).UseDora }, spec));

    public override IReadOnlyList<Type> LayerTypes(AdapterConfigBase config) =>
        new[] { Checked<LoraConfig>(config).UseDora ? typeof(DoraLinear) : typeof(LoraLinear) };

    public override IAdapterLayerBuilder CreateBuilder(AdapterConfigBase config, Generator? generator) =>
        new LoraLayerBuilder(Checked<LoraConfig>(config), generator);

    /// <summary>DoRA's magnitude has no place in a LoRA: it is folded into ΔW, which ties the export to this base weight.</summary>
    public override IEnumerable<string> LoraExportLayerNotes(IReadOnlyDictionary<string, IAdapter> adapters)
    {
        int dora = adapters.Values.Count(a => a is DoraLinear);
        if (dora > 0)
            yield return $"DoRA: the magnitude vector is folded into ΔW ((m/‖W₀+s·BA‖)·(W₀+s·BA) − W₀ per row) in {dora} module(s); the export is tied to this base weight.";
    }
}
