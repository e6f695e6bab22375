using ResLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Infrastructure;

/// <summary>Tiny LLaMA configurations and models with random weights, built in the test (nothing is downloaded).</summary>
internal static class TinyModels
{
    public static ModelConfig Config(bool tied = false, int kvHeads = 2, bool qkvBias = false, RopeScaling? rope = null, int vocab = 64) => new()
    {
        ModelType = qkvBias ? "qwen2" : "llama",
        VocabSize = vocab,
        HiddenSize = 32,
        IntermediateSize = 48,
        NumHiddenLayers = 2,
        NumAttentionHeads = 4,
        NumKeyValueHeadsRaw = kvHeads,
        RmsNormEps = 1e-5,
        RopeTheta = 10000,
        RopeScaling = rope,
        MaxPositionEmbeddings = 128,
        TieWordEmbeddings = tied,
        BosTokenId = 1,
        EosTokenIds = new[] { 2 },
    };

    /// <summary>A model with random (non-trivial) weights: norms and biases are randomised too, so they are checked.</summary>
    public static CausalLM Build(ModelConfig config, long seed = 1, ILinearFactory? factory = null, ScalarType dtype = ScalarType.Float32)
    {
        var model = ModelFamilies.CreateCausalLM(config, factory, dtype, torch.CPU);
        model.InitializeWeights(seed, std: 0.2);
        using var noGrad = torch.no_grad();
        using var gen = new torch.Generator((ulong)seed + 1000);
        foreach (var (name, p) in model.BaseParameters())
        {
            if (name.EndsWith("norm.weight", StringComparison.Ordinal) || name.EndsWith(".bias", StringComparison.Ordinal))
            {
                using var r = torch.rand(p.shape, generator: gen) * 0.5 + (name.EndsWith(".bias", StringComparison.Ordinal) ? -0.25 : 0.75);
                p.copy_(r.to(p.dtype));
            }
        }
        return model;
    }

    public static Tensor RandomIds(int batch, int seq, int vocab, long seed)
    {
        using var gen = new torch.Generator((ulong)seed);
        return torch.randint(3, vocab, new long[] { batch, seq }, generator: gen, dtype: ScalarType.Int64);
    }
}
