using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using TorchSharp;

namespace ResLora.Tests.IO;

public sealed class HfCheckpointTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-ckpt-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static IEnumerable<KeyValuePair<string, torch.Tensor>> Weights(CausalLM m) =>
        m.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value));

    [Theory]
    [InlineData(false, long.MaxValue)]
    [InlineData(true, 20_000L)]
    public void SaveThenLoad_GivesTheSameLogits(bool tied, long shardBytes)
    {
        var c = TinyModels.Config(tied: tied);
        using var model = TinyModels.Build(c, seed: 3);
        ModelFolder.Save(_dir, c, Weights(model), shardBytes);
        Assert.Equal(shardBytes < long.MaxValue, File.Exists(Path.Combine(_dir, HfCheckpoint.IndexFile)));
        if (shardBytes < long.MaxValue) Assert.True(Directory.GetFiles(_dir, "model-0000*-of-*.safetensors").Length > 1);
        using var loaded = ModelSessions.LoadBase(_dir, new RuntimeOptions());
        using var ids = TinyModels.RandomIds(2, 7, c.VocabSize, 1);
        using var a = model.forward(ids);
        using var b = loaded.forward(ids);
        Assert.Equal(0.0, (a - b).abs().max().item<float>());
        Assert.All(loaded.parameters(), p => Assert.False(p.requires_grad));
    }

    [Fact]
    public void MismatchedWeights_AreListedByName()
    {
        var c = TinyModels.Config();
        using var model = TinyModels.Build(c);
        var w = Weights(model).Where(kv => kv.Key != "model.norm.weight").ToList();
        using var extra = torch.zeros(3);
        w.Add(new("model.layers.0.self_attn.rotary_emb.inv_freq", extra));
        w.Add(new("model.extra.weight", extra));
        ModelFolder.Save(_dir, c with { IntermediateSize = 40 }, w);
        var e = Assert.Throws<UserInputException>(() => ModelSessions.LoadBase(_dir, new RuntimeOptions()));
        Assert.Contains("missing (1): model.norm.weight", e.Message);
        Assert.Contains("unexpected (1): model.extra.weight", e.Message);
        Assert.Contains("model.layers.0.mlp.up_proj.weight: stored [48, 32], config.json implies [40, 32]", e.Message);
    }

    [Theory]
    [InlineData("hidden_size", 1_000_000_000)]
    [InlineData("intermediate_size", 1_000_000_000)]
    [InlineData("num_hidden_layers", 1_000_000_000)]
    [InlineData("vocab_size", 2_000_000_000)]
    public void Load_WithAHugeSizeInConfig_IsRefusedBeforeAllocating(string field, long value)
    {
        var c = TinyModels.Config();
        using (var model = TinyModels.Build(c, seed: 1)) ModelFolder.Save(_dir, c, Weights(model));
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "config.json")))!.AsObject();
        json[field] = value;
        File.WriteAllText(Path.Combine(_dir, "config.json"), json.ToJsonString());
        // Before the check, these built the model first: a native allocation failure or a crash, not this error.
        var e = Assert.Throws<UserInputException>(() => ModelSessions.LoadBase(_dir, new RuntimeOptions()).Dispose());
        Assert.Contains("config.json", e.Message);
    }

    [Fact]
    public void PickleOnlyFolder_IsRefused()
    {
        File.WriteAllText(Path.Combine(_dir, "config.json"), TinyModels.Config().ToJson());
        File.WriteAllBytes(Path.Combine(_dir, "pytorch_model.bin"), new byte[] { 0x80, 0x02 });
        var e = Assert.Throws<UserInputException>(() => HfCheckpoint.Open(_dir));
        Assert.Contains("pytorch_model.bin", e.Message);
        Assert.Contains("never loaded", e.Message);
        Assert.Contains("safe_serialization=True", e.Message);
    }

    [Fact]
    public void IndexPointingAtMissingShard_NamesTheShard()
    {
        var c = TinyModels.Config();
        using var model = TinyModels.Build(c);
        ModelFolder.Save(_dir, c, Weights(model), 20_000);
        var shard = Directory.GetFiles(_dir, "model-00002-of-*.safetensors").Single();
        File.Delete(shard);
        var e = Assert.Throws<FileNotFoundException>(() => HfCheckpoint.Open(_dir));
        Assert.Contains(Path.GetFileName(shard), e.Message);
    }

    private static double MaxDiff(torch.Tensor a, torch.Tensor b) => (a - b).abs().max().item<float>();

    [Fact]
    public void TiedCheckpoint_WithAStoredLmHeadUnlikeTheEmbedding_IgnoresItAndUsesTheEmbedding()
    {
        var c = TinyModels.Config(tied: true);
        using var model = TinyModels.Build(c);
        using var embed = model.BaseParameters()["model.embed_tokens.weight"].detach().clone();
        using var gen = new torch.Generator(77);
        using var storedHead = torch.randn(embed.shape, generator: gen) * 0.2;
        Assert.True(MaxDiff(storedHead, embed) > 0.1);
        var w = Weights(model).ToList();
        w.Add(new("lm_head.weight", storedHead));
        ModelFolder.Save(_dir, c, w);
        using var loaded = ModelSessions.LoadBase(_dir, new RuntimeOptions());
        Assert.DoesNotContain("lm_head.weight", loaded.state_dict().Keys);
        Assert.Equal(0.0, MaxDiff(loaded.BaseParameters()["model.embed_tokens.weight"], embed));
        using var ids = TinyModels.RandomIds(2, 7, c.VocabSize, 1);
        using var logits = loaded.forward(ids);
        using var hidden = loaded.HiddenStates(ids);
        using var byEmbedding = hidden.matmul(embed.t());
        using var byStoredHead = hidden.matmul(storedHead.t());
        Assert.True(MaxDiff(logits, byEmbedding) < 1e-5, $"logits vs final hidden · embedᵀ: {MaxDiff(logits, byEmbedding)}");
        Assert.True(MaxDiff(logits, byStoredHead) > 0.1, "a tied model must not use the stored lm_head");
        using var original = model.forward(ids);
        Assert.Equal(0.0, MaxDiff(logits, original));
    }

    [Fact]
    public void UntiedCheckpoint_WithLmHeadUnlikeTheEmbedding_LoadsAndUsesLmHead()
    {
        var c = TinyModels.Config(tied: false);
        using var model = TinyModels.Build(c, seed: 5);
        using var embed = model.BaseParameters()["model.embed_tokens.weight"].detach().clone();
        using var gen = new torch.Generator(78);
        using var storedHead = torch.randn(embed.shape, generator: gen) * 0.2;
        Assert.True(MaxDiff(storedHead, embed) > 0.1);
        var w = Weights(model).Where(kv => kv.Key != "lm_head.weight").ToList();
        w.Add(new("lm_head.weight", storedHead));
        ModelFolder.Save(_dir, c, w);
        using var loaded = ModelSessions.LoadBase(_dir, new RuntimeOptions());
        Assert.Equal(0.0, MaxDiff(loaded.BaseParameters()["lm_head.weight"], storedHead));
        Assert.Equal(0.0, MaxDiff(loaded.BaseParameters()["model.embed_tokens.weight"], embed));
        using var ids = TinyModels.RandomIds(2, 7, c.VocabSize, 1);
        using var logits = loaded.forward(ids);
        using var hidden = loaded.HiddenStates(ids);
        using var byHead = hidden.matmul(storedHead.t());
        using var byEmbedding = hidden.matmul(embed.t());
        Assert.True(MaxDiff(logits, byHead) < 1e-5, $"logits vs final hidden · lm_headᵀ: {MaxDiff(logits, byHead)}");
        Assert.True(MaxDiff(logits, byEmbedding) > 0.1, "an untied model must not use the embedding as its head");
    }

    [Fact]
    public void Open_MissingFolder_SaysNoSuchFolder()
    {
        Assert.Contains("no such folder", Assert.Throws<DirectoryNotFoundException>(() => HfCheckpoint.Open(Path.Combine(_dir, "nope"))).Message);
    }
}
