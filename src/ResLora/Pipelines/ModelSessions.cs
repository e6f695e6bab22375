using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Quantization;

namespace ResLora.Pipelines;

/// <summary>Loading a model folder the way every verb does: with what the folder records applied, with or without an adapter.</summary>
public static class ModelSessions
{
    /// <summary>
    /// A model folder, built through <paramref name="factory"/> (plain when null), with the transforms its config records
    /// (RoLoRA's online Hadamard, a quantized folder's activation quantizers) applied. With <c>--base-bits</c> the decoder
    /// linears' base weights are packed as each is loaded (<see cref="PackedFormats"/>).
    /// </summary>
    public static CausalLM LoadBase(string modelDir, RuntimeOptions runtime, ILinearFactory? factory = null) =>
        ModelLoader.Load(modelDir, runtime, WithPackedBase(factory, runtime), RecordedTransforms.Recorded.Prepend(RoLoraRotation.OnlineTransform));

    /// <summary>The factory that builds the runtime's base storage: <paramref name="factory"/> itself for a full-precision base.</summary>
    private static ILinearFactory? WithPackedBase(ILinearFactory? factory, RuntimeOptions runtime)
    {
        if (PackedFormats.For(runtime.BaseStorage) is not { } format) return factory;
        switch (factory)
        {
            case null:
                return new PlainLinearFactory(format);
            case AdapterPlan plan:
                plan.PackedBase = format;
                return plan;
            default:
                throw new UserInputException($"--base-bits {runtime.BaseBits}: this model is built by a {factory.GetType().Name}, which cannot pack base weights; run without --base-bits.");
        }
    }

    /// <summary>Reads an adapter folder's config (warnings through <paramref name="warn"/>), naming the folder when it is not one.</summary>
    public static AdapterConfigBase ReadAdapterConfig(string adapterDir, Action<string>? warn = null)
    {
        string cfgPath = Path.Combine(adapterDir, AdapterFolder.ConfigFileName);
        if (!Directory.Exists(adapterDir)) throw new DirectoryNotFoundException($"--adapter {adapterDir}: no such folder; pass a folder with {AdapterFolder.ConfigFileName} and {AdapterFolder.WeightsFileName}.");
        if (!File.Exists(cfgPath) && File.Exists(Path.Combine(adapterDir, ModelFolder.ConfigFile)))
            throw new UserInputException($"--adapter {adapterDir} holds a model ({ModelFolder.ConfigFile} and its weights, as reslora train --method full writes), not an adapter: there is nothing to merge or apply. Pass it as --model instead.");
        if (!File.Exists(cfgPath)) throw new FileNotFoundException($"{cfgPath}: not found; an adapter folder needs {AdapterFolder.ConfigFileName} and {AdapterFolder.WeightsFileName}.", cfgPath);
        var (config, warnings) = AdapterConfigJson.Parse(BoundedFile.ReadAllText(cfgPath, BoundedFile.ConfigLimit, "adapter config"), cfgPath);
        foreach (var w in warnings) warn?.Invoke(w);
        return config;
    }

    /// <summary>
    /// Builds the model with the adapter's plan (read from adapter_config.json, or <paramref name="config"/> when given,
    /// e.g. with another merge kind) and loads the adapter tensors. The adapter's method may refuse the base (RoLoRA).
    /// </summary>
    public static CausalLM LoadWithAdapter(string modelDir, string adapterDir, RuntimeOptions runtime, Action<string>? warn = null, AdapterConfigBase? config = null) =>
        LoadWithAdapter(modelDir, adapterDir, runtime, out _, warn, config);

    /// <summary>As <see cref="LoadWithAdapter(string, string, RuntimeOptions, Action{string}?, AdapterConfigBase?)"/>, also giving the plan (its layer builder holds method state, e.g. ResLoRA's chains).</summary>
    public static CausalLM LoadWithAdapter(string modelDir, string adapterDir, RuntimeOptions runtime, out AdapterPlan plan, Action<string>? warn = null, AdapterConfigBase? config = null)
    {
        config ??= ReadAdapterConfig(adapterDir, warn);
        plan = new AdapterPlan(config);
        var p = plan;
        return WithAdapters(LoadBase(modelDir, runtime, plan), model =>
        {
            AdapterMethods.For(config).CheckBase(config, model.Config, adapterDir);
            p.EnsureAllPatternsMatched();
            if (config is LowRankConfigBase { InitLoraWeights.MutatesBase: true } lr)
            {
                // As PEFT's from_pretrained: the init runs on the base the folder is loaded on, then A and B are loaded.
                AdapterModel.OnBaseWeightsLoaded(model);
                warn?.Invoke($"{adapterDir}: init_lora_weights = {lr.InitLoraWeights}: the init ran on this base (its residual W − s·B₀A₀ kept) before the adapter's A and B were loaded, as PEFT does; adapters saved by reslora train say true and apply to the original base.");
            }
            AdapterFolder.LoadInto(adapterDir, model);
        });
    }

    /// <summary>
    /// Finishes a model built with adapter layers: <paramref name="fill"/> puts the adapter state in, then only adapter
    /// parameters stay trainable and the model is in eval mode. On any failure the model is disposed.
    /// </summary>
    public static CausalLM WithAdapters(CausalLM model, Action<CausalLM> fill)
    {
        try
        {
            fill(model);
            AdapterModel.FreezeAllButAdapters(model);
            model.eval();
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>The base alone, or the base with the adapter in <paramref name="adapterDir"/> when given.</summary>
    public static CausalLM Load(string modelDir, string? adapterDir, RuntimeOptions runtime, Action<string>? warn = null) =>
        adapterDir is null ? LoadBase(modelDir, runtime) : LoadWithAdapter(modelDir, adapterDir, runtime, warn);
}
