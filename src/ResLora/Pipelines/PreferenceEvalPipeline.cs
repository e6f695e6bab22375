using ResLora.Adapters;
using ResLora.Models;
using ResLora.Text;
using ResLora.Training;
using ResLora.Training.Preference;

namespace ResLora.Pipelines;

/// <summary>
/// How a model (with an adapter, or the base alone) ranks held-out preference pairs (<c>reslora eval --preference-data</c>).
/// </summary>
/// <param name="Pairs">Pairs scored.</param>
/// <param name="LikelihoodAccuracy">Share of pairs whose chosen response has the higher summed log-probability under the model.</param>
/// <param name="RewardAccuracy">With an adapter: share of pairs whose chosen response gained more log-probability over the base
/// model (adapter off) than the rejected one did: DPO's implicit-reward accuracy, TRL's <c>rewards/accuracies</c> (β only
/// scales the rewards). Null without an adapter.</param>
/// <param name="MeanRewardMargin">With an adapter: mean of (π_c − ref_c) − (π_r − ref_r), the margin at β = 1.</param>
/// <param name="MeanLogpChosen">Mean summed log-probability of the chosen responses.</param>
/// <param name="MeanLogpRejected">Mean summed log-probability of the rejected responses.</param>
public sealed record PreferenceEvalResult(int Pairs, double LikelihoodAccuracy, double? RewardAccuracy, double? MeanRewardMargin, double MeanLogpChosen, double MeanLogpRejected);

/// <summary>The library function behind <c>reslora eval --preference-data</c>.</summary>
public static class PreferenceEvalPipeline
{
    /// <summary>Loads the model (and adapter, unmerged), reads and tokenizes the pairs as training does, and scores them.</summary>
    public static PreferenceEvalResult Run(string modelDir, string? adapterDir, string dataPath, DataTemplates templates, int seqLen, int batchSize, RuntimeOptions runtime, Action<string>? warn = null)
    {
        if (batchSize < 1) throw new UserInputException($"--batch-size must be at least 1, got {batchSize}.");
        if (seqLen < 2) throw new UserInputException($"--seq-len must be at least 2, got {seqLen}.");
        var chat = templates.ForModel(modelDir).Chat ?? (adapterDir is null ? null : TrainingDataRecord.Read(adapterDir)?.Templates.Chat);
        var examples = PreferenceRecords.Load(dataPath, chat);
        var tokenizer = TokenizerLoader.Load(modelDir);
        var pairs = PreferenceData.Tokenize(tokenizer, examples, seqLen).Pairs;
        using var model = ModelSessions.Load(modelDir, adapterDir, runtime, warn);
        int pad = tokenizer.PadTokenId ?? (tokenizer.EosTokenIds.Count > 0 ? tokenizer.EosTokenIds[0] : 0);
        return Score(model, pairs, batchSize, pad, withReference: adapterDir is not null);
    }

    /// <summary>Scores tokenized pairs in eval mode; <paramref name="withReference"/> also scores them with the adapters off.</summary>
    public static PreferenceEvalResult Score(CausalLM model, IReadOnlyList<PreferencePair> pairs, int batchSize, int padId, bool withReference)
    {
        if (pairs.Count == 0) throw new UserInputException("no preference pairs to score.");
        model.eval();
        var policy = new float[pairs.Count * 2];
        float[]? reference = null;
        for (int i = 0; i < pairs.Count; i += batchSize)
        {
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            using var batch = PreferenceData.Collate(pairs.Skip(i).Take(batchSize).ToList(), padId, model.Device);
            model.SequenceLogps(model.HiddenStates(batch.InputIds, batch.AttentionMask), batch.Labels).Sum.to(CPU).data<float>().ToArray().CopyTo(policy, 2 * i);
            if (!withReference) continue;
            reference ??= new float[pairs.Count * 2];
            using (AdapterSwitch.Off(model))
                model.SequenceLogps(model.HiddenStates(batch.InputIds, batch.AttentionMask), batch.Labels).Sum.to(CPU).data<float>().ToArray().CopyTo(reference, 2 * i);
        }
        int n = pairs.Count;
        double likelihood = Enumerable.Range(0, n).Count(k => policy[2 * k] > policy[2 * k + 1]) / (double)n;
        double? rewardAcc = null, margin = null;
        if (reference is not null)
        {
            var margins = Enumerable.Range(0, n).Select(k => (double)(policy[2 * k] - reference[2 * k]) - (policy[2 * k + 1] - reference[2 * k + 1])).ToList();
            rewardAcc = margins.Count(m => m > 0) / (double)n;
            margin = margins.Average();
        }
        return new PreferenceEvalResult(n, likelihood, rewardAcc, margin,
            Enumerable.Range(0, n).Average(k => (double)policy[2 * k]), Enumerable.Range(0, n).Average(k => (double)policy[2 * k + 1]));
    }
}
