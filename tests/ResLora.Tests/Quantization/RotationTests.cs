using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Quantization;
using ResLora.Tests.Infrastructure;
using TorchSharp;
using static TorchSharp.torch;

namespace ResLora.Tests.Quantization;

public sealed class RotationTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-rot-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Theory]
    [InlineData(12)]
    [InlineData(20)]
    [InlineData(28)]
    [InlineData(36)]
    [InlineData(44)]
    [InlineData(60)]
    [InlineData(76)]
    [InlineData(108)]
    [InlineData(140)]
    [InlineData(40)]
    public void PaleyConstructions_AreHadamardMatrices(int k)
    {
        var h = Hadamard.HadamardK(k);
        Assert.NotNull(h);
        using var t = torch.tensor(h!, ScalarType.Float64);
        Assert.True(t.abs().eq(1).all().item<bool>());
        Assert.Equal(0.0, (t.matmul(t.t()) - k * torch.eye(k, dtype: ScalarType.Float64)).abs().max().item<double>());
    }

    [Theory]
    [InlineData(64)]
    [InlineData(96)]
    [InlineData(704)]
    [InlineData(48)]
    [InlineData(86)]
    public void Transform_IsOrthogonal_AndMatchesItsMatrix(int n)
    {
        using var m = Hadamard.Matrix(n);
        Assert.True((m.matmul(m.t()) - torch.eye(n, dtype: ScalarType.Float64)).abs().max().item<double>() < 1e-10);
        using var gen = new torch.Generator(1);
        using var x = torch.randn(new long[] { 3, n }, ScalarType.Float64, generator: gen);
        Assert.True((Hadamard.Apply(x) - x.matmul(m.t())).abs().max().item<double>() < 1e-10);
    }

    [Fact]
    public void Fwht_EqualsSylvesterMatrix()
    {
        using var x = torch.arange(8, dtype: ScalarType.Float64).unsqueeze(0);
        // Ĥ_8 row sums: (0+1+...+7)/√8 for the first output; Sylvester rows alternate.
        using var y = Hadamard.Fwht(x);
        Assert.Equal(28 / Math.Sqrt(8), y[0, 0].item<double>(), 10);
        Assert.Equal(-4 / Math.Sqrt(8), y[0, 1].item<double>(), 10); // (0−1+2−3+4−5+6−7)/√8
        Assert.Equal(-16 / Math.Sqrt(8), y[0, 4].item<double>(), 10); // (0+1+2+3−4−5−6−7)/√8
    }

    private string SaveTiny(ModelConfig c, long seed)
    {
        string dir = Path.Combine(_dir, $"m{seed}");
        using var m = TinyModels.Build(c, seed);
        ModelFolder.Save(dir, c, m.BaseParameters().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)));
        return dir;
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void RotatedModel_GivesTheOriginalLogits(bool tied, bool qkvBias)
    {
        var c = TinyModels.Config(tied: tied, qkvBias: qkvBias) with { IntermediateSize = 48 }; // 48 = 12·4: a Paley factor
        string src = SaveTiny(c, 5), dst = Path.Combine(_dir, "rot");
        var warnings = RoLoraRotation.RotateFolder(src, dst, seed: 3);
        Assert.Empty(warnings);
        using var a = ModelSessions.LoadBase(src, new RuntimeOptions());
        using var b = ModelSessions.LoadBase(dst, new RuntimeOptions());
        Assert.NotNull(RotationRecord.FromConfig(b.Config));
        Assert.False(b.Config.TieWordEmbeddings);
        using var ids = TinyModels.RandomIds(2, 9, c.VocabSize, 1);
        using var la = a.forward(ids);
        using var lb = b.forward(ids);
        Assert.True((la - lb).abs().max().item<float>() < 1e-4, $"max diff {(la - lb).abs().max().item<float>()}");
        // The norms are now all ones and q_proj's weights changed: the rotation really happened.
        Assert.Equal(1f, b.BaseParameters()["model.layers.0.input_layernorm.weight"].min().item<float>());
        Assert.True((a.BaseParameters()["model.layers.0.self_attn.q_proj.weight"] - b.BaseParameters()["model.layers.0.self_attn.q_proj.weight"]).abs().max().item<float>() > 1e-2);
    }

    [Fact]
    public void RotatedModel_WithoutTheOnlineHadamardOrWithAnotherR1_LogitsBreakAndTheAdapterIsRefused()
    {
        var c = TinyModels.Config() with { IntermediateSize = 48 };
        string src = SaveTiny(c, 6), dst = Path.Combine(_dir, "rot"), other = Path.Combine(_dir, "rot-other");
        RoLoraRotation.RotateFolder(src, dst, seed: 3);
        RoLoraRotation.RotateFolder(src, other, seed: 4); // the same base, a different R1
        using var a = ModelSessions.LoadBase(src, new RuntimeOptions());
        using var b = ModelSessions.LoadBase(dst, new RuntimeOptions());
        using var b4 = ModelSessions.LoadBase(other, new RuntimeOptions());
        var rec3 = RotationRecord.FromConfig(b.Config)!;
        var rec4 = RotationRecord.FromConfig(b4.Config)!;
        Assert.Equal((3L, 4L), (rec3.Seed, rec4.Seed));
        Assert.NotEqual(rec3.SignsHash, rec4.SignsHash);
        using var ids = TinyModels.RandomIds(1, 7, c.VocabSize, 2);
        using var la = a.forward(ids);
        // Each rotation alone keeps the function; the two R1 really differ (the rotated embeddings are not the same).
        using (var l3 = b.forward(ids)) Assert.True((la - l3).abs().max().item<float>() < 1e-4);
        using (var l4 = b4.forward(ids)) Assert.True((la - l4).abs().max().item<float>() < 1e-4);
        Assert.True((b.BaseParameters()["model.embed_tokens.weight"] - b4.BaseParameters()["model.embed_tokens.weight"]).abs().max().item<float>() > 1e-2);

        // Another R1 on one side of the model (seed-4 embeddings into the seed-3 model) breaks the logits.
        using var mixed = ModelSessions.LoadBase(dst, new RuntimeOptions());
        using (torch.no_grad()) mixed.BaseParameters()["model.embed_tokens.weight"].copy_(b4.BaseParameters()["model.embed_tokens.weight"]);
        using (var lm = mixed.forward(ids)) Assert.True((la - lm).abs().max().item<float>() > 1e-2);

        // A RoLoRA adapter trained on the seed-3 base loads there and is refused on the seed-4 base, with the reason.
        var cfg = new RoLoraConfig { R = 2, LoraAlpha = 4, TargetModules = ModuleTargets.List("q_proj", "v_proj"), RotationSeed = 3, RotationSignsHash = rec3.SignsHash };
        string adapter = Path.Combine(_dir, "adapter");
        using (var trained = ModelSessions.LoadBase(dst, new RuntimeOptions(), new AdapterPlan(cfg)))
            AdapterFolder.Save(adapter, cfg, trained);
        using (var ok = ModelSessions.LoadWithAdapter(dst, adapter, new RuntimeOptions()))
            Assert.NotEmpty(AdapterModel.ByModulePath(ok));
        var refused = Assert.Throws<UserInputException>(() => ModelSessions.LoadWithAdapter(other, adapter, new RuntimeOptions()).Dispose());
        Assert.Contains("rotated with seed 4", refused.Message);
        Assert.Contains("the adapter with seed 3", refused.Message);
        Assert.Contains("a different R1 breaks the model", refused.Message);
        Assert.Contains(rec4.SignsHash, refused.Message);
        // On the un-rotated base it is refused too.
        Assert.Contains("not rotated", Assert.Throws<UserInputException>(() => ModelSessions.LoadWithAdapter(src, adapter, new RuntimeOptions()).Dispose()).Message);

        // Without R4's online half the rotated model breaks as well.
        foreach (var layer in b.Blocks) layer.DownProjInputTransform = null;
        using (var lb = b.forward(ids)) Assert.True((la - lb).abs().max().item<float>() > 1e-2);
        // Rotating a second time is refused: the record in config.json guards it.
        Assert.Throws<UserInputException>(() => RoLoraRotation.RotateFolder(dst, Path.Combine(_dir, "twice"), seed: 4));
    }
}

public sealed class OutlierPlantingTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-plant-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void PlantedOutliers_KeepTheFunction_AndRaiseKurtosis()
    {
        var c = TinyModels.Config();
        string src = Path.Combine(_dir, "m"), dst = Path.Combine(_dir, "p");
        using (var m = TinyModels.Build(c, 3))
            ModelFolder.Save(src, c, m.BaseParameters().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)));
        OutlierPlanting.PlantFolder(src, dst, 2, 50, 1);
        using var a = ModelSessions.LoadBase(src, new RuntimeOptions());
        using var b = ModelSessions.LoadBase(dst, new RuntimeOptions());
        using var ids = TinyModels.RandomIds(2, 8, c.VocabSize, 4);
        using var la = a.forward(ids);
        using var lb = b.forward(ids);
        Assert.True((la - lb).abs().max().item<float>() < 1e-4);
        double ka = ModelQuantizer.InputKurtosis(a, new[] { ids }).First().Kurtosis;
        double kb = ModelQuantizer.InputKurtosis(b, new[] { ids }).First().Kurtosis;
        Assert.True(kb > 5 * ka, $"kurtosis {ka} → {kb}");
    }
}
