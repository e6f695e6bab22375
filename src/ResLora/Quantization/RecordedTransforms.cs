using ResLora.Models;

namespace ResLora.Quantization;

/// <summary>
/// What a folder written by this library records in its config.json and the loader must re-apply to the live model:
/// the activation quantizers of a <c>reslora quantize</c> output. Pass <see cref="Recorded"/> to
/// <see cref="ModelLoader.Load"/> whenever the folder may be one; a rotated folder's online Hadamard is a transform
/// RoLoRA's folder provides (Adapters), passed beside it.
/// </summary>
public sealed class RecordedTransforms : IModelLoadTransform
{
    public static readonly IReadOnlyList<IModelLoadTransform> Recorded = new[] { new RecordedTransforms() };

    private RecordedTransforms() { }

    public void Apply(CausalLM model)
    {
        ModelQuantizer.ApplyRecorded(model);
    }
}
