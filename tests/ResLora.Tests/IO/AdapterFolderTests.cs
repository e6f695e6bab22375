using ResLora.Adapters;
using ResLora.IO;
using ResLora.Models;
using TorchSharp;
using static ResLora.Tests.Adapters.AdapterTestKit;
using static TorchSharp.torch;

namespace ResLora.Tests.IO;

public sealed class AdapterFolderTests
{
    private static readonly LinearSpec Q = new("model.layers.0.self_attn.q_proj", "q_proj", 0, 2, 2, true);

    private const string Config = """
    {"peft_type": "LORA", "r": 1, "lora_alpha": 2, "target_modules": ["q_proj"], "task_type": "CAUSAL_LM",
     "peft_version": "0.17.1", "use_qalora": false}
    """;

    /// <summary>A folder laid out as PEFT writes it, from known tensors (A = [[1, 1]], B = [[2], [0]]) in the given dtype.</summary>
    private static string WritePeftFolder(ScalarType dtype, string aKey, string bKey)
    {
        string dir = TempDir();
        File.WriteAllText(Path.Combine(dir, AdapterFolder.ConfigFileName), Config);
        using var a = torch.tensor(new float[] { 1, 1 }).reshape(1, 2).to_type(dtype);
        using var b = torch.tensor(new float[] { 2, 0 }).reshape(2, 1).to_type(dtype);
        SafetensorsWriter.Write(Path.Combine(dir, AdapterFolder.WeightsFileName),
            new Dictionary<string, Tensor> { [aKey] = a, [bKey] = b }, new Dictionary<string, string> { ["format"] = "pt" });
        return dir;
    }

    private static LoraLinear BuildFromConfig(AdapterConfigBase cfg)
    {
        var plan = new AdapterPlan(cfg, new Generator(3));
        var l = Assert.IsType<LoraLinear>(plan.Create(Q, ScalarType.Float32, CPU));
        using var _ = torch.no_grad();
        l.Weight.copy_(torch.tensor(new float[] { 1, 2, 3, 4 }).reshape(2, 2));
        l.Bias!.copy_(torch.tensor(new float[] { 0.5f, -0.5f }));
        return l;
    }

    [Theory]
    [InlineData(ScalarType.Float32, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")]
    [InlineData(ScalarType.Float16, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight")]
    [InlineData(ScalarType.BFloat16, "model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.0.self_attn.q_proj.lora_B.weight")]
    public void Load_PeftFolder_GivesTheHandComputedOutput(ScalarType dtype, string aKey, string bKey)
    {
        string dir = WritePeftFolder(dtype, aKey, bKey);
        using var contents = AdapterFolder.Load(dir);
        Assert.Contains("'use_qalora'", Assert.Single(contents.Warnings)); // peft_version is a known field
        using var l = BuildFromConfig(contents.Config);
        AdapterFolder.Apply(contents, new Dictionary<string, IAdapter> { [Q.Name] = l });
        using var y = l.call(torch.tensor(new float[] { 1, 2 }).reshape(1, 2));
        // W x + b = [5.5, 10.5]; (α/r)·B A x = 2·[2·3, 0] = [12, 0]  ⇒ [17.5, 10.5]
        Assert.Equal(new[] { 17.5f, 10.5f }, y.data<float>().ToArray());
    }

    [Theory]
    [InlineData("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.0.self_attn.q_proj", "lora_A.weight")]
    [InlineData("base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight", "model.layers.0.self_attn.q_proj", "lora_B.weight")]
    [InlineData("base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector", "model.layers.0.mlp.down_proj", "lora_magnitude_vector")]
    [InlineData("base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector.default.weight", "model.layers.0.mlp.down_proj", "lora_magnitude_vector")]
    [InlineData("base_model.model.model.weight_proj.default.lora_A.default.weight", "model.weight_proj.default", "lora_A.weight")] // #2772: 'weight'/'default' inside module names
    [InlineData("base_model.model.model.layers.1.self_attn.q_proj.lora_E.default", "model.layers.1.self_attn.q_proj", "lora_E")]
    [InlineData("base_model.model.model.layers.1.self_attn.q_proj.hada_w1_a", "model.layers.1.self_attn.q_proj", "hada_w1_a")]
    public void SplitKey_PeftKeys_InvertsTheNamingOnWholeSegments(string key, string module, string param)
    {
        Assert.Equal((module, param), AdapterFolder.SplitKey(key));
    }

    [Theory]
    [InlineData("base_model.model.model.layers.0.self_attn.q_proj.weight", "not an adapter tensor")]
    [InlineData("base_model.model.model.layers.0.self_attn.q_proj.lora_A.other.weight", "other adapters")]
    [InlineData("base_model.model.lora_A.weight", "not an adapter tensor")]
    public void SplitKey_NonAdapterOrForeignKeys_AreRefused(string key, string expected)
    {
        Assert.Contains(expected, Assert.Throws<UserInputException>(() => AdapterFolder.SplitKey(key)).Message);
    }

    [Fact]
    public void Apply_UnknownModuleOrShapeMismatch_IsAnErrorNamingKeyAndShapes()
    {
        string dir = WritePeftFolder(ScalarType.Float32,
            "base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight", "base_model.model.model.layers.5.self_attn.q_proj.lora_B.weight");
        using (var contents = AdapterFolder.Load(dir))
        using (var l = BuildFromConfig(contents.Config))
        {
            var e = Assert.Throws<UserInputException>(() => AdapterFolder.Apply(contents, new Dictionary<string, IAdapter> { [Q.Name] = l }));
            Assert.Contains("'base_model.model.model.layers.5.self_attn.q_proj.lora_", e.Message);
            Assert.Contains("model.layers.0.self_attn.q_proj", e.Message); // lists what exists
        }

        string dir2 = WritePeftFolder(ScalarType.Float32,
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
        using (var contents = AdapterFolder.Load(dir2))
        using (var l = BuildFromConfig((LowRankConfigBase)contents.Config with { R = 2 }))
        {
            var e = Assert.Throws<UserInputException>(() => AdapterFolder.Apply(contents, new Dictionary<string, IAdapter> { [Q.Name] = l }));
            Assert.Contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", e.Message);
            Assert.Contains("[1, 2]", e.Message);
            Assert.Contains("[2, 2]", e.Message);
        }

        using (var contents = AdapterFolder.Load(dir2))
        using (var l = BuildFromConfig(contents.Config))
        using (var k = BuildFromConfig(contents.Config))
        {
            var adapters = new Dictionary<string, IAdapter> { [Q.Name] = l, ["model.layers.0.self_attn.k_proj"] = k };
            Assert.Contains("no tensors for module 'model.layers.0.self_attn.k_proj'",
                Assert.Throws<UserInputException>(() => AdapterFolder.Apply(contents, adapters)).Message);
        }
    }

    [Fact]
    public void Save_FailingMidway_KeepsOtherFilesAndTheOldPair()
    {
        var cfg = new LoraConfig { R = 1, LoraAlpha = 2, TargetModules = ModuleTargets.List("q_proj") };
        using var l = BuildFromConfig(cfg);
        Perturb(l, 1);
        var adapters = new Dictionary<string, IAdapter> { [Q.Name] = l };
        string parent = TempDir();
        string dir = Path.Combine(parent, "out");
        AdapterFolder.Save(dir, cfg, adapters);
        File.WriteAllText(Path.Combine(dir, "README.md"), "card");
        string firstConfig = File.ReadAllText(Path.Combine(dir, AdapterFolder.ConfigFileName));
        Assert.Contains("\"inference_mode\": true", firstConfig);

        AdapterFolder.Save(dir, cfg with { BaseModelNameOrPath = "second" }, adapters);
        Assert.Equal("card", File.ReadAllText(Path.Combine(dir, "README.md")));
        Assert.Contains("\"second\"", File.ReadAllText(Path.Combine(dir, AdapterFolder.ConfigFileName)));

        AdapterFolder.BeforeCommit = _ => throw new IOException("disk full (simulated)");
        try
        {
            Assert.Throws<IOException>(() => AdapterFolder.Save(dir, cfg with { BaseModelNameOrPath = "third" }, adapters));
            Assert.Throws<IOException>(() => AdapterFolder.Save(Path.Combine(parent, "fresh"), cfg, adapters));
        }
        finally { AdapterFolder.BeforeCommit = null; }
        Assert.Contains("\"second\"", File.ReadAllText(Path.Combine(dir, AdapterFolder.ConfigFileName)));
        Assert.False(Directory.Exists(Path.Combine(parent, "fresh")));
        Assert.Equal(new[] { "out" }, Directory.GetFileSystemEntries(parent).Select(Path.GetFileName)); // no temp folders left
        using var contents = AdapterFolder.Load(dir);
        Assert.Equal(0.0, MaxAbsDiff(contents.Tensors[Q.Name]["lora_B.weight"], l.LoraB));
    }

    [Fact]
    public void SaveAndLoad_WrongConfigOrPickleOnly_AreRefusedWithTheFix()
    {
        var lora = new LoraConfig { R = 1, LoraAlpha = 2, TargetModules = ModuleTargets.List("q_proj") };
        using var l = BuildFromConfig(lora);
        string parent = TempDir();
        var e = Assert.Throws<ArgumentException>(() => AdapterFolder.Save(Path.Combine(parent, "x"), lora with { UseDora = true }, new Dictionary<string, IAdapter> { [Q.Name] = l }));
        Assert.Contains("holds a LoraLinear but the config describes a dora adapter", e.Message);
        Assert.Empty(Directory.GetFileSystemEntries(parent));

        string dir = TempDir();
        File.WriteAllText(Path.Combine(dir, AdapterFolder.ConfigFileName), Config);
        File.WriteAllBytes(Path.Combine(dir, "adapter_model.bin"), new byte[] { 0x80, 2 });
        Assert.Contains("safe_serialization=True", Assert.Throws<FileNotFoundException>(() => AdapterFolder.Load(dir)).Message);
    }
}
