using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>
/// One LoRA-family adapter's tensors on one projection of a shared base (see <see cref="MultiLoraPlan"/>): A (r, in),
/// B (out, r), the scaling s, and for DoRA the per-row factor c = m / ‖W₀ + s·BA‖ (out). They are inference-only copies
/// in the adapter dtype: nothing here trains, so DoRA's norm (detached in training anyway, peft-format.md §3.2) is
/// computed once when the adapter is loaded and c replaces the magnitude m, which costs the same memory.
/// </summary>
internal sealed class LoraSlot : IDisposable
{
    public LoraSlot(Tensor a, Tensor b, double scaling, Tensor? doraScale)
    {
        A = a;
        B = b;
        Scaling = scaling;
        DoraScale = doraScale;
    }

    public Tensor A { get; }
    public Tensor B { get; }
    public double Scaling { get; }
    public Tensor? DoraScale { get; }
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
    }

    internal void RemoveSlot(string name)
    {
        if (_slots.Remove(name, out var s)) s.Dispose();
    }

    /// <summary>y = W₀x + b plus, for every adapter the current forward applies here, its term on its rows; x is (batch, ..., in).</summary>
    public override Tensor forward(Tensor x)
    {
        var groups = _plan.CurrentGroups(x.shape[0]);
        List<(LoraSlot Slot, Tensor? Rows)>? mine = null;
        foreach (var (name, rows) in groups)
            if (_slots.TryGetValue(name, out var s)) (mine ??= new()).Add((s, rows));
        if (mine is null) return nn.functional.linear(x, weight, bias);

        using var scope = torch.NewDisposeScope();
        bool dora = mine.Any(m => m.Slot.DoraScale is not null);
        // DoRA reuses W₀x without the bias (PEFT PR #2122), as DoraLinear does; LoRA alone keeps the fused linear.
        Tensor? baseOut = dora ? nn.functional.linear(x, weight) : null; // (..., out)
        Tensor y = baseOut is null ? nn.functional.linear(x, weight, bias) : bias is null ? baseOut : baseOut.add(bias);
        foreach (var (slot, rows) in mine)
        {
            Tensor xs = rows is null ? x : x.index_select(0, rows); // (rows, seq, in)
            Tensor xa = xs.dtype == AdapterDtype ? xs : xs.to_type(AdapterDtype);
            Tensor lora = nn.functional.linear(nn.functional.linear(xa, slot.A), slot.B); // B A x, (rows, seq, out)
            if (slot.DoraScale is { } c)
            {
                Tensor b0 = rows is null ? baseOut! : baseOut!.index_select(0, rows);
                if (b0.dtype != AdapterDtype) b0 = b0.to_type(AdapterDtype);
                Tensor delta = c.sub(1).mul(b0).add(c.mul(lora).mul(slot.Scaling));
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
        }
        base.Dispose(disposing);
    }
}
