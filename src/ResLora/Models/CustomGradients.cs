namespace ResLora.Models;

/// <summary>
/// Frees what TorchSharp's custom autograd functions would otherwise keep until the end of the training step. For every
/// call of a custom backward, TorchSharp wraps the incoming gradient in a new managed tensor, and the gradients the
/// backward returns are copied by the native engine while their managed tensors live on; both are registered in the
/// dispose scope around <c>loss.backward()</c>, so over one backward pass every call's tensors stayed alive at once. With
/// a packed (8-/4-bit) base that is two activation-sized tensors per projection per layer (measured: the packed bases'
/// training peak was no lower than float32's); with checkpointing, two (batch, seq, hidden) tensors per layer.
/// A custom backward calls <see cref="Return"/>: the incoming gradient is freed at once, the returned ones at the next
/// custom backward on this thread (the engine has copied them by then) or by the enclosing scope.
/// </summary>
internal static class CustomGradients
{
    [ThreadStatic] private static List<Tensor>? _returned;

    /// <summary>Frees the gradients earlier custom backward calls on this thread returned; the engine holds its own copies.</summary>
    public static void ReleaseReturned()
    {
        if (_returned is not { Count: > 0 } list) return;
        foreach (var t in list) t.Dispose();
        list.Clear();
    }

    /// <summary>
    /// What a custom backward returns: frees the earlier calls' gradients and <paramref name="gradOutput"/> (not used
    /// after this), and remembers <paramref name="grads"/> to free at the next call.
    /// </summary>
    public static List<Tensor> Return(Tensor gradOutput, List<Tensor> grads)
    {
        ReleaseReturned();
        gradOutput.Dispose();
        var list = _returned ??= new List<Tensor>();
        foreach (var g in grads)
            if (g is not null) list.Add(g);
        return grads;
    }
}
