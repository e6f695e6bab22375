using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>
/// One LoRA-family adapter's tensors on one projection of a shared base (see <see cref="MultiLoraPlan"/>): A (r, in),
/// B (out, r), the scaling s, and for DoRA the per-row factor c = m / ‖W₀ + s·BA‖ (out). They are inference-only copies
/// in the adapter dtype: nothing here trains, so DoRA's norm (detached in training anyway, peft-format.md §3.2) is
/// computed once when the adapter is loaded and c replaces the magnitude m, which costs the same memory.
/// </summary>
internal sealed record LoraSlot(Tensor A, Tensor B, double Scaling, Tensor? DoraScale) : IDisposable
{
    public int Rank => (int)A.shape[0];

    public long Bytes => new[] { A, B, DoraScale }.Where(t => t is not null).Sum(t => t!.numel() * t!.ElementSize);

    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
        DoraScale?.Dispose();
    }
}

/// <summary>
/// A frozen base projection (<c>weight</c> (out, in), <c>bias</c>: Hugging Face's keys, shared by every adapter) that
/// carries any number of named LoRA-family adapters and applies the ones the current forward asks for
/// (<see cref="MultiLoraPlan.Route"/>, else the plan's active adapter). With no adapter the forward is
/// <c>functional.linear(x, W₀, b)</c>, exactly a plain projection's; the base is never written to.
/// For each adapter in use the rows (batch entries) that use it are gathered, pass through one low-rank product and are
/// added back (index_select → A, B → index_add), so a mixed batch costs one low-rank product per adapter, not per row:
/// LoRA/rsLoRA y += s·B A x (§3.1); DoRA y += (c − 1) ⊙ W₀x + c ⊙ s·B A x (§3.2, bias not rescaled).
/// When two or more LoRA/rsLoRA adapters share a batch here, the low-rank terms of all rows run as two batched
/// products instead: the routed adapters' factors are kept stacked (s folded into B, smaller ranks zero-padded, a zero
/// entry for rows without adapter, cached until the set of routed adapters changes, so they cost the adapters' bytes
/// once more), gathered per row, and applied with <c>bmm</c>: a fixed number of operations whatever the number of adapters.
/// </summary>
public sealed class MultiLoraLinear : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // state-dict keys
    private readonly Parameter weight;
    private readonly Parameter? bias;
#pragma warning restore IDE1006
    private readonly MultiLoraPlan _plan;
    private readonly Dictionary<string, LoraSlot> _slots = new(StringComparer.Ordinal);

    internal MultiLoraLinear(LinearSpec spec, ScalarType dtype, Device device, MultiLoraPlan plan) : base(spec.Name)
    {
        Spec = spec;
        _plan = plan;
        var frozen = LowRank.CreateBase(spec, dtype, device, null);
        weight = frozen.RequireWeight("several adapters on one base (--base-bits is not supported there)");
        bias = frozen.Bias;
        AdapterDtype = LowRank.AdapterDtype(dtype);
        RegisterComponents();
    }

    /// <summary>The projection this layer is.</summary>
    public LinearSpec Spec { get; }

    /// <summary>The frozen base weight (out, in), shared by every adapter.</summary>
    public Parameter Weight => weight;

    /// <summary>The frozen base bias (out), or null.</summary>
    public Parameter? Bias => bias;

    /// <summary>dtype of the adapter tensors: float32 for fp16/bf16 bases (PEFT's autocast_adapter_dtype), else the base dtype.</summary>
    public ScalarType AdapterDtype { get; }

    /// <summary>The adapters this projection carries.</summary>
    public IReadOnlyCollection<string> AdapterNames => _slots.Keys;

    internal bool TryGetSlot(string name, out LoraSlot slot) => _slots.TryGetValue(name, out slot!);

    internal void AddSlot(string name, LoraSlot slot)
    {
        if (!_slots.TryAdd(name, slot)) throw new InvalidOperationException($"{Spec.Name}: adapter '{name}' is already loaded here.");
        DropStacks();
    }

    internal void RemoveSlot(string name)
    {
        if (_slots.Remove(name, out var s)) s.Dispose();
        DropStacks();
    }

    /// <summary>The routed adapters' stacked factors for the fused mixed-batch path, and the group names they were built for.</summary>
    private (string Key, Tensor A, Tensor B)? _stacks;

    private void DropStacks()
    {
        if (_stacks is { } st)
        {
            st.A.Dispose();
            st.B.Dispose();
        }
        _stacks = null;
    }

    /// <summary>
    /// A (groups + 1, r, in) and s·B (groups + 1, out, r) for the route's groups in order, r the largest rank (smaller
    /// ranks and adapters absent here are zeros), the last entry zero for rows without adapter.
    /// </summary>
    private (Tensor A, Tensor B) Stacks(IReadOnlyList<(string Name, Tensor? Rows)> groups)
    {
        string key = string.Join("\n", groups.Select(g => g.Name));
        if (_stacks is { } st && st.Key == key) return (st.A, st.B);
        DropStacks();
        using var noGrad = torch.no_grad();
        using var scope = torch.NewDisposeScope();
        var slots = groups.Select(g => _slots.GetValueOrDefault(g.Name)).ToList();
        long r = slots.Max(sl => sl?.Rank ?? 0), inF = Spec.InFeatures, outF = Spec.OutFeatures;
        var device = weight.device;
        var a = torch.zeros(new long[] { slots.Count + 1, r, inF }, dtype: AdapterDtype, device: device);
        var b = torch.zeros(new long[] { slots.Count + 1, outF, r }, dtype: AdapterDtype, device: device);
        for (int i = 0; i < slots.Count; i++)
        {
            if (slots[i] is not { } sl) continue;
            a[i].narrow(0, 0, sl.Rank).copy_(sl.A);
            b[i].narrow(1, 0, sl.Rank).copy_(sl.B.mul(sl.Scaling));
        }
        _stacks = (key, a.DetachFromDisposeScope(), b.DetachFromDisposeScope());
        return (_stacks.Value.A, _stacks.Value.B);
    }

    /// <summary>y = W₀x + b plus, for every adapter the current forward applies here, its term on its rows; x is (batch, ..., in).</summary>
    public override Tensor forward(Tensor x)
    {
        var groups = _plan.CurrentGroups(x.shape[0]);
        List<(LoraSlot Slot, Tensor? Rows)>? mine = null;
        foreach (var (name, rows) in groups)
            if (_slots.TryGetValue(name, out var s)) (mine ??= new()).Add((s, rows));
        if (mine is null || AdapterSwitch.IsOff) return nn.functional.linear(x, weight, bias);

        using var scope = torch.NewDisposeScope();
        bool dora = mine.Any(m => m.Slot.DoraScale is not null);
        if (!dora && mine.Count >= 2 && x.dim() == 3 && _plan.CurrentRowGroups is { } rowGroup)
        {
            // Fused mixed batch: y = W₀x + b + bmm(bmm(x, A_rowᵀ), (s·B)_rowᵀ), every row's factors gathered from the stacks.
            var (stackA, stackB) = Stacks(groups);
            Tensor xa = x.dtype == AdapterDtype ? x : x.to_type(AdapterDtype);
            Tensor h = xa.bmm(stackA.index_select(0, rowGroup).transpose(1, 2)); // (batch, seq, r)
            Tensor lora = h.bmm(stackB.index_select(0, rowGroup).transpose(1, 2)); // (batch, seq, out)
            Tensor yf = nn.functional.linear(x, weight, bias);
            if (lora.dtype != yf.dtype) lora = lora.to_type(yf.dtype);
            return scope.MoveToOuter(yf.add(lora));
        }
        // DoRA reuses W₀x without the bias (PEFT PR #2122), as DoraLinear does; LoRA alone keeps the fused linear.
        Tensor? baseOut = dora ? nn.functional.linear(x, weight) : null; // (..., out)
        Tensor y = baseOut is null ? nn.functional.linear(x, weight, bias) : bias is null ? baseOut : baseOut.add(bias);
        foreach (var (slot, rows) in mine)
        {
            Tensor xs = rows is null ? x : x.index_select(0, rows); // (rows, seq, in)
            Tensor xa = xs.dtype == AdapterDtype ? xs : xs.to_type(AdapterDtype);
            Tensor lora = LoraTerms.Up(LoraTerms.Down(xa, slot.A), slot.B); // B A x, (rows, seq, out)
            if (slot.DoraScale is { } c)
            {
                Tensor b0 = rows is null ? baseOut! : baseOut!.index_select(0, rows);
                if (b0.dtype != AdapterDtype) b0 = b0.to_type(AdapterDtype);
                Tensor delta = LoraTerms.DoraDelta(c, b0, lora, slot.Scaling);
                if (delta.dtype != y.dtype) delta = delta.to_type(y.dtype);
                y = rows is null ? y.add(delta) : y.index_add(0, rows, delta, 1);
            }
            else
            {
                // s is applied by the add itself (alpha): one kernel less per adapter and projection.
                if (lora.dtype != y.dtype) lora = lora.to_type(y.dtype);
                y = rows is null ? y.add(lora, slot.Scaling) : y.index_add(0, rows, lora, slot.Scaling);
            }
        }
        return scope.MoveToOuter(y);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            foreach (var s in _slots.Values) s.Dispose();
            _slots.Clear();
            DropStacks();
        }
        base.Dispose(disposing);
    }
}
