using System.Text.Json.Serialization;
using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>PEFT's AdaLoraConfig (peft-format.md §2.6): LoRA fields plus the budget schedule; <c>rank_pattern</c> holds boolean keep-masks.</summary>
public sealed record AdaLoraConfig : LowRankConfigBase
{
    [JsonPropertyName("peft_type")] public override string PeftType => "ADALORA";
    [JsonPropertyName("target_r")] public int TargetR { get; init; } = 8;
    [JsonPropertyName("init_r")] public int InitR { get; init; } = 12;
    [JsonPropertyName("tinit")] public int TInit { get; init; }
    [JsonPropertyName("tfinal")] public int TFinal { get; init; }
    [JsonPropertyName("deltaT")] public int DeltaT { get; init; } = 1;
    [JsonPropertyName("beta1")] public double Beta1 { get; init; } = 0.85;
    [JsonPropertyName("beta2")] public double Beta2 { get; init; } = 0.85;
    [JsonPropertyName("orth_reg_weight")] public double OrthRegWeight { get; init; } = 0.5;
    [JsonPropertyName("total_step")] public int? TotalStep { get; init; }

    /// <summary>AdaLoRA's rank_pattern: module path + ".lora_E" → init_r booleans (which singular triplets survived).</summary>
    [JsonPropertyName("rank_pattern")] public new Dictionary<string, List<bool>>? RankPattern { get; init; }

    [JsonIgnore] public override string Method => "adalora";

    public override void Validate()
    {
        base.Validate();
        if (TotalStep is not > 0) throw new UserInputException("adapter_config.json: AdaLoRA needs 'total_step' > 0 (the training steps); it sets the budget schedule.");
        if (!(TInit < TotalStep - TFinal)) throw new UserInputException($"adapter_config.json: 'tinit' ({TInit}) must be below total_step − tfinal ({TotalStep - TFinal}).");
        if (InitR < 1 || TargetR < 0 || TargetR > InitR) throw new UserInputException($"adapter_config.json: need 0 ≤ target_r ({TargetR}) ≤ init_r ({InitR}) and init_r ≥ 1.");
        if (DeltaT < 1) throw new UserInputException($"adapter_config.json: 'deltaT' must be at least 1, got {DeltaT}.");
    }

    /// <summary>§3.3 budget at step t: b₀ before tinit, b_T after T − tfinal, cubic decay between.</summary>
    public int Budget(int t, int modules)
    {
        int b0 = InitR * modules, bT = TargetR * modules, T = TotalStep!.Value;
        if (t <= TInit) return b0;
        if (t > T - TFinal) return bT;
        double frac = 1 - (double)(t - TInit) / (T - TFinal - TInit);
        return (int)Math.Floor((b0 - bT) * frac * frac * frac + bT);
    }
}

/// <summary>
/// AdaLoRA's SVD-shaped layer (§3.3): ΔW = (α/r₀)·P diag(λ) Q with P = lora_B (out, r₀), λ = lora_E (r₀, 1),
/// Q = lora_A (r₀, in); λ = 0 and P, Q ~ N(0, 0.02²) at init. Pruned triplets have λ = 0 and a false keep-mask.
/// </summary>
public sealed class AdaLoraLinear : MaterializedDeltaLinear
{
#pragma warning disable IDE1006
    private readonly Parameter lora_A, lora_E, lora_B;
#pragma warning restore IDE1006
    private readonly double _scaling, _dropout;

    public AdaLoraLinear(LinearSpec spec, int initR, double alpha, double dropout, bool[]? keep, ScalarType dtype, Device device, Generator? g)
        : base(spec, 0, 0, false, dtype, device, g)
    {
        var ad = LowRank.AdapterDtype(dtype);
        lora_A = new Parameter((torch.randn(new long[] { initR, spec.InFeatures }, generator: g) * 0.02).to(ad, device));
        lora_E = new Parameter(torch.zeros(initR, 1, dtype: ad, device: device));
        lora_B = new Parameter((torch.randn(new long[] { spec.OutFeatures, initR }, generator: g) * 0.02).to(ad, device));
        _scaling = (alpha > 0 ? alpha : initR) / (initR + 1e-5);
        _dropout = dropout;
        Keep = keep ?? Enumerable.Repeat(true, initR).ToArray();
        RegisterComponents();
    }

    protected override string MethodName => "AdaLoRA";
    public Parameter P => lora_B;
    public Parameter Lambda => lora_E;
    public Parameter Q => lora_A;
    public override double Scaling => _scaling;
    public override IReadOnlyList<Parameter> TrainableParameters => new[] { lora_A, lora_E, lora_B };

    /// <summary>Which singular triplets are kept (the allocator's mask).</summary>
    public bool[] Keep { get; private set; }

    internal void ApplyMask(bool[] keep)
    {
        Keep = keep;
        using var _ = torch.no_grad();
        using var m = torch.tensor(keep).to(lora_E.device).unsqueeze(1);
        lora_E.masked_fill_(m.logical_not(), 0);
    }

    protected override Tensor Delta() => lora_B.matmul(lora_A * lora_E);

    /// <summary>y = W₀x + b + (α/r₀)·drop(x)(Q ⊙ λ)ᵀPᵀ: the low-rank path, without materialising ΔW.</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = torch.NewDisposeScope();
        var y = BaseForward(x);
        if (IsMerged || AdapterSwitch.IsOff) return scope.MoveToOuter(y);
        var xa = x.to_type(lora_A.dtype);
        if (_dropout > 0 && training) xa = nn.functional.dropout(xa, _dropout, true);
        var d = nn.functional.linear(nn.functional.linear(xa, lora_A * lora_E), lora_B) * _scaling;
        return scope.MoveToOuter(y + d.to_type(y.dtype));
    }

    private Tensor KeptIndex() => torch.tensor(Keep.Select((k, i) => (k, i)).Where(x => x.k).Select(x => (long)x.i).ToArray()).to(lora_A.device);

    /// <summary>PEFT's saved form: the kept triplets only (rows of A and E, columns of B), as rank_pattern describes.</summary>
    public override IReadOnlyDictionary<string, Tensor> GetAdapterState()
    {
        if (Keep.All(k => k)) return new Dictionary<string, Tensor> { ["lora_A"] = lora_A, ["lora_E"] = lora_E, ["lora_B"] = lora_B };
        using var idx = KeptIndex();
        return new Dictionary<string, Tensor>
        {
            ["lora_A"] = lora_A.index_select(0, idx).DetachFromDisposeScope(),
            ["lora_E"] = lora_E.index_select(0, idx).DetachFromDisposeScope(),
            ["lora_B"] = lora_B.index_select(1, idx).DetachFromDisposeScope(),
        };
    }

    public override void LoadAdapterState(IReadOnlyDictionary<string, Tensor> state)
    {
        RefuseWhileMerged("load adapter weights");
        int kept = Keep.Count(k => k);
        foreach (var (k, shape) in new[] { ("lora_A", new long[] { kept, lora_A.shape[1] }), ("lora_E", new long[] { kept, 1 }), ("lora_B", new long[] { lora_B.shape[0], kept }) })
        {
            if (!state.TryGetValue(k, out var t)) throw new UserInputException($"{Spec.Name}: adapter tensor '{k}' is missing.");
            if (!t.shape.SequenceEqual(shape)) throw new UserInputException($"{Spec.Name}.{k}: saved shape [{string.Join(", ", t.shape)}] does not match [{string.Join(", ", shape)}] (rank_pattern keeps {kept} of {Keep.Length}).");
        }
        using var _ = torch.no_grad();
        using var idx = KeptIndex().cpu();
        lora_A.zero_(); lora_E.zero_(); lora_B.zero_();
        lora_A.index_copy_(0, idx, state["lora_A"].to(lora_A.dtype));
        lora_E.index_copy_(0, idx, state["lora_E"].to(lora_E.dtype));
        lora_B.index_copy_(1, idx, state["lora_B"].to(lora_B.dtype));
    }
}

/// <summary>
/// Builds AdaLoRA layers and is the method's training machinery: the orthogonality penalty (an extra loss term the
/// trainer always adds) and PEFT's RankAllocator (sensitivity/uncertainty EMAs, cubic budget, masking) as a step hook.
/// </summary>
public sealed class AdaLoraLayerBuilder : IAdapterLayerBuilder, IExtraLossTerm, IOptimizerStepHook, IConfigSnapshot
{
    private readonly AdaLoraConfig _c;
    private readonly Generator? _g;
    private readonly List<AdaLoraLinear> _layers = new();
    private readonly Dictionary<Parameter, (Tensor IBar, Tensor UBar)> _ema = new();

    public AdaLoraLayerBuilder(AdaLoraConfig c, Generator? g)
    {
        c.Validate();
        _c = c;
        _g = g;
    }

    public IReadOnlyList<AdaLoraLinear> Layers => _layers;

    public nn.Module<Tensor, Tensor> Build(AdapterTarget t, ScalarType dtype, Device device)
    {
        bool[]? keep = _c.RankPattern is { } rp && rp.TryGetValue(t.Spec.Name + ".lora_E", out var mask) ? mask.ToArray() : null;
        if (keep is not null && keep.Length != _c.InitR) throw new UserInputException($"adapter_config.json: rank_pattern['{t.Spec.Name}.lora_E'] has {keep.Length} entries, init_r is {_c.InitR}.");
        var l = new AdaLoraLinear(t.Spec, _c.InitR, t.Alpha, _c.LoraDropout, keep, dtype, device, _g);
        _layers.Add(l);
        return l;
    }

    /// <summary>γ·(1/N) Σ over every P and Q of ‖QQᵀ − I‖_F and ‖PᵀP − I‖_F (§3.3).</summary>
    public Tensor ExtraLoss()
    {
        Tensor sum = torch.zeros(1);
        int n = 0;
        foreach (var l in _layers)
        {
            var q = l.Q;
            var p = l.P;
            sum = sum + (q.matmul(q.t()) - torch.eye(q.shape[0], dtype: q.dtype, device: q.device)).norm().to(sum.device);
            sum = sum + (p.t().matmul(p) - torch.eye(p.shape[1], dtype: p.dtype, device: p.device)).norm().to(sum.device);
            n += 2;
        }
        return (sum / Math.Max(1, n) * _c.OrthRegWeight).squeeze();
    }

    public void BeforeOptimizerStep(OptimizerStepContext context)
    {
    }

    /// <summary>PEFT's update_and_allocate after the step (gradients of this step still present).</summary>
    public void AfterOptimizerStep(OptimizerStepContext context)
    {
        int t = context.Step, T = _c.TotalStep!.Value;
        using var _ = torch.no_grad();
        if (t > T - _c.TFinal)
        {
            foreach (var l in _layers) l.ApplyMask(l.Keep); // frozen final mask, re-applied every step
            return;
        }
        UpdateScores();
        bool decay = t > _c.TInit && t <= T - _c.TFinal;
        if (decay && (t % _c.DeltaT == 0 || t == T - _c.TFinal)) MaskToBudget(_c.Budget(t, _layers.Count));
    }

    private void UpdateScores()
    {
        foreach (var l in _layers)
            foreach (var p in l.TrainableParameters)
            {
                if (p.grad is not { } g) continue;
                using var scope = torch.NewDisposeScope();
                var ipt = (p * g).abs().detach();
                if (!_ema.TryGetValue(p, out var e))
                {
                    e = (torch.zeros_like(ipt).DetachFromDisposeScope(), torch.zeros_like(ipt).DetachFromDisposeScope());
                    _ema[p] = e;
                }
                e.IBar.mul_(_c.Beta1).add_(ipt * (1 - _c.Beta1));
                e.UBar.mul_(_c.Beta2).add_((ipt - e.IBar).abs() * (1 - _c.Beta2));
            }
    }

    private Tensor Score(Parameter p) => _ema.TryGetValue(p, out var e) ? e.IBar * e.UBar : torch.zeros_like(p);

    /// <summary>Triplet score S_i = s(λ_i) + mean_j s(Q_ij) + mean_j s(P_ji); zero the λ with the k smallest, k = b₀ − b(t).</summary>
    public void MaskToBudget(int budget)
    {
        using var scope = torch.NewDisposeScope();
        var scores = _layers.Select(l => (Score(l.Lambda).squeeze(1) + Score(l.Q).mean(new long[] { 1 }) + Score(l.P).mean(new long[] { 0 })).to_type(ScalarType.Float32).cpu()).ToList();
        var all = torch.cat(scores.ToArray());
        int k = (int)all.shape[0] - budget;
        if (k <= 0) return;
        double tau = all.kthvalue(k, 0, false).values.item<float>();
        for (int i = 0; i < _layers.Count; i++)
        {
            var s = scores[i].data<float>().ToArray();
            _layers[i].ApplyMask(s.Select(v => v > tau).ToArray());
        }
    }

    public AdapterConfigBase SnapshotConfig() => _c with
    {
        RankPattern = _layers.ToDictionary(l => l.Spec.Name + ".lora_E", l => l.Keep.ToList(), StringComparer.Ordinal),
    };
}
