namespace ResLora.Adapters;

/// <summary>The capability objects found in a model (see <see cref="AdapterModel.CollectCapabilities"/>).</summary>
public sealed record AdapterCapabilities(
    IReadOnlyList<IExtraLossTerm> ExtraLossTerms,
    IReadOnlyList<IOptimizerStepHook> StepHooks);

/// <summary>Helpers over a module tree that contains adapter layers.</summary>
public static class AdapterModel
{
    /// <summary>Every adapter in the tree, with its module-tree name, in registration order.</summary>
    public static IReadOnlyList<(string Name, IAdapter Adapter)> FindAdapters(nn.Module module) =>
        Tree(module)
            .Where(m => m.Module is IAdapter)
            .Select(m => (m.Name, (IAdapter)m.Module))
            .ToList();

    /// <summary>The root (named "") followed by TorchSharp's named_modules(), which leaves the root out; each module once.</summary>
    private static IEnumerable<(string Name, nn.Module Module)> Tree(nn.Module root)
    {
        var seen = new HashSet<nn.Module>(ReferenceEqualityComparer.Instance);
        foreach (var (name, m) in new[] { ("", root) }.Concat(root.named_modules()))
            if (seen.Add(m)) yield return (name, m);
    }

    /// <summary>Adapters keyed by their Hugging Face module path (<see cref="IAdapter.Spec"/>.Name), as the folder writer wants.</summary>
    public static IReadOnlyDictionary<string, IAdapter> ByModulePath(nn.Module module)
    {
        var d = new Dictionary<string, IAdapter>(StringComparer.Ordinal);
        foreach (var (name, a) in FindAdapters(module))
            if (!d.TryAdd(a.Spec.Name, a))
                throw new InvalidOperationException($"two adapters share the module path '{a.Spec.Name}' (second at '{name}'); LinearSpec names must be unique.");
        return d;
    }

    /// <summary>Sets requires_grad = false on every parameter, then true on each adapter's trainable parameters. Returns the trainable count.</summary>
    public static long FreezeAllButAdapters(nn.Module module)
    {
        foreach (var p in module.parameters()) p.requires_grad = false;
        foreach (var (_, a) in FindAdapters(module))
            foreach (var p in a.TrainableParameters) p.requires_grad = true;
        return CountParameters(module).Trainable;
    }

    /// <summary>(trainable, total) element counts; shared parameters are counted once, a packed base weight (--base-bits) by its (out, in) elements.</summary>
    public static (long Trainable, long Total) CountParameters(nn.Module module)
    {
        long trainable = 0, total = 0;
        foreach (var (_, m) in Tree(module))
            if (m is Models.PackedWeight pw) total += pw.OutFeatures * pw.InFeatures;
        var seen = new HashSet<IntPtr>();
        foreach (var p in module.parameters())
        {
            if (!seen.Add(p.Handle)) continue;
            total += p.numel();
            if (p.requires_grad) trainable += p.numel();
        }
        return (trainable, total);
    }

    /// <summary>Merges every adapter. Throws before changing anything if one is already merged.</summary>
    public static int MergeAll(nn.Module module)
    {
        var all = FindAdapters(module);
        if (all.FirstOrDefault(a => a.Adapter.IsMerged) is { Adapter: not null } m)
            throw new InvalidOperationException($"adapter '{m.Name}' is already merged; call UnmergeAll() first.");
        foreach (var (_, a) in all) a.Merge();
        return all.Count;
    }

    /// <summary>Unmerges every adapter. Throws before changing anything if one is not merged.</summary>
    public static int UnmergeAll(nn.Module module)
    {
        var all = FindAdapters(module);
        if (all.FirstOrDefault(a => !a.Adapter.IsMerged) is { Adapter: not null } m)
            throw new InvalidOperationException($"adapter '{m.Name}' is not merged; nothing to unmerge.");
        foreach (var (_, a) in all) a.Unmerge();
        return all.Count;
    }

    /// <summary>
    /// Re-initialises base-dependent adapter state (DoRA magnitudes) after the base checkpoint has been loaded into a
    /// freshly built model. Do not call after loading a saved adapter: it would overwrite the loaded magnitudes.
    /// </summary>
    public static int OnBaseWeightsLoaded(nn.Module module)
    {
        int n = 0;
        foreach (var (_, m) in Tree(module))
            if (m is IBaseWeightDependent d) { d.OnBaseWeightsLoaded(); n++; }
        return n;
    }

    /// <summary>
    /// Modules (and <paramref name="extra"/> objects, e.g. an <see cref="AdapterPlan"/>'s builder) implementing
    /// <see cref="IExtraLossTerm"/> or <see cref="IOptimizerStepHook"/>; each object once.
    /// </summary>
    public static AdapterCapabilities CollectCapabilities(nn.Module module, params object?[] extra)
    {
        var objs = new List<object>();
        var seen = new HashSet<object>(ReferenceEqualityComparer.Instance);
        foreach (var o in Tree(module).Select(m => (object)m.Module).Concat(extra.Where(e => e is not null).Select(e => e!)))
            if (seen.Add(o)) objs.Add(o);
        return new AdapterCapabilities(
            objs.OfType<IExtraLossTerm>().ToList(),
            objs.OfType<IOptimizerStepHook>().ToList());
    }
}
