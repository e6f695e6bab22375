namespace ResLora.Adapters;

/// <summary>The closed-form refactoring (spec §2.2) in PEFT's orientation: A = lora_A (r, in), B = lora_B (out, r), ΔW = B A.</summary>
public static class RefLoraMath
{
    /// <summary>
    /// S and S⁻¹ (r, r) with S (A Aᵀ) S = BᵀB, from two r×r eigendecompositions in float64 (§2.2 steps 1–3), eigenvalues
    /// clamped at 0 and ε = float32 machine epsilon added to singular values where they are inverted (§4).
    /// </summary>
    public static (Tensor S, Tensor SInv) Preconditioners(Tensor loraA, Tensor loraB, double eps = 1.1920929e-7)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        // Paper orientation: A_p = loraAᵀ (in, r), B_p = loraB (out, r); X = A_pᵀA_p = loraA loraAᵀ.
        var a = loraA.detach().to_type(ScalarType.Float64);
        var b = loraB.detach().to_type(ScalarType.Float64);
        var (lamA, vA) = torch.linalg.eigh(a.matmul(a.t()));
        var sigA = lamA.clamp_min(0).sqrt();
        var m = b.matmul(vA * sigA.unsqueeze(0));                 // (out, r): B V_A Σ_A
        var (lamM, vM) = torch.linalg.eigh(m.t().matmul(m));
        var sigM = lamM.clamp_min(0).sqrt();
        var l = (vA * (1.0 / (sigA + eps)).unsqueeze(0)).matmul(vM); // V_A Σ_A⁻¹ V_M
        var s = (l * sigM.unsqueeze(0)).matmul(l.t());
        var k = (vA * sigA.unsqueeze(0)).matmul(vM);                 // V_A Σ_A V_M
        var sInv = (k * (1.0 / (sigM + eps)).unsqueeze(0)).matmul(k.t());
        return (scope.MoveToOuter(s), scope.MoveToOuter(sInv));
    }
}

/// <summary>The RefLoRA step hook over a model's LoRA pairs (spec §3.2 full, §3.4 scalar).</summary>
public sealed class RefLoraHook : IOptimizerStepHook
{
    private readonly IReadOnlyList<ILowRankPair> _pairs;
    private readonly RefLoraConfig _config;
    private int _skip;

    public RefLoraHook(RefLoraConfig config, IEnumerable<ILowRankPair> pairs)
    {
        _config = config;
        _pairs = pairs.ToList();
        if (_pairs.Count == 0) throw new UserInputException("RefLoRA: the model has no LoRA pairs to refactor (check --targets).");
        _skip = config.RefactorWarmupSteps;
    }

    /// <summary>How many refactorings have run (for tests and logs).</summary>
    public int Refactorings { get; private set; }

    private bool Due()
    {
        // §3.3 counter: skip the warm-up steps, then fire and wait interval − 1 steps.
        if (_skip > 0) { _skip--; return false; }
        _skip = _config.RefactorInterval - 1;
        return true;
    }

    private bool _dueThisStep;

    public void BeforeOptimizerStep(OptimizerStepContext context)
    {
        _dueThisStep = Due();
        if (!_dueThisStep || _config.Variant != "full") return;
        using var _ = torch.no_grad();
        foreach (var p in _pairs)
        {
            if (p.LoraA.grad is not { } gA || p.LoraB.grad is not { } gB) continue;
            using var scope = torch.NewDisposeScope();
            var (s, sInv) = RefLoraMath.Preconditioners(p.LoraA, p.LoraB);
            // Paper: G_A S⁻¹ with A_p (in, r); in PEFT's orientation lora_A = A_pᵀ, so grad_A ← S⁻¹ grad_A. B: grad_B S.
            gA.copy_(sInv.matmul(gA.to_type(ScalarType.Float64)).to_type(gA.dtype));
            gB.copy_(gB.to_type(ScalarType.Float64).matmul(s).to_type(gB.dtype));
        }
        Refactorings++;
    }

    public void AfterOptimizerStep(OptimizerStepContext context)
    {
        if (!_dueThisStep || _config.Variant != "scalar") return;
        using var _ = torch.no_grad();
        var states = MomentsByParameter(context.Optimizer);
        foreach (var p in _pairs)
        {
            double na = p.LoraA.norm().to_type(ScalarType.Float64).item<double>(), nb = p.LoraB.norm().to_type(ScalarType.Float64).item<double>();
            if (!(na > 0 && nb > 0)) continue; // §3.4 pitfall: p = 0 would zero A and NaN B
            double q = Math.Sqrt(nb / na);      // p = sqrt(s²), s² = ‖B‖/‖A‖
            p.LoraA.mul_(q);
            p.LoraB.div_(q);
            if (states.TryGetValue(p.LoraA.Handle, out var sa)) { sa.ExpAvg.div_(q); sa.ExpAvgSq.div_(q * q); }
            if (states.TryGetValue(p.LoraB.Handle, out var sb)) { sb.ExpAvg.mul_(q); sb.ExpAvgSq.mul_(q * q); }
        }
        Refactorings++;
    }

    /// <summary>Adam's first and second moments of each parameter (live tensors), keyed by the parameter's native handle.</summary>
    internal static Dictionary<IntPtr, (Tensor ExpAvg, Tensor ExpAvgSq)> MomentsByParameter(optim.Optimizer optimizer)
    {
        var d = new Dictionary<IntPtr, (Tensor, Tensor)>();
        if (optimizer is not TorchSharp.Modules.OptimizerHelper h) return d;
        var ps = h.parameters().ToList();
        var sd = h.state_dict();
        for (int i = 0; i < Math.Min(ps.Count, sd.State.Count); i++)
        {
            switch (sd.State[i])
            {
                case TorchSharp.Modules.AdamW.State s when s.exp_avg is not null: d[ps[i].Handle] = (s.exp_avg, s.exp_avg_sq); break;
                case TorchSharp.Modules.Adam.State s when s.exp_avg is not null: d[ps[i].Handle] = (s.exp_avg, s.exp_avg_sq); break;
            }
        }
        return d;
    }
}
