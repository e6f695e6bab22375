namespace ResLora.Adapters;

/// <summary>
/// Saving an adapter whose init changed the base (PiSSA, OLoRA, LoftQ) so that it applies to the ORIGINAL base, as PEFT's
/// <c>save_pretrained(path_initial_model_for_weight_conversion=...)</c> does (peft_model.py <c>save_mutated_as_lora</c>,
/// lora/model.py <c>subtract_mutated_init</c>): the trained base is W_res = W − s·B₀A₀, so
/// W_res + s·BA = W + s·(BA − B₀A₀) = W + s·[B, −B₀]·[A; A₀], a LoRA of rank 2r with A' = [A; A₀] (2r, in) and
/// B' = [B, −B₀] (out, 2r). The config says r' = 2r and α' = 2α (α·√2 with rsLoRA) so that s' = s, doubles
/// rank_pattern and alpha_pattern, and writes init_lora_weights = true (what a loader must do with it: nothing).
/// PEFT refuses the conversion with rsLoRA and a rank or alpha pattern (s' ≠ s for the patterned modules); so does
/// <see cref="LowRankConfigBase.Validate"/>, before training.
/// </summary>
public static class MutatedInitConversion
{
    /// <summary>Whether some adapter of <paramref name="model"/> was initialised from its base weight (its base holds a residual).</summary>
    public static bool Applies(nn.Module model) =>
        AdapterModel.FindAdapters(model).Any(a => a.Adapter is LowRankLinear { HasMutatedInit: true });

    /// <summary>The config of the converted adapter (see the class summary); a config without a base-mutating init is returned as it is.</summary>
    public static AdapterConfigBase ConvertConfig(AdapterConfigBase config)
    {
        if (config is not LowRankConfigBase c || !c.InitLoraWeights.MutatesBase) return config;
        if (c.UseRslora && (c.RankPattern.Count > 0 || c.AlphaPattern.Count > 0))
            throw new UserInputException($"init_lora_weights = {c.InitLoraWeights} with use_rslora and rank_pattern/alpha_pattern cannot be converted to a LoRA of the original base (PEFT refuses it too); drop --rslora or the patterns.");
        return c with
        {
            R = 2 * c.R,
            LoraAlpha = c.UseRslora ? c.LoraAlpha * Math.Sqrt(2) : 2 * c.LoraAlpha,
            RankPattern = c.RankPattern.ToDictionary(kv => kv.Key, kv => 2 * kv.Value),
            AlphaPattern = c.AlphaPattern.ToDictionary(kv => kv.Key, kv => 2 * kv.Value),
            InitLoraWeights = LoraInit.Default,
        };
    }

    /// <summary>An adapter's tensors for the original base: the rank-2r pair of a layer with a base-mutating init, else its own state.</summary>
    public static IReadOnlyDictionary<string, Tensor> StateForOriginalBase(IAdapter adapter) =>
        adapter is LowRankLinear { HasMutatedInit: true } l ? l.StateForOriginalBase() : adapter.GetAdapterState();

    /// <summary>
    /// Saves the adapters of <paramref name="model"/> (built from <paramref name="config"/>) as a plain LoRA of the original
    /// base when their init changed the base, else as they are; <paramref name="savedModules"/> as for <see cref="AdapterFolder.Save(string, AdapterConfigBase, IReadOnlyDictionary{string, IAdapter}, IReadOnlyDictionary{string, Tensor}?, Func{IAdapter, IReadOnlyDictionary{string, Tensor}}?)"/>.
    /// </summary>
    public static void Save(string dir, AdapterConfigBase config, nn.Module model, IReadOnlyDictionary<string, Tensor>? savedModules = null)
    {
        savedModules ??= config.ModulesToSave is { Count: > 0 } ? AdapterFolder.SavedModuleWeights(config, model) : null;
        var adapters = AdapterModel.ByModulePath(model);
        if (!Applies(model))
        {
            AdapterFolder.Save(dir, config, adapters, savedModules);
            return;
        }
        using var scope = torch.NewDisposeScope();
        AdapterFolder.Save(dir, ConvertConfig(config), adapters, savedModules, StateForOriginalBase);
    }
}
