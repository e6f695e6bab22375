using ResLora.Scoring;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Scoring;

public sealed class TokenLogprobsTests
{
    private static readonly int[] Tokens = { 1, 9, 33, 4, 17, 60, 22, 8 };

    [Fact]
    public void SummedLogprobs_EqualTheTrainingLossOnTheSameTokens()
    {
        using var model = TinyModels.Build(TinyModels.Config(), seed: 31);
        var scores = TokenLogprobs.Score(TokenLogprobs.Of(model), Tokens, from: 3);
        Assert.Equal(Tokens.Length - 3, scores.Count);
        Assert.Equal(Tokens.Skip(3), scores.Select(s => s.Token));
        // The independent path: the training loss with labels -100 on the first three positions (mean over the scored tokens).
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var ids = torch.tensor(Tokens.Select(t => (long)t).ToArray()).unsqueeze(0);
        var labels = torch.tensor(Tokens.Select((t, i) => i < 3 ? -100L : t).ToArray()).unsqueeze(0);
        var (loss, n) = model.CausalLmLoss(model.HiddenStates(ids), labels);
        Assert.Equal(Tokens.Length - 3, n);
        Assert.Equal(-loss.item<float>() * n, scores.Sum(s => s.Logprob), 4);
    }

    [Fact]
    public void TopAlternatives_AreSortedAndIncludeTheGreedyToken()
    {
        using var model = TinyModels.Build(TinyModels.Config(), seed: 32);
        var scores = TokenLogprobs.Score(TokenLogprobs.Of(model), Tokens, from: 1, topK: 5);
        foreach (var s in scores)
        {
            Assert.Equal(5, s.Top.Count);
            for (int j = 1; j < 5; j++) Assert.True(s.Top[j - 1].Logprob >= s.Top[j].Logprob);
            Assert.True(s.Logprob <= s.Top[0].Logprob + 1e-6);
            Assert.Equal(s.IsGreedy, s.Top[0].Token == s.Token);
            // Probabilities of the alternatives sum to at most one.
            Assert.True(s.Top.Sum(t => Math.Exp(t.Logprob)) <= 1 + 1e-5);
        }
        // A sequence made of the greedy choices is greedy everywhere.
        var greedy = new List<int> { 1 };
        for (int i = 0; i < 6; i++) greedy.Add(TokenLogprobs.Score(TokenLogprobs.Of(model), greedy.Append(0).ToList(), greedy.Count, topK: 1)[0].Top[0].Token);
        Assert.All(TokenLogprobs.Score(TokenLogprobs.Of(model), greedy, 1), s => Assert.True(s.IsGreedy));
    }

    [Fact]
    public void PositionZero_CannotBeScored()
    {
        using var model = TinyModels.Build(TinyModels.Config(), seed: 33);
        Assert.Throws<ArgumentOutOfRangeException>(() => TokenLogprobs.Score(TokenLogprobs.Of(model), Tokens, from: 0));
        Assert.Empty(TokenLogprobs.Score(TokenLogprobs.Of(model), Tokens, from: Tokens.Length));
    }
}
