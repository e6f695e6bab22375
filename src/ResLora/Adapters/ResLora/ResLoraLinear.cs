using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>
/// One ResLoRA block on a frozen linear (spec §3): the LoRA pair in PEFT's orientation plus a residual path to the
/// previous block of its chain. The chain link and the tensors passed between layers live in
/// <see cref="ResLoraLayerBuilder"/> (outside the module tree), so the state dict holds only weight, bias,
/// lora_A.weight and lora_B.weight.
/// </summary>
public sealed class ResLoraLinear : LowRankLinear
{
    private readonly ResLoraLayerBuilder _owner;
    private readonly Queue<double> _inputNorms = new();
    private readonly Queue<double> _middleNorms = new();

    internal ResLoraLinear(LinearSpec spec, LoraLayerOptions options, ResLoraLayerBuilder owner, ScalarType dtype, Device device, Generator? generator)
        : base(spec, options, dtype, device, generator) // spec §1: the blocks are ordinary LoRA pairs (A Kaiming-uniform, B zero)
    {
        _owner = owner;
        RegisterComponents();
    }

    protected override string MethodName => "ResLoRA";

    /// <summary>Position in its chain (0 = chain start) and the previous block, or null at a chain start.</summary>
    public int ChainPosition { get; internal set; }
    public ResLoraLinear? Previous { get; internal set; }

    /// <summary>Position among all the builder's layers (the layout of its sharded statistics).</summary>
    internal int Index { get; set; }

    /// <summary>Window means of ‖x‖_F and ‖A·drop(x)‖_F over recent training forwards (0 when empty).</summary>
    public double InputNormMean => _inputNorms.Count == 0 ? 0 : _inputNorms.Average();
    public double MiddleNormMean => _middleNorms.Count == 0 ? 0 : _middleNorms.Average();
    public int WindowCount => _inputNorms.Count;

    /// <summary>The predecessors used by bs/ms: up to min(pre_num, position) blocks back along the chain (spec §2).</summary>
    public IReadOnlyList<ResLoraLinear> Predecessors(int preNum)
    {
        var list = new List<ResLoraLinear>();
        int limit = preNum < 0 ? int.MaxValue : preNum;
        for (var p = Previous; p is not null && list.Count < limit; p = p.Previous) list.Add(p);
        return list;
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        Tensor result = BaseForward(x);
        if (IsMerged || AdapterSwitch.IsOff) return scope.MoveToOuter(result);
        // Outside a model forward (a standalone layer) only a chain start can run: it needs nothing from other layers.
        var ctx = _owner.Current;
        double w = _owner.ShortcutWeight;
        if (ctx is null && Previous is not null && _owner.Structure != ResLoraStructure.BlockShortcut && w != 0) ctx = _owner.Context(Spec.Name);
        Tensor xa = x.to_type(AdapterDtype);
        Tensor delta;
        switch (_owner.Structure)
        {
            case ResLoraStructure.InputShortcut:
                {
                    // §3.1: h = Wx + s·B A drop(x_n + w·x_{n−1}); a chain start uses x_{n−1} := x_n. The stashed input is the
                    // live tensor (never detached): gradients skip the layers in between. w = 0 (annealed): plain LoRA.
                    ctx?.Put(this, xa);
                    Tensor middle;
                    if (w == 0) middle = Down(x);
                    else
                    {
                        Tensor prev = Previous is null ? xa : ctx!.Get(Previous, Spec.Name);
                        if (!prev.shape.SequenceEqual(xa.shape))
                            throw new InvalidOperationException($"{Spec.Name}: input shape [{string.Join(", ", xa.shape)}] differs from its chain predecessor's [{string.Join(", ", prev.shape)}] in this forward.");
                        middle = lora_A.call(Drop(w == 1 ? xa + prev : xa + prev.mul(w))); // (.., r)
                    }
                    _owner.Fold?.Record(this, xa, middle);
                    delta = lora_B.call(middle);
                    break;
                }
            case ResLoraStructure.BlockShortcut:
                {
                    // §3.2: s·Σ_k B_{n−k} A_{n−k} x as ONE product of the concatenated factors (one shared dropout mask);
                    // the predecessors' terms times w.
                    var preds = Predecessors(_owner.PreNum);
                    if (preds.Count == 0 || w == 0) delta = lora_B.call(Down(x));
                    else
                    {
                        var aCat = torch.cat(preds.Select(p => (Tensor)p.LoraA).Prepend(LoraA).ToArray(), 0); // (r(m+1), in)
                        var bCat = torch.cat(preds.Select(p => w == 1 ? (Tensor)p.LoraB : p.LoraB.mul(w)).Prepend(LoraB).ToArray(), 1); // (out, r(m+1))
                        delta = nn.functional.linear(nn.functional.linear(Drop(xa), aCat), bCat);
                    }
                    break;
                }
            default:
                {
                    // §3.3: z_n = A drop(x_n); h = Wx + s·B (z_n + w·Σ_k z_{n−k}), each z the predecessor's own, from this forward.
                    Tensor z = Down(x); // (.., r)
                    ctx?.Put(this, z);
                    Tensor acc = z;
                    if (w == 1)
                        foreach (var p in Predecessors(_owner.PreNum)) acc = acc + ctx!.Get(p, Spec.Name);
                    else if (w != 0 && Predecessors(_owner.PreNum) is { Count: > 0 } preds)
                        acc = acc + preds.Select(p => ctx!.Get(p, Spec.Name)).Aggregate((a, b) => a + b).mul(w);
                    _owner.Fold?.Record(this, xa, acc);
                    delta = lora_B.call(acc);
                    if (RecordsStatistics) Record(_middleNorms, z, middle: true);
                    break;
                }
        }
        if (RecordsStatistics) Record(_inputNorms, xa, middle: false);
        result = result.add(delta.mul(Scaling).to_type(result.dtype));
        return scope.MoveToOuter(result);
    }

    /// <summary>
    /// Training forwards push one norm each. Under --grad-checkpoint a layer also runs a second time, recomputed in backward
    /// on the same input; that run does not count, so the window is the same as without checkpointing.
    /// </summary>
    private bool RecordsStatistics => training && !ActivationCheckpoint.IsRecomputing;

    /// <summary>§4.2: one Frobenius norm per training forward (float32), window of the last N, zero norms not pushed.</summary>
    private void Record(Queue<double> window, Tensor t, bool middle)
    {
        using var _ = torch.no_grad();
        using var n = t.detach().to_type(ScalarType.Float32).norm();
        double v = n.item<float>();
        if (_owner.KeepPartial(this, middle, v)) return; // a data-parallel step: pushed once summed over the ranks
        Push(window, v);
    }

    private void Push(Queue<double> window, double v)
    {
        if (!(v > 0) || !double.IsFinite(v)) return;
        window.Enqueue(v);
        while (window.Count > _owner.WindowLength) window.Dequeue();
    }

    /// <summary>One forward's norms over the whole global batch (a data-parallel step), pushed as <see cref="Record"/> would.</summary>
    internal void PushNorms(double inputNorm, double middleNorm)
    {
        Push(_inputNorms, inputNorm);
        if (_owner.Structure == ResLoraStructure.MiddleShortcut) Push(_middleNorms, middleNorm);
    }

    internal void SeedStatistics(double inputNorm, double middleNorm)
    {
        _inputNorms.Clear();
        _middleNorms.Clear();
        if (inputNorm > 0) _inputNorms.Enqueue(inputNorm);
        if (middleNorm > 0) _middleNorms.Enqueue(middleNorm);
    }

    /// <summary>ΔW (out, in), float32, of the configured merge (spec §4): what Merge() adds to W.</summary>
    public override Tensor DeltaWeight() => _owner.DeltaWeight(this);
}
