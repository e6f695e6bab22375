using ResLora.Adapters;

namespace ResLora.Training.Optimization;

/// <summary>One of LoRA+'s parameter groups: its parameters (full module paths), its lr as a multiple of the base lr, its decay.</summary>
public sealed record LoraPlusGroup(string Name, IReadOnlyList<(string Name, Parameter Parameter)> Parameters, double LrRatio, bool Decay);

/// <summary>
/// LoRA+ (Hayou, Ghosh &amp; Yu 2024, "LoRA+: Efficient Low Rank Adaptation of Large Models", §4) as PEFT groups it
/// (<c>peft/optimizers/loraplus.py</c>, <c>create_loraplus_optimizer</c>), in PEFT's order:
/// <list type="number">
/// <item><c>groupA</c>: every other trainable parameter (lora_A, a 2-D modules_to_save weight), lr η, weight decay;</item>
/// <item><c>embedding</c>: parameters of an embedding module, lr <c>loraplus_lr_embedding</c> (1e-6), weight decay;</item>
/// <item><c>groupB</c>: lora_B and 1-D parameters (DoRA's magnitude) outside norms and biases, lr λη, weight decay;</item>
/// <item><c>groupB_no_decay</c>: lora_B or 1-D parameters that are biases or belong to a norm, lr λη, no weight decay.</item>
/// </list>
/// Transformers' decay rule (<c>get_parameter_names(model, ALL_LAYERNORM_LAYERS)</c> minus names with "bias") is read as:
/// no decay for a parameter whose name has "bias" or whose module is a norm (LayerNorm, RMSNorm: type names ending in
/// "Norm"). PEFT tests <c>isinstance(attrgetter(name)(model), Embedding)</c> on the parameter itself, so its embedding
/// group stays empty; this class puts in it what the check means: the parameters of an <c>nn.Embedding</c>.
/// </summary>
public static class LoraPlusGroups
{
    /// <summary>
    /// Splits <paramref name="trainable"/> (parameters of <paramref name="model"/>) into the four groups; B's groups get
    /// <paramref name="ratio"/> × the base lr, the embedding group <paramref name="embeddingRatio"/> × it. Groups may be empty.
    /// </summary>
    public static IReadOnlyList<LoraPlusGroup> Split(nn.Module model, IReadOnlyList<Parameter> trainable, double ratio, double embeddingRatio)
    {
        var owners = Owners(model);
        var loraB = AdapterModel.FindAdapters(model).Select(a => a.Adapter).OfType<ILowRankPair>().Select(p => p.LoraB.Handle).ToHashSet();
        var a = new List<(string, Parameter)>();
        var emb = new List<(string, Parameter)>();
        var b = new List<(string, Parameter)>();
        var bNoDecay = new List<(string, Parameter)>();
        foreach (var p in trainable)
        {
            var (name, owner) = owners.TryGetValue(p.Handle, out var o) ? o : ("", null);
            if (owner is TorchSharp.Modules.Embedding) emb.Add((name, p));
            else if (name.Contains("lora_B", StringComparison.Ordinal) || loraB.Contains(p.Handle) || p.dim() == 1)
            {
                bool decay = !name.Contains("bias", StringComparison.Ordinal) && !IsNorm(owner);
                (decay ? b : bNoDecay).Add((name, p));
            }
            else a.Add((name, p));
        }
        return new[]
        {
            new LoraPlusGroup("groupA", a, 1.0, true),
            new LoraPlusGroup("embedding", emb, embeddingRatio, true),
            new LoraPlusGroup("groupB", b, ratio, true),
            new LoraPlusGroup("groupB_no_decay", bNoDecay, ratio, false),
        };
    }

    /// <summary>
    /// AdamW over the groups (the options' lr × each group's ratio; their weight decay where the group decays, else 0);
    /// TorchSharp keeps the groups in this order, which <see cref="Trainer"/>'s schedule relies on.
    /// </summary>
    public static optim.Optimizer AdamW(IReadOnlyList<LoraPlusGroup> groups, TrainOptions o) =>
        torch.optim.AdamW(groups.Select(g => new TorchSharp.Modules.AdamW.ParamGroup(g.Parameters.Select(x => x.Parameter),
            o.LearningRate * g.LrRatio, o.Beta1, o.Beta2, o.AdamEps, g.Decay ? o.WeightDecay : 0.0)), o.LearningRate, o.Beta1, o.Beta2, o.AdamEps, o.WeightDecay);

    private static bool IsNorm(nn.Module? m) => m is not null && m.GetType().Name.EndsWith("Norm", StringComparison.Ordinal);

    /// <summary>Each parameter's full dotted name and the module that holds it directly, by native handle.</summary>
    private static Dictionary<IntPtr, (string Name, nn.Module Owner)> Owners(nn.Module model)
    {
        var d = new Dictionary<IntPtr, (string, nn.Module)>();
        foreach (var (prefix, m) in model.named_modules().Prepend(("", model)))
            foreach (var (n, p) in m.named_parameters(recurse: false))
                d.TryAdd(p.Handle, (prefix.Length == 0 ? n : prefix + "." + n, m));
        return d;
    }
}
