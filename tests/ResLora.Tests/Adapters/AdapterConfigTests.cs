using System.Text.Json;
using System.Text.Json.Serialization;
using ResLora.Adapters;

namespace ResLora.Tests.Adapters;

public sealed class AdapterConfigTests
{
    // Shape of a file written by PEFT 0.17 (sort_keys, indent 2), trimmed; includes fields we do not model.
    private const string PeftLoraJson = """
    {
      "alpha_pattern": {},
      "auto_mapping": null,
      "base_model_name_or_path": "TinyLlama/TinyLlama-1.1B",
      "bias": "none",
      "fan_in_fan_out": false,
      "inference_mode": true,
      "init_lora_weights": "gaussian",
      "layers_pattern": null,
      "layers_to_transform": null,
      "loftq_config": {},
      "lora_alpha": 32,
      "lora_bias": false,
      "lora_dropout": 0.05,
      "megatron_core": "megatron.core",
      "modules_to_save": null,
      "peft_type": "LORA",
      "r": 16,
      "rank_pattern": {"v_proj": 4},
      "revision": null,
      "target_modules": ["q_proj", "v_proj"],
      "task_type": "CAUSAL_LM",
      "use_dora": true,
      "use_rslora": false
    }
    """;

    [Fact]
    public void Parse_PeftFile_DispatchesOnPeftTypeAndWarnsAboutUnknownFields()
    {
        var (cfg, warnings) = AdapterConfigJson.Parse(PeftLoraJson);
        var c = Assert.IsType<LoraConfig>(cfg);
        Assert.Equal(16, c.R);
        Assert.Equal(32, c.LoraAlpha);
        Assert.Equal(0.05, c.LoraDropout);
        Assert.Equal(LoraInit.Gaussian, c.InitLoraWeights);
        Assert.True(c.UseDora);
        Assert.Equal("dora", c.Method);
        Assert.Equal(new[] { "q_proj", "v_proj" }, c.TargetModules!.Names);
        Assert.Equal(4, c.RankPattern["v_proj"]);
        Assert.Equal("TinyLlama/TinyLlama-1.1B", c.BaseModelNameOrPath);
        Assert.Equal(3, warnings.Count);
        Assert.Contains(warnings, w => w.Contains("'auto_mapping'"));
        Assert.Contains(warnings, w => w.Contains("'loftq_config'"));
        Assert.Contains(warnings, w => w.Contains("'megatron_core'") && w.Contains("\"megatron.core\""));
    }

    [Fact]
    public void Parse_StringTargetsAndInitFalse_GiveRegexAndRandomInit()
    {
        var (cfg, w) = AdapterConfigJson.Parse("""{"peft_type":"LORA","target_modules":".*\\.(q|v)_proj","init_lora_weights":false,"layers_to_transform":3}""");
        var c = (LoraConfig)cfg;
        Assert.Equal(@".*\.(q|v)_proj", c.TargetModules!.Pattern);
        Assert.Null(c.TargetModules.Names);
        Assert.Equal(LoraInit.Random, c.InitLoraWeights);
        Assert.Equal(new[] { 3 }, c.LayersToTransform);
        Assert.Empty(w);
        Assert.Equal(8, c.R); // PEFT defaults
        Assert.Equal(8, c.LoraAlpha);
    }

    [Fact]
    public void Parse_NullForNonNullableFields_KeepsThePeftDefault()
    {
        var (cfg, w) = AdapterConfigJson.Parse("""{"peft_type":"LORA","target_modules":["q_proj"],"rank_pattern":null,"alpha_pattern":null,"bias":null,"r":null,"exclude_modules":null}""");
        Assert.Empty(w);
        var lowRank = Assert.IsAssignableFrom<LowRankConfigBase>(cfg);
        Assert.Empty(lowRank.RankPattern);
        Assert.Empty(lowRank.AlphaPattern);
        Assert.Contains("\"bias\": \"none\"", AdapterConfigJson.Serialize(cfg));
        Assert.Equal(8, lowRank.R);
        Assert.Null(cfg.ExcludeModules);
    }

    [Theory]
    [InlineData("""{"peft_type":"LORA","target_modules":["q_proj"],"init_lora_weights":"eva"}""", "init_lora_weights")]
    [InlineData("""{"peft_type":"LORA","target_modules":["q_proj"],"fan_in_fan_out":true}""", "fan_in_fan_out")]
    [InlineData("""{"peft_type":"LORA","target_modules":["q_proj"],"r":0}""", "'r'")]
    [InlineData("""{"peft_type":"LORA","target_modules":["q_proj"],"modules_to_save":[""]}""", "modules_to_save")]
    [InlineData("""{"peft_type":"LORA","target_modules":5}""", "target_modules")]
    [InlineData("""{"peft_type":"LORA"}""", "target_modules")]
    [InlineData("""{"peft_type":"PREFIX_TUNING","target_modules":["q_proj"]}""", "LORA")]
    [InlineData("""{"r":8}""", "peft_type")]
    public void Parse_BadConfig_IsRefusedNamingTheField(string json, string expected)
    {
        var e = Assert.Throws<UserInputException>(() => AdapterConfigJson.Parse(json, "x/adapter_config.json"));
        Assert.Contains(expected, e.Message);
        Assert.StartsWith("x/adapter_config.json", e.Message);
    }

    [Fact]
    public void Serialize_Ia3WritesOnlyIa3ConfigFields_LoraKeepsTheLowRankOnes()
    {
        var ia3 = System.Text.Json.Nodes.JsonNode.Parse(AdapterConfigJson.Serialize(new Ia3Config { TargetModules = ModuleTargets.List("q_proj", "down_proj"), FeedforwardModules = ModuleTargets.List("down_proj") }))!.AsObject();
        foreach (var key in new[] { "r", "lora_alpha", "lora_dropout", "rank_pattern", "alpha_pattern", "init_lora_weights", "use_rslora", "bias", "lora_bias" })
            Assert.False(ia3.ContainsKey(key), key);
        foreach (var key in new[] { "target_modules", "feedforward_modules", "fan_in_fan_out", "init_ia3_weights", "modules_to_save" })
            Assert.True(ia3.ContainsKey(key), key);
        var lora = System.Text.Json.Nodes.JsonNode.Parse(AdapterConfigJson.Serialize(new LoraConfig { TargetModules = ModuleTargets.List("q_proj") }))!.AsObject();
        foreach (var key in new[] { "r", "lora_alpha", "lora_dropout", "bias", "lora_bias" })
            Assert.True(lora.ContainsKey(key), key);
    }

    [Fact]
    public void Parse_OldIa3ConfigWithLowRankFields_IgnoresThemSilently()
    {
        var (cfg, w) = AdapterConfigJson.Parse("""{"peft_type":"IA3","target_modules":["q_proj","down_proj"],"feedforward_modules":["down_proj"],"r":8,"lora_alpha":8,"lora_dropout":0.0,"rank_pattern":{},"alpha_pattern":{},"init_lora_weights":true,"use_rslora":false,"bias":"none","lora_bias":false}""");
        Assert.Empty(w);
        Assert.IsType<Ia3Config>(cfg);
    }

    [Fact]
    public void Serialize_LoraConfig_WritesEveryPeftFieldSortedAndRoundTrips()
    {
        var c = new LoraConfig
        {
            R = 4,
            LoraAlpha = 8,
            TargetModules = ModuleTargets.List("q_proj", "v_proj"),
            UseRslora = true,
            InitLoraWeights = LoraInit.Gaussian,
            RankPattern = new() { ["q_proj"] = 2 },
            BaseModelNameOrPath = "m",
        };
        string json = AdapterConfigJson.Serialize(c);
        using var doc = JsonDocument.Parse(json);
        var keys = doc.RootElement.EnumerateObject().Select(p => p.Name).ToList();
        // peft-format.md §2.3 "For our writer: emit at least"
        string[] required =
        {
            "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "r", "lora_alpha", "lora_dropout",
            "target_modules", "bias", "fan_in_fan_out", "modules_to_save", "init_lora_weights", "use_rslora", "use_dora",
            "rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern", "exclude_modules", "lora_bias", "peft_version",
        };
        Assert.Empty(required.Except(keys));
        Assert.Equal(keys.OrderBy(k => k, StringComparer.Ordinal), keys);
        Assert.Equal("LORA", doc.RootElement.GetProperty("peft_type").GetString());
        Assert.Equal("gaussian", doc.RootElement.GetProperty("init_lora_weights").GetString());
        Assert.Contains("\n  \"alpha_pattern\"", json); // indent 2
        var (back, w) = AdapterConfigJson.Parse(json);
        Assert.Empty(w);
        var b = (LoraConfig)back;
        Assert.Equal((4, 8.0, true, LoraInit.Gaussian, 2), (b.R, b.LoraAlpha, b.UseRslora, b.InitLoraWeights, b.RankPattern["q_proj"]));
        Assert.Equal(c.TargetModules.Names, b.TargetModules!.Names);
        Assert.Equal(AdapterConfigJson.Serialize(c), AdapterConfigJson.Serialize(b));
    }

    private sealed record ExtraConfig : LowRankConfigBase
    {
        [JsonPropertyName("peft_type")] public override string PeftType => "TEST_EXTRA";
        [JsonPropertyName("extra_knob")] public int ExtraKnob { get; init; } = 3;
        [JsonIgnore] public override string Method => "lora";
    }

    /// <summary>A method defined outside the library: a descriptor naming its record, registered at run time.</summary>
    private sealed class ExtraMethod() : AdapterMethod("test-extra", "TEST_EXTRA", typeof(ExtraConfig), "test", "lora_")
    {
        public override IEnumerable<MethodContender> Contenders(int rank) => Array.Empty<MethodContender>(); // never in the demo or bench
        public override MethodSetup Build(MethodSpec spec, MethodOptions? options) => new(WithCommon(new ExtraConfig(), spec));
        public override IReadOnlyList<Type> LayerTypes(AdapterConfigBase config) => new[] { typeof(LoraLinear) };
        public override IAdapterLayerBuilder CreateBuilder(AdapterConfigBase c, TorchSharp.torch.Generator? g) => new LoraLayerBuilder(new LoraConfig { R = ((LowRankConfigBase)c).R, TargetModules = c.TargetModules }, g);
    }

    private static readonly Lazy<bool> ExtraRegistered = new(() => { AdapterMethods.Register(new ExtraMethod()); return true; });

    [Fact]
    public void Register_NewMethod_ReadsAndWritesItsExtraFields()
    {
        _ = ExtraRegistered.Value;
        var (cfg, w) = AdapterConfigJson.Parse("""{"peft_type":"TEST_EXTRA","target_modules":["q_proj"],"extra_knob":7,"use_dora":true}""");
        Assert.Equal(7, Assert.IsType<ExtraConfig>(cfg).ExtraKnob);
        Assert.Single(w); // use_dora belongs to LoraConfig, not to this method
        Assert.Contains("'use_dora'", w[0]);
        Assert.Contains("\"extra_knob\": 7", AdapterConfigJson.Serialize(cfg));
    }
}
