namespace ResLora.Adapters;

/// <summary>
/// Switches every adapter layer off for the forwards run on the calling thread inside a scope, so that a model with
/// adapters computes its base model's output (PEFT's <c>disable_adapter()</c> context): the reference model of DPO and
/// IPO without a second copy of the base. Each layer's forward returns its frozen projection alone (W₀x + b, bit for bit
/// what the base model computes) while <see cref="IsOff"/> holds; nothing is changed or copied, so leaving the scope
/// restores the adapted model exactly. Merged adapters cannot be switched off (their ΔW is inside W).
/// </summary>
/// <remarks>
/// The switch is per thread, as a forward runs on the thread that calls it: a server's other threads keep their
/// adapters. Scopes nest.
/// </remarks>
public static class AdapterSwitch
{
    [ThreadStatic] private static int t_depth;

    /// <summary>Whether adapter layers run as their base projection on this thread now.</summary>
    public static bool IsOff => t_depth > 0;

    /// <summary>
    /// Switches adapters off on this thread until the returned scope is disposed. <paramref name="model"/> is checked
    /// first: an adapter in it that is merged would still apply its ΔW, so that is an error.
    /// </summary>
    public static IDisposable Off(nn.Module model)
    {
        foreach (var (name, a) in AdapterModel.FindAdapters(model))
            if (a.IsMerged)
                throw new InvalidOperationException($"adapter '{name}' is merged into its base weight, so switching adapters off would still apply it; unmerge first.");
        t_depth++;
        return new Scope();
    }

    private sealed class Scope : IDisposable
    {
        private bool _done;

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            t_depth--;
        }
    }
}
