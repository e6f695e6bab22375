using ResLora.Models;
using ResLora.Text;

namespace ResLora.Training;

/// <summary>Loss, perplexity and exact-match accuracy of a model (with or without an adapter) on a data set.</summary>
public sealed record EvalResult(int Examples, int LossTokens, double Loss, double Perplexity, double? Accuracy, int AccuracyExamples)
{
    /// <summary>The answers behind <see cref="Accuracy"/>, each with its example's position in the examples evaluated.</summary>
    public IReadOnlyList<ExactMatchAnswer> Answers { get; init; } = Array.Empty<ExactMatchAnswer>();
}

public static class Evaluation
{
    /// <summary>Token-weighted mean loss over batches (eval mode, no gradients); the model's mode is restored.</summary>
    public static (double Loss, double Perplexity, int Tokens) Loss(CausalLM model, IEnumerable<TrainBatch> batches, int maxBatches = 0)
    {
        bool wasTraining = model.training;
        using var noGrad = torch.no_grad();
        model.eval();
        double sum = 0;
        long tokens = 0;
        int count = 0;
        try
        {
            foreach (var batch in batches)
            {
                using var scope = torch.NewDisposeScope();
                using (batch)
                {
                    var hidden = model.HiddenStates(batch.InputIds, batch.AttentionMask);
                    var (loss, n) = model.CausalLmLoss(hidden, batch.Labels);
                    sum += loss.item<float>() * n;
                    tokens += n;
                }
                if (maxBatches > 0 && ++count >= maxBatches) break;
            }
        }
        finally
        {
            if (wasTraining) model.train();
        }
        double mean = tokens > 0 ? sum / tokens : double.NaN;
        return (mean, Math.Exp(Math.Min(mean, 700)), (int)tokens);
    }

    /// <summary>
    /// The whole evaluation of <c>reslora eval</c>: loss/perplexity on every example, exact-match accuracy (the rule of
    /// <see cref="Accuracy"/>, as train's periodic evaluation) on up to <paramref name="accuracyLimit"/> prompt/completion examples.
    /// </summary>
    public static EvalResult Run(CausalLM model, ITextTokenizer tokenizer, IReadOnlyList<TextExample> examples, int seqLen, int batchSize, int maxNewTokens, int accuracyLimit)
    {
        var tok = Tokenization.Tokenize(examples, tokenizer, seqLen);
        if (tok.Examples.Count == 0) throw new UserInputException("no example is left to evaluate after tokenization (check --seq-len).");
        int pad = tokenizer.PadTokenId ?? (tokenizer.EosTokenIds.Count > 0 ? tokenizer.EosTokenIds[0] : 0);
        var (loss, ppl, tokens) = Loss(model, Tokenization.Sequential(tok.Examples, batchSize, pad, model.Device));
        var qa = examples.Select((e, i) => (Example: e, Index: i)).Where(x => !x.Example.IsPlainText).Take(Math.Max(0, accuracyLimit)).ToList();
        var answers = Accuracy.Answers(model, tokenizer, qa.Select(x => x.Example).ToList(), maxNewTokens).Select(a => a with { Index = qa[a.Index].Index }).ToList();
        double? acc = qa.Count > 0 ? Accuracy.Score(answers) : null;
        return new EvalResult(tok.Examples.Count, tokens, loss, ppl, acc, qa.Count) { Answers = answers };
    }
}
