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

    [Fact]
    public void RepetitionPenalty_DividesPositiveAndMultipliesNegativeLogitsOfSeenIds()
    {
        using var logits = torch.tensor(new[] { 2.0f, -1.0f, 0.5f, -3.0f, 4.0f, 0.0f });
        int[] seen = { 0, 1, 1, 3, 5 }; // id 1 twice: penalized once, as Hugging Face does (gather/scatter over the ids)
        using var up = TextGenerator.PenalizeRepeats(logits, seen, 2.0);
        Assert.Equal(new[] { 1.0f, -2.0f, 0.5f, -6.0f, 4.0f, 0.0f }, up.data<float>().ToArray());
        using var down = TextGenerator.PenalizeRepeats(logits, seen, 0.5);
        Assert.Equal(new[] { 4.0f, -0.5f, 0.5f, -1.5f, 4.0f, 0.0f }, down.data<float>().ToArray());
        using var off = TextGenerator.PenalizeRepeats(logits, seen, 1.0);
        Assert.Equal(logits.data<float>().ToArray(), off.data<float>().ToArray());
        Assert.Equal(new[] { 2.0f, -1.0f, 0.5f, -3.0f, 4.0f, 0.0f }, logits.data<float>().ToArray()); // the input is not changed

        // Greedy picks after the penalty: id 0 (3.0) was seen, so 3.0 / 2 = 1.5 loses to id 1's 2.5.
        using var pick = TextGenerator.PenalizeRepeats(torch.tensor(new[] { 3.0f, 2.5f }), new[] { 0 }, 2.0);
        Assert.Equal(1L, pick.argmax().item<long>());
    }

    [Fact]
    public void RepetitionPenalty_InTheEngine_DiscouragesRepeats_AndBadValuesNameTheFlag()
    {
        var c = TinyModels.Config();
        using var model = TinyModels.Build(c, seed: 21);
        var o = new GenerationOptions { MaxNewTokens = 24 };
        var free = TextGenerator.Generate(model, Prompt, o);
        var penalized = TextGenerator.Generate(model, Prompt, o with { RepetitionPenalty = 100 });
        // A strong penalty makes greedy decoding pick ids it has not used yet: more distinct ids than without.
        Assert.True(free.Distinct().Count() < free.Count, "the tiny model should repeat itself without a penalty");
        Assert.True(penalized.Distinct().Count() > free.Distinct().Count(), $"free {string.Join(",", free)}; penalized {string.Join(",", penalized)}");
        foreach (var bad in new[] { 0.0, -1.0, double.NaN, double.PositiveInfinity })
            Assert.Contains("--repetition-penalty", Assert.Throws<UserInputException>(() => TextGenerator.Generate(model, Prompt, o with { RepetitionPenalty = bad })).Message);
    }

    [Fact]
    public void StopStrings_EndGenerationAtTheTokenThatCompletesThem_AndCutAtStopRemovesThem()
    {
        var o = new GenerationOptions { StopStrings = new[] { "ab", "\n" }, Decode = t => string.Concat(t.Select(i => (char)('a' + i))) };
        Assert.Equal("xy", o.CutAtStop("xyab\nz"));
        Assert.Equal("xy", o.CutAtStop("xy\nab"));
        Assert.Equal("xyz", o.CutAtStop("xyz"));
        var c = TinyModels.Config();
        using var model = TinyModels.Build(c, seed: 21);
        var free = TextGenerator.Generate(model, Prompt, new GenerationOptions { MaxNewTokens = 12 });
        // Stop at the text of the 5th and 6th tokens (as characters): generation ends at the 6th.
        Func<IReadOnlyList<int>, string> decode = t => string.Concat(t.Select(i => (char)(0x100 + i)));
        string stop = decode(free.Skip(4).Take(2).ToList());
        int first = decode(free).IndexOf(stop, StringComparison.Ordinal);
        var stopped = TextGenerator.Generate(model, Prompt, new GenerationOptions { MaxNewTokens = 12, StopStrings = new[] { stop }, Decode = decode });
        Assert.Equal(free.Take(first + 2), stopped);
        Assert.Throws<ArgumentException>(() => TextGenerator.Generate(model, Prompt, new GenerationOptions { StopStrings = new[] { "x" } }));
        Assert.Contains("--stop", Assert.Throws<UserInputException>(() => TextGenerator.Generate(model, Prompt, new GenerationOptions { StopStrings = new[] { "" }, Decode = decode })).Message);
    }
}
