namespace ResLora.Adapters;

/// <summary>LoHa (peft-format.md §3.4): ΔW as the Hadamard product of two low-rank products.</summary>
public sealed class LoHaMethod() : AdapterMethod("loha", "LOHA", typeof(LoHaConfig),
    "LoHa: ΔW = (W1a W1b) ⊙ (W2a W2b), LyCORIS's Hadamard-product adapter.", "hada_")
{
    public override MethodSetup Build(MethodSpec spec, MethodOptions? options) =>
        new(new LoHaConfig { R = spec.Rank, Alpha = spec.Alpha, ModuleDropout = spec.Dropout, TargetModules = spec.Targets, ExcludeModules = spec.Exclude });

    public override IReadOnlyList<Type> LayerTypes(AdapterConfigBase config) => new[] { typeof(LoHaLinear) };

    public override IAdapterLayerBuilder CreateBuilder(AdapterConfigBase config, Generator? generator) =>
        new LoHaLayerBuilder(Checked<LoHaConfig>(config), generator);
}

/// <summary>LoKr (peft-format.md §3.5): ΔW as a Kronecker product of a small and a low-rank factor.</summary>
public sealed class LoKrMethod() : AdapterMethod("lokr", "LOKR", typeof(LoKrConfig),
    "LoKr: ΔW = W1 ⊗ (W2a W2b), LyCORIS's Kronecker-product adapter.", "lokr_")
{
    public override MethodSetup Build(MethodSpec spec, MethodOptions? options) =>
        new(new LoKrConfig { R = spec.Rank, Alpha = spec.Alpha, ModuleDropout = spec.Dropout, TargetModules = spec.Targets, ExcludeModules = spec.Exclude });

    public override IReadOnlyList<Type> LayerTypes(AdapterConfigBase config) => new[] { typeof(LoKrLinear) };

    public override IAdapterLayerBuilder CreateBuilder(AdapterConfigBase config, Generator? generator) =>
        new LoKrLayerBuilder(Checked<LoKrConfig>(config), generator);
}
