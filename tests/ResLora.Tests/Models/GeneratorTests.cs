using ResLora.Models;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.Models;

public sealed class GeneratorTests
{
    private static readonly int[] Prompt = { 1, 10, 20, 30 };

    [Theory]
    [InlineData(0.0, 0, 1.0)]
    [InlineData(1.0, 0, 1.0)]
    [InlineData(0.8, 5, 0.9)]
    public void KvCachedGeneration_ProducesTheUncachedTokens(double temperature, int topK, double topP)
    {
        var c = TinyModels.Config();
        using var model = TinyModels.Build(c, seed: 21);
        var o = new GenerationOptions { MaxNewTokens = 12, Temperature = temperature, TopK = topK, TopP = topP, Seed = 3 };
        var cached = TextGenerator.Generate(model, Prompt, o);
        var uncached = TextGenerator.Generate(model, Prompt, o with { UseKvCache = false });
        Assert.Equal(12, cached.Count);
        Assert.Equal(uncached, cached);
    }

    [Fact]
    public void Greedy_PicksTheArgmaxOfTheFullForward()
    {
        var c = TinyModels.Config();
        using var model = TinyModels.Build(c, seed: 22);
        var tokens = TextGenerator.Generate(model, Prompt, new GenerationOptions { MaxNewTokens = 3 });
        var context = Prompt.Select(i => (long)i).ToList();
        foreach (int tok in tokens)
        {
            using var logits = model.forward(torch.tensor(context.ToArray()).unsqueeze(0));
            Assert.Equal(logits[0, -1].argmax().item<long>(), tok);
            context.Add(tok);
        }
    }

    [Fact]
    public void Sampling_IsReproducibleBySeed_AndTopK1IsGreedy()
    {
        var c = TinyModels.Config();
        using var model = TinyModels.Build(c, seed: 23);
        var o = new GenerationOptions { MaxNewTokens = 16, Temperature = 1.5, Seed = 5 };
        var a = TextGenerator.Generate(model, Prompt, o);
        var b = TextGenerator.Generate(model, Prompt, o);
        var d = TextGenerator.Generate(model, Prompt, o with { Seed = 6 });
        Assert.Equal(a, b);
        Assert.NotEqual(a, d);
        var greedy = TextGenerator.Generate(model, Prompt, new GenerationOptions { MaxNewTokens = 16 });
        Assert.Equal(greedy, TextGenerator.Generate(model, Prompt, o with { TopK = 1 }));
        Assert.Equal(greedy, TextGenerator.Generate(model, Prompt, o with { TopP = 1e-6 }));
    }

    [Fact]
    public void StopsAtEos_AndIncludesIt()
    {
        var c = TinyModels.Config();
        using var model = TinyModels.Build(c, seed: 24);
        var free = TextGenerator.Generate(model, Prompt, new GenerationOptions { MaxNewTokens = 10 });
        int stop = free[3];
        int firstIndex = free.ToList().IndexOf(stop);
        var stopped = TextGenerator.Generate(model, Prompt, new GenerationOptions { MaxNewTokens = 10, EosTokenIds = new[] { stop } });
        Assert.Equal(free.Take(firstIndex + 1), stopped);
    }

    [Fact]
    public void BadInputs_AreRefusedWithTheFlagName()
    {
        var c = TinyModels.Config();
        using var model = TinyModels.Build(c);
        Assert.Contains("--temperature", Assert.Throws<UserInputException>(() => TextGenerator.Generate(model, Prompt, new GenerationOptions { Temperature = -1 })).Message);
        Assert.Contains("--top-p", Assert.Throws<UserInputException>(() => TextGenerator.Generate(model, Prompt, new GenerationOptions { TopP = 0 })).Message);
        Assert.Contains("vocab", Assert.Throws<UserInputException>(() => TextGenerator.Generate(model, new[] { 1, 999 }, new GenerationOptions())).Message);
        Assert.Contains("max_position_embeddings", Assert.Throws<UserInputException>(() => TextGenerator.Generate(model, Prompt, new GenerationOptions { MaxNewTokens = 500 })).Message);
    }
}
