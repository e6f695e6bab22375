using System.Text.Json.Serialization;
using ResLora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Adapters;

/// <summary>
/// RefLoRA (shared/specs/reflora.md): plain LoRA layers trained with a per-step optimal refactoring of each factor pair.
/// Full: after backward and clipping, before the optimizer step, grad_A ← S⁻¹ grad_A and grad_B ← grad_B S with S the
/// geometric mean of (AAᵀ)⁻¹ and BᵀB (§3.2). Scalar (RefLoRA-S): after the step, A ← pA, B ← B/p with p² = ‖B‖/‖A‖ and
/// Adam's moments transformed to match (§3.4). Both start after <c>warmup_steps</c> steps of plain LoRA (§3.3).
/// </summary>
public sealed record RefLoraConfig : AdapterConfigBase
{
    [JsonPropertyName("peft_type")] public override string PeftType => "REFLORA";

    /// <summary>full (matrix S, gradient preconditioning) or scalar (RefLoRA-S, physical rescale).</summary>
    [JsonPropertyName("variant")] public string Variant { get; init; } = "full";

    /// <summary>Optimizer steps of plain LoRA before refactoring starts (§3.3: with B = 0 at init, S = 0 and B would never move).</summary>
    [JsonPropertyName("refactor_warmup_steps")] public int RefactorWarmupSteps { get; init; } = 20;

    /// <summary>Refactor every this many optimizer steps after warm-up (§3.3, default 1).</summary>
    [JsonPropertyName("refactor_interval")] public int RefactorInterval { get; init; } = 1;

    [JsonIgnore] public override string Method => Variant == "scalar" ? "reflora-s" : "reflora";

    [JsonIgnore] public override string LayerMethod => "lora";

    public override void Validate()
    {
        base.Validate();
        if (Variant is not ("full" or "scalar")) throw new ArgumentException($"adapter_config.json: 'variant' is '{Variant}'; use full or scalar.");
        if (RefactorInterval < 1) throw new ArgumentException($"adapter_config.json: 'refactor_interval' must be at least 1, got {RefactorInterval}.");
        if (RefactorWarmupSteps < 1 && InitLoraWeights != LoraInit.Random)
            throw new ArgumentException("adapter_config.json: 'refactor_warmup_steps' must be at least 1 with B initialised to zero (S would be 0 and B would never move, spec §3.3); use --refactor-warmup N.");
    }

}

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
        if (_pairs.Count == 0) throw new ArgumentException("RefLoRA: the model has no LoRA pairs to refactor (check --targets).");
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

/// <summary>
/// RefLoRA's layers are LoRA's, and so is what it saves: an ordinary LoRA adapter (peft_type LORA, loadable by PEFT),
/// with the refactoring used noted in <see cref="RefLoraNote.FileName"/> beside it.
/// </summary>
internal sealed class RefLoraLayerBuilder(RefLoraConfig config, Generator? generator) : IAdapterLayerBuilder, IConfigSnapshot, IAdapterFolderNote
{
    private readonly LoraLayerBuilder _inner = new(config.AsLora(), generator);

    public string Method => config.Method;

    public AdapterConfigBase SnapshotConfig() => config.AsLora() with { BaseModelNameOrPath = config.BaseModelNameOrPath };

    public (string FileName, string Json) Note() => RefLoraNote.For(config);

    public nn.Module<Tensor, Tensor> Build(AdapterTarget target, ScalarType dtype, Device device) => _inner.Build(target, dtype, device);
}

/// <summary>Capability of a layer builder that writes a note file beside the adapter (what training did that the config cannot say).</summary>
public interface IAdapterFolderNote
{
    (string FileName, string Json) Note();
}

/// <summary>The note RefLoRA leaves in an adapter folder: which refactoring trained these LoRA weights.</summary>
public static class RefLoraNote
{
    public const string FileName = "reslora_training.json";

    public static (string FileName, string Json) For(RefLoraConfig c) => (FileName, System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["refactoring"] = c.Variant == "scalar" ? "reflora-s" : "reflora",
        ["refactor_warmup_steps"] = c.RefactorWarmupSteps,
        ["refactor_interval"] = c.RefactorInterval,
        ["spec"] = "RefLoRA (gradient preconditioning before each optimizer step; scalar: rescale + Adam-moment transform after)",
    }, new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
}
