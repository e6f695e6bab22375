using ResLora.Adapters;

namespace ResLora.Training.Optimization;

/// <summary>
/// The Riemannian preconditioner of PrecLoRA (Zhang &amp; Pilanci 2024, "Riemannian Preconditioned LoRA for Fine-Tuning
/// Foundation Models", §3: scaled gradient descent with r×r preconditioners) as PEFT applies it
/// (<c>peft/optimizers/riemannian.py</c>, PR #3382): before every optimizer step, for each low-rank pair in PEFT's
/// orientation (A = lora_A (r, in), B = lora_B (out, r)),
/// <code>
/// grad_A ← (BᵀB + δI_r)⁻¹ grad_A        (r, r)·(r, in)
/// grad_B ← grad_B (AAᵀ + δI_r)⁻¹        (out, r)·(r, r)
/// </code>
/// with the factors as stored: the scaling s = α/r does not enter (PEFT's and the paper's formula use the raw factors).
/// Other trainable parameters (DoRA's magnitude, a modules_to_save head) are stepped unchanged. It runs inside the
/// optimizer step, after clipping (Hugging Face's trainer clips, then calls the wrapped <c>optimizer.step()</c>, which
/// preconditions first), so the clip bounds the raw gradient and the preconditioned one may be longer.
/// </summary>
public sealed class RiemannianPreconditioner
{
    /// <summary>PEFT's default <c>reg</c>.</summary>
    public const double DefaultDelta = 1e-2;

    private readonly IReadOnlyList<ILowRankPair> _pairs;
    private readonly double _delta;

    private RiemannianPreconditioner(IReadOnlyList<ILowRankPair> pairs, double delta) => (_pairs, _delta) = (pairs, delta);

    /// <summary>How many optimizer steps have been preconditioned (tests, logs).</summary>
    public int Steps { get; private set; }

    /// <summary>
    /// The preconditioner over every low-rank pair of <paramref name="model"/>. Refused, with the reason, when an adapter
    /// has no (A, B) pair (LoHa, LoKr, IA3, AdaLoRA's SVD triplets) or when RefLoRA's refactoring (<paramref name="hooks"/>)
    /// already rewrites the same gradients.
    /// </summary>
    public static RiemannianPreconditioner For(nn.Module model, IEnumerable<IOptimizerStepHook> hooks, double delta)
    {
        if (hooks.OfType<RefLoraHook>().Any())
            throw new UserInputException("--precondition riemannian and RefLoRA (--method reflora, --refactor) both rewrite the gradients of the same (A, B) pairs before the step, each with its own r×r preconditioner; use one of them.");
        var adapters = AdapterModel.FindAdapters(model);
        if (adapters.FirstOrDefault(a => a.Adapter is not ILowRankPair) is { Adapter: { } other } at)
            throw new UserInputException($"--precondition riemannian scales the gradients of low-rank (A, B) pairs, and this model's {other.GetType().Name} adapters ({at.Name}) have none; use it with --method lora, dora, reslora or rolora, or drop --precondition.");
        var pairs = adapters.Select(a => (ILowRankPair)a.Adapter).Where(p => p.LoraA.requires_grad && p.LoraB.requires_grad).ToList();
        if (pairs.Count == 0)
            throw new UserInputException("--precondition riemannian found no trainable low-rank (A, B) pairs in the model (check --targets); drop --precondition or attach a LoRA-family adapter.");
        return new RiemannianPreconditioner(pairs, delta);
    }

    /// <summary>Rewrites every pair's gradients in place (no-grad). Pairs without gradients are skipped.</summary>
    public void Apply()
    {
        using var _ = torch.no_grad();
        foreach (var p in _pairs)
        {
            using var scope = torch.NewDisposeScope();
            var gA = p.LoraA.grad;
            var gB = p.LoraB.grad;
            if (gA is null && gB is null) continue;
            var (newA, newB) = Precondition(p.LoraA, p.LoraB, gA, gB, _delta);
            if (gA is not null) gA.copy_(newA!);
            if (gB is not null) gB.copy_(newB!);
        }
        Steps++;
    }

    /// <summary>
    /// The preconditioned gradients of one pair, in the gradients' dtypes: (BᵀB + δI)⁻¹ grad_A and grad_B (AAᵀ + δI)⁻¹,
    /// computed in float64 (the r×r systems are solved, not inverted; δ &gt; 0 makes them positive definite).
    /// </summary>
    public static (Tensor? GradA, Tensor? GradB) Precondition(Tensor loraA, Tensor loraB, Tensor? gradA, Tensor? gradB, double delta)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var a = loraA.detach().to_type(ScalarType.Float64); // (r, in)
        var b = loraB.detach().to_type(ScalarType.Float64); // (out, r)
        using var eye = torch.eye(a.shape[0], dtype: ScalarType.Float64, device: a.device);
        Tensor? newA = null, newB = null;
        if (gradA is not null)
        {
            var pb = b.t().matmul(b) + eye * delta;                                   // (r, r) BᵀB + δI
            newA = torch.linalg.solve(pb, gradA.to_type(ScalarType.Float64)).to_type(gradA.dtype); // (r, in)
        }
        if (gradB is not null)
        {
            var pa = a.matmul(a.t()) + eye * delta;                                   // (r, r) AAᵀ + δI, symmetric
            // grad_B P⁻¹ = (P⁻¹ grad_Bᵀ)ᵀ since P is symmetric.
            newB = torch.linalg.solve(pa, gradB.to_type(ScalarType.Float64).t()).t().to_type(gradB.dtype); // (out, r)
        }
        return (newA is null ? null : scope.MoveToOuter(newA), newB is null ? null : scope.MoveToOuter(newB));
    }
}
