namespace ResLora.Models;

/// <summary>
/// Keys and values of every layer for the positions already processed, so that each new token costs one position.
/// Owns its tensors (detached from dispose scopes); dispose it when generation ends.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly Tensor?[] _keys;
    private readonly Tensor?[] _values;

    public KvCache(int numLayers)
    {
        _keys = new Tensor?[numLayers];
        _values = new Tensor?[numLayers];
    }

    /// <summary>Positions held (the sequence length of layer 0's keys).</summary>
    public long Length => _keys[0] is { } k ? k.shape[2] : 0;

    /// <summary>
    /// Appends this step's keys/values (batch, kvHeads, newSeq, headDim) for <paramref name="layer"/> and returns
    /// the full ones (batch, kvHeads, past+newSeq, headDim). The returned tensors belong to the cache.
    /// </summary>
    internal (Tensor Keys, Tensor Values) Append(int layer, Tensor k, Tensor v)
    {
        Tensor newK, newV;
        using (torch.no_grad())
        {
            newK = _keys[layer] is { } oldK ? torch.cat(new[] { oldK, k.detach() }, 2) : k.detach().clone();
            newV = _values[layer] is { } oldV ? torch.cat(new[] { oldV, v.detach() }, 2) : v.detach().clone();
        }
        newK.DetachFromDisposeScope();
        newV.DetachFromDisposeScope();
        _keys[layer]?.Dispose();
        _values[layer]?.Dispose();
        _keys[layer] = newK;
        _values[layer] = newV;
        return (newK, newV);
    }

    /// <summary>
    /// Keeps only the batch rows at <paramref name="rows"/> (in that order) of every layer's keys and values: a batched
    /// generation drops the rows that finished so they stop costing attention and memory.
    /// </summary>
    internal void KeepRows(long[] rows)
    {
        using var scope = torch.NewDisposeScope();
        var index = torch.tensor(rows, dtype: ScalarType.Int64, device: _keys[0]?.device ?? torch.CPU);
        for (int i = 0; i < _keys.Length; i++)
        {
            if (_keys[i] is not { } k || _values[i] is not { } v) continue;
            var newK = k.index_select(0, index).DetachFromDisposeScope(); // (kept, kvHeads, past, headDim)
            var newV = v.index_select(0, index).DetachFromDisposeScope();
            k.Dispose();
            v.Dispose();
            _keys[i] = newK;
            _values[i] = newV;
        }
    }

    /// <summary>
    /// A new cache holding copies of the batch rows at <paramref name="rows"/> (in that order, repeats allowed) of every
    /// layer's keys and values; this cache is left as it is. Several continuations of one prefix each extend their own copy.
    /// </summary>
    internal KvCache CopyRows(long[] rows)
    {
        var copy = new KvCache(_keys.Length);
        using var scope = torch.NewDisposeScope();
        var index = torch.tensor(rows, dtype: ScalarType.Int64, device: _keys[0]?.device ?? torch.CPU);
        for (int i = 0; i < _keys.Length; i++)
        {
            if (_keys[i] is not { } k || _values[i] is not { } v) continue;
            copy._keys[i] = k.index_select(0, index).DetachFromDisposeScope();
            copy._values[i] = v.index_select(0, index).DetachFromDisposeScope();
        }
        return copy;
    }

    /// <summary>
    /// Puts <paramref name="columns"/> zero positions before every layer's keys and values (batch, kvHeads, columns+past,
    /// headDim): the left padding that aligns a shorter sequence with a longer one. The caller masks them out.
    /// </summary>
    internal void PadLeft(long columns)
    {
        if (columns <= 0) return;
        using var scope = torch.NewDisposeScope();
        for (int i = 0; i < _keys.Length; i++)
        {
            if (_keys[i] is not { } k || _values[i] is not { } v) continue;
            var zk = torch.zeros(k.shape[0], k.shape[1], columns, k.shape[3], dtype: k.dtype, device: k.device);
            var zv = torch.zeros(v.shape[0], v.shape[1], columns, v.shape[3], dtype: v.dtype, device: v.device);
            var newK = torch.cat(new[] { zk, k }, 2).DetachFromDisposeScope(); // (batch, kvHeads, columns+past, headDim)
            var newV = torch.cat(new[] { zv, v }, 2).DetachFromDisposeScope();
            k.Dispose();
            v.Dispose();
            _keys[i] = newK;
            _values[i] = newV;
        }
    }

    /// <summary>
    /// Drops the first <paramref name="columns"/> positions of every layer (padding that no row needs any more once the
    /// rows it aligned have left), so the cache is as long as its longest row.
    /// </summary>
    internal void TrimLeft(long columns)
    {
        if (columns <= 0) return;
        long len = Length;
        if (columns > len) throw new ArgumentOutOfRangeException(nameof(columns), $"cannot drop {columns} of {len} positions.");
        using var scope = torch.NewDisposeScope();
        for (int i = 0; i < _keys.Length; i++)
        {
            if (_keys[i] is not { } k || _values[i] is not { } v) continue;
            var newK = k.narrow(2, columns, len - columns).contiguous().DetachFromDisposeScope(); // (batch, kvHeads, len-columns, headDim)
            var newV = v.narrow(2, columns, len - columns).contiguous().DetachFromDisposeScope();
            k.Dispose();
            v.Dispose();
            _keys[i] = newK;
            _values[i] = newV;
        }
    }

    /// <summary>
    /// Appends the rows of <paramref name="other"/> (same number of positions) after this cache's rows in every layer:
    /// a sequence prefilled on its own joins a running batch. <paramref name="other"/> is left as it is.
    /// </summary>
    internal void AppendRows(KvCache other)
    {
        if (other._keys.Length != _keys.Length) throw new ArgumentException($"the caches have {_keys.Length} and {other._keys.Length} layers.", nameof(other));
        if (_keys[0] is not null && other.Length != Length)
            throw new ArgumentException($"the caches hold {Length} and {other.Length} positions; pad the shorter one first (PadLeft).", nameof(other));
        using var scope = torch.NewDisposeScope();
        for (int i = 0; i < _keys.Length; i++)
        {
            if (other._keys[i] is not { } ok || other._values[i] is not { } ov) continue;
            var newK = (_keys[i] is { } k ? torch.cat(new[] { k, ok }, 0) : ok.clone()).DetachFromDisposeScope(); // (batch+rows, kvHeads, past, headDim)
            var newV = (_values[i] is { } v ? torch.cat(new[] { v, ov }, 0) : ov.clone()).DetachFromDisposeScope();
            _keys[i]?.Dispose();
            _values[i]?.Dispose();
            _keys[i] = newK;
            _values[i] = newV;
        }
    }

    public void Dispose()
    {
        for (int i = 0; i < _keys.Length; i++)
        {
            _keys[i]?.Dispose();
            _values[i]?.Dispose();
            _keys[i] = _values[i] = null;
        }
    }
}
