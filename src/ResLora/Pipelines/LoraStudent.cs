using ResLora.Adapters;
using ResLora.Models;
using ResLora.Training;

namespace ResLora.Pipelines;

/// <summary>
/// A plain LoRA copy of a trained adapter, on the same base: what ResLoRA's is/ms adapters become when their residual
/// paths are folded away (least-squares fit, optionally distilled), so they can be merged or served as LoRA.
/// </summary>
public static class LoraStudent
{
    /// <summary>
    /// The base with LoRA layers of <paramref name="source"/>'s geometry (targets, ranks, α, rsLoRA) holding
    /// <paramref name="pairs"/> (module path → A (r, in), B (out, r)); every adapted module must have a pair.
    /// </summary>
    public static CausalLM Build(string modelDir, RuntimeOptions runtime, AdapterConfigBase source, IReadOnlyDictionary<string, (Tensor A, Tensor B)> pairs)
    {
        var lowRank = source as LowRankConfigBase ?? throw new UserInputException($"a LoRA student is built from low-rank pairs; a {source.Method} adapter has none.");
        var config = lowRank.AsLora() with { BaseModelNameOrPath = source.BaseModelNameOrPath, LoraDropout = 0 };
        var plan = new AdapterPlan(config);
        return ModelSessions.WithAdapters(ModelSessions.LoadBase(modelDir, runtime, plan), model =>
        {
            plan.EnsureAllPatternsMatched();
            using var _ = torch.no_grad();
            foreach (var (module, adapter) in AdapterModel.ByModulePath(model))
            {
                if (!pairs.TryGetValue(module, out var p)) throw new InvalidOperationException($"{module}: no folded pair for this module.");
                var lora = (LoraLinear)adapter;
                lora.LoraA.copy_(p.A);
                lora.LoraB.copy_(p.B);
            }
        });
    }
}

/// <summary>Distillation of a student model towards a teacher: KL(teacher ‖ student) on unlabelled text, with the ordinary trainer.</summary>
public static class Distillation
{
    /// <summary>The default peak learning rate of <c>--distill</c>.</summary>
    public const double DefaultLearningRate = 1e-3;

    /// <summary>
    /// Mean over real positions (mask 1) of KL(softmax(teacher) ‖ softmax(student)) per next-token distribution, in
    /// float32; the student's logits carry the gradient. Returns the loss and the number of positions.
    /// </summary>
    public static (Tensor Loss, long Positions) KlLoss(Tensor studentLogits, Tensor teacherLogits, Tensor mask)
    {
        var t = nn.functional.log_softmax(teacherLogits.detach().to_type(ScalarType.Float32), -1); // (b, t, v)
        var s = nn.functional.log_softmax(studentLogits.to_type(ScalarType.Float32), -1);
        var kl = t.exp().mul(t.sub(s)).sum(-1);                                                     // (b, t)
        var m = mask.to_type(ScalarType.Float32).to(kl.device);
        long n = (long)m.sum().item<float>();
        return (n > 0 ? kl.mul(m).sum().div(n) : kl.sum().mul(0), n);
    }

    /// <summary>
    /// Trains the student's trainable parameters for <paramref name="steps"/> optimizer steps on <paramref name="data"/>
    /// (AdamW, cosine schedule with 10% warm-up), the teacher evaluated without gradients on each batch. Returns the mean
    /// KL of the first and the last step.
    /// </summary>
    public static (double FirstKl, double LastKl) Run(CausalLM teacher, CausalLM student, IReadOnlyList<TokenizedExample> data, int padId,
        int steps, double learningRate = DefaultLearningRate, int batchSize = 8, long seed = 0)
    {
        if (steps < 1) throw new UserInputException($"--distill must be at least 1 step, got {steps}.");
        if (data.Count == 0) throw new UserInputException("distillation needs calibration text; none is left after tokenization.");
        teacher.eval();
        var options = new TrainOptions { Steps = steps, BatchSize = batchSize, LearningRate = learningRate, WarmupSteps = Math.Max(1, steps / 10), Seed = seed, MaxGradNorm = 1.0, EvalGenerateExamples = 0 };
        var trainer = new Trainer(student, options, Array.Empty<object>(), (logits, batch) =>
        {
            Tensor teacherLogits;
            using (torch.no_grad()) teacherLogits = teacher.forward(batch.InputIds, batch.AttentionMask);
            return KlLoss(logits, teacherLogits, batch.AttentionMask);
        });
        using var optimizer = trainer.CreateOptimizer();
        var source = new ShuffledBatchSource(data, batchSize, padId, seed, student.Device);
        double first = double.NaN, last = double.NaN;
        for (int step = 1; step <= steps; step++)
        {
            var (loss, _, _) = trainer.Step(optimizer, source, step, steps);
            if (step == 1) first = loss;
            last = loss;
        }
        student.eval();
        return (first, last);
    }
}
