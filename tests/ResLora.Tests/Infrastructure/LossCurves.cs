using ResLora.Models;
using ResLora.Training;
using TorchSharp;

namespace ResLora.Tests.Infrastructure;

/// <summary>A few optimizer steps of the causal-LM loss on one batch, returning each step's loss: the curves tests compare.</summary>
internal static class LossCurves
{
    public static double[] Train(CausalLM m, torch.Tensor ids, torch.optim.Optimizer opt, int steps = 8)
    {
        m.train();
        var losses = new double[steps];
        for (int s = 0; s < steps; s++)
        {
            using var scope = torch.NewDisposeScope();
            opt.zero_grad();
            var (loss, _) = Trainer.CausalLmLoss(m.forward(ids), ids);
            loss.backward();
            opt.step();
            losses[s] = loss.item<float>();
        }
        return losses;
    }
}
