using ResLora.IO;

namespace ResLora.Models;

/// <summary>
/// A transform applied to a freshly loaded model before it is handed out (RoLoRA's online Hadamard on a rotated
/// folder, the activation quantizers of a quantized folder). The caller passes them in: the model layer knows none.
/// </summary>
public interface IModelLoadTransform
{
    /// <summary>Applies itself when the model's config asks for it; otherwise does nothing.</summary>
    void Apply(CausalLM model);
}

/// <summary>Builds a model from a Hugging Face folder, checks the weights against the config, loads them.</summary>
public static class ModelLoader
{
    /// <summary>
    /// Loads <paramref name="modelDir"/> on the runtime's device and dtype, building every projection through
    /// <paramref name="factory"/> (the adapter plan; plain linears when null), then runs <paramref name="transforms"/> in
    /// order. Base weights are frozen.
    /// </summary>
    public static CausalLM Load(string modelDir, RuntimeOptions runtime, ILinearFactory? factory = null, IEnumerable<IModelLoadTransform>? transforms = null)
    {
        runtime.Apply();
        // config.json is checked against the stored shapes, and on the CPU the weights against the memory left, before
        // anything is allocated: a wrong or missing size, or a model too big for this machine, must not cost a model-sized
        // allocation (or a native crash) before the error.
        var (config, ckpt, expected) = ModelFolder.OpenChecked(modelDir, runtime.TorchDevice.type == DeviceType.CPU ? runtime.ScalarType : null);
        using var _ = ckpt;
        // Building draws a float32 init per weight; without this, glibc keeps those blocks as free heap (see NativeHeap).
        using var heap = NativeHeap.ReturnLargeBlocks();
        var model = ModelFamilies.CreateCausalLM(config, factory, runtime.ScalarType, runtime.TorchDevice);
        try
        {
            model.LoadWeights(ckpt);
            foreach (var t in transforms ?? Array.Empty<IModelLoadTransform>()) t.Apply(model);
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
