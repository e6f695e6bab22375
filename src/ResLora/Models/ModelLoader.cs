using ResLora.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Models;

/// <summary>Takes a Hugging Face model folder to a ready <see cref="LlamaForCausalLM"/>: config, weights, frozen base.</summary>
public static class ModelLoader
{
    /// <summary>
    /// Loads config.json and the safetensors weights of <paramref name="modelDir"/>. Every projection is built through
    /// <paramref name="factory"/> (the adapter plan; plain linears when null). Base weights are frozen.
    /// </summary>
    public static LlamaForCausalLM Load(string modelDir, RuntimeOptions runtime, ILinearFactory? factory = null)
    {
        runtime.Apply();
        using var ckpt = HfCheckpoint.Open(modelDir);
        var config = ckpt.Config;
        var model = new LlamaForCausalLM(config, factory, runtime.ScalarType, runtime.TorchDevice);
        try
        {
            var expected = model.ExpectedWeights();
            ckpt.ValidateAgainst(expected);
            model.LoadWeights(name => ckpt.Load(name));
            // A RoLoRA-rotated model (config.json reslora_rotation) needs the online Hadamard before down_proj.
            Quantization.RoLoraRotation.ApplyOnline(model);
            // A folder written by `reslora quantize` evaluates with its activation quantizers.
            Quantization.ModelQuantizer.ApplyRecorded(model);
            // Freeze exactly the base weights (Hugging Face names); adapter parameters keep requires_grad.
            foreach (var (name, p) in model.named_parameters())
                if (expected.ContainsKey(name)) p.requires_grad = false;
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }
}
