using ResLora.Models;
using ResLora.Quantization;

namespace ResLora.Adapters;

/// <summary>RoLoRA's option: the seed of R1's random signs.</summary>
public sealed record RoLoraOptions(long RotationSeed = 0) : MethodOptions;

/// <summary>
/// RoLoRA (docs/specs/rolora.md §4): rotate the base once (norm fusion, R1 with the seed, R4) into OUT/rotated-base,
/// then train LoRA there. Loading the adapter on a base rotated otherwise, or not at all, is refused (§9).
/// </summary>
public sealed class RoLoraMethod() : AdapterMethod("rolora", "ROLORA", typeof(RoLoraConfig),
    "RoLoRA: LoRA on a rotated base (Hadamard rotations remove activation outliers) for W4A4 quantization (Huang et al. 2024).", "lora_")
{
    public const string RotatedBaseFolder = "rotated-base";

    public override MethodOptions DefaultOptions => new RoLoraOptions();

    public override IReadOnlyList<MethodFlag> Flags => new MethodFlag[]
    {
        new MethodFlag<RoLoraOptions, long>("--rotation-seed", "RoLoRA: seed of R1's random signs (default 0).", (o, v) => o with { RotationSeed = v }),
    };

    /// <summary>RoLoRA's claim is about quantized evaluation, which the demo does not run; the bench times it.</summary>
    public override IEnumerable<MethodContender> Contenders(int rank)
    {
        yield return new MethodContender(Name, new MethodSpec { Method = Name, Rank = rank }, InDemo: false);
    }

    public override MethodSetup Build(MethodSpec spec, MethodOptions? options)
    {
        long seed = OptionsOr(options, new RoLoraOptions()).RotationSeed;
        var cfg = WithCommon(new RoLoraConfig { RotationSeed = seed }, spec);
        return new MethodSetup(cfg)
        {
            PrepareBase = (modelDir, outDir) =>
            {
                string rotated = Path.Combine(outDir, RotatedBaseFolder);
                if (!File.Exists(Path.Combine(rotated, ModelFolder.ConfigFile))) RoLoraRotation.RotateFolder(modelDir, rotated, seed);
                var rec = RotationRecord.FromConfig(ModelFolder.LoadConfig(rotated))!;
                return (rotated, cfg with { RotationSignsHash = rec.SignsHash, BaseModelNameOrPath = Path.GetFullPath(rotated) });
            },
        };
    }

    public override IReadOnlyList<Type> LayerTypes(AdapterConfigBase config) => new[] { typeof(LoraLinear) };

    public override IAdapterLayerBuilder CreateBuilder(AdapterConfigBase config, Generator? generator) =>
        new LoraLayerBuilder(Checked<RoLoraConfig>(config).AsLora(), generator);

    /// <summary>Refuses a model whose rotation differs from the one this adapter was trained on.</summary>
    public override void CheckBase(AdapterConfigBase config, ModelConfig model, string where)
    {
        var c = Checked<RoLoraConfig>(config);
        var rec = RotationRecord.FromConfig(model);
        if (rec is null)
            throw new UserInputException($"{where}: this RoLoRA adapter was trained on a rotated model (seed {c.RotationSeed}), but the model is not rotated. Rotate it first: reslora quantize --model DIR --rotate --seed {c.RotationSeed} --wbits 16 --abits 16 --out ROTATED.");
        if (c.RotationSignsHash.Length > 0 && rec.SignsHash != c.RotationSignsHash)
            throw new UserInputException($"{where}: the model was rotated with seed {rec.Seed} (signs {rec.SignsHash}), the adapter with seed {c.RotationSeed} (signs {c.RotationSignsHash}); a different R1 breaks the model. Use the rotated base the adapter was trained on.");
    }

    /// <summary>As a LoRA the adapter would break any base but its rotated one: the merged model is exported instead.</summary>
    public override void CheckLoraExport(AdapterConfigBase config, string adapterDir)
    {
        if (config is RoLoraConfig ro)
            throw new UserInputException($"{adapterDir}: a RoLoRA adapter is valid only on the base rotated with seed {ro.RotationSeed}, so as a LoRA it would break any other base. Export the merged model instead: reslora merge --model ROTATED_BASE --adapter {adapterDir} --out DIR (or reslora quantize ... --wbits 16 --abits 16).");
    }

    public override IEnumerable<string> LoraExportNotes(AdapterConfigBase config, bool viaDeltaWeight)
    {
        if (config is RoLoraConfig ro)
            yield return $"RoLoRA: ΔW belongs to the rotated base (seed {ro.RotationSeed}); load this LoRA on that rotated model (base_model_name_or_path), not on the original one.";
    }
}
