using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using ResLora.Cli;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Tests.IO;
using TorchSharp;
using Xunit.Abstractions;

namespace ResLora.Tests.Models;

/// <summary>
/// Fuzzing through the whole load: mutated weight files and mutated config.json files go through the checked open,
/// the model build and a short generation. Every outcome is a generation or one of the errors the CLI reports as bad
/// input (<see cref="CliErrors.IsUserError"/>); a config.json error names config.json. Nothing else may escape.
/// </summary>
public sealed class LoadFuzzTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = TestDirs.InMemory("reslora-loadfuzz-");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string TinyFolder()
    {
        string dir = Path.Combine(_dir, "model");
        var c = TinyModels.Config() with { MaxPositionEmbeddings = 16 };
        using var m = TinyModels.Build(c, seed: 3);
        ModelFolder.Save(dir, c, m.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)));
        return dir;
    }

    private static readonly GenerationOptions Greedy = new() { MaxNewTokens = 3 };

    /// <summary>Loads and generates; returns null, or the error when it is one the CLI reports as bad input.</summary>
    private static Exception? LoadAndGenerate(string dir, string what)
    {
        try
        {
            using var m = ModelSessions.LoadBase(dir, new RuntimeOptions());
            TextGenerator.Generate(m, new[] { 1, 5, 9 }, Greedy);
            return null;
        }
        catch (Exception e) when (CliErrors.IsUserError(e))
        {
            Assert.DoesNotContain("\n   at ", e.Message);
            return e;
        }
        catch (Exception e)
        {
            Assert.Fail($"{what}: {e.GetType().Name} escaped (the CLI would report a bug): {e}");
            throw;
        }
    }

    public const int WeightFileMutations = 200;

    [Fact]
    public void MutatedWeightFiles_LoadAndGenerate_OrGiveAUserError()
    {
        string dir = TinyFolder(), weights = Path.Combine(dir, "model.safetensors");
        byte[] valid = File.ReadAllBytes(weights);
        var r = new Random(4242);
        int generated = 0, refused = 0;
        var clock = Stopwatch.StartNew();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        for (int i = 0; i < WeightFileMutations; i++)
        {
            byte[] mutated = SafetensorsFuzzTests.Mutate(valid, r);
            File.WriteAllBytes(weights, mutated);
            if (LoadAndGenerate(dir, $"weight mutation {i}") is { } e)
            {
                Assert.Contains(dir, e.Message);
                refused++;
            }
            else generated++;
        }
        output.WriteLine($"{WeightFileMutations} weight-file mutations through load + generate: {generated} generated, {refused} refused, in {clock.Elapsed.TotalSeconds:0.0} s ({(Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalSeconds:0.0} s CPU)");
        Assert.True(refused > WeightFileMutations / 2, $"refused {refused}");
        Assert.True(generated > 5, $"generated {generated}");
    }

    public const int ConfigMutations = 500;

    private static readonly string[] Fields =
    {
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "head_dim", "hidden_act", "rms_norm_eps", "rope_theta", "rope_scaling", "max_position_embeddings", "tie_word_embeddings",
        "attention_bias", "mlp_bias", "torch_dtype", "bos_token_id", "eos_token_id", "pad_token_id", "model_type", "architectures",
        "reslora_rotation", "reslora_quantization",
    };

    /// <summary>Fields the weights' shapes do not pin down: mutating only these reaches the model build and generation.</summary>
    private static readonly string[] Free =
    {
        "hidden_act", "rms_norm_eps", "rope_theta", "rope_scaling", "max_position_embeddings", "torch_dtype", "bos_token_id",
        "eos_token_id", "pad_token_id", "model_type", "architectures", "reslora_rotation", "reslora_quantization", "attention_bias",
    };

    private static readonly string[] Values =
    {
        "null", "true", "false", "0", "-1", "1", "2", "3", "16", "1.5", "-0.5", "1e-300", "1e300", "2147483647", "2147483648", "-2147483648",
        "9223372036854775807", "1000000000", "\"32\"", "\"x\"", "\"silu\"", "\"gelu\"", "\"\"", "[]", "[1, 2]", "[\"a\"]", "{}", "[[1]]",
    };

    /// <summary>Values shaped like the object fields, so that their own contents get fuzzed too.</summary>
    private static readonly Dictionary<string, string[]> Shaped = new()
    {
        ["rope_scaling"] = new[]
        {
            "{\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 1, \"high_freq_factor\": 1, \"original_max_position_embeddings\": 0}",
            "{\"rope_type\": \"linear\", \"factor\": 0}", "{\"type\": \"yarn\", \"factor\": 2}", "{\"rope_type\": \"linear\", \"factor\": 1e300}",
            "{\"rope_type\": \"llama3\", \"factor\": \"x\"}", "{\"rope_type\": 5}", "{\"rope_type\": \"llama3\", \"factor\": 2, \"low_freq_factor\": -1, \"high_freq_factor\": 0}",
        },
        ["reslora_rotation"] = new[]
        {
            "{\"seed\": \"x\"}", "{\"seed\": 1, \"hidden_factor\": \"9x9\"}", "{\"seed\": 1}", "{\"online_hadamard_down_proj\": \"yes\"}", "{\"seed\": 1e300}",
            "{\"kind\": null, \"online_hadamard_down_proj\": true}", "[]", "\"rotated\"",
        },
        ["reslora_quantization"] = new[]
        {
            "{\"abits\": 0, \"wbits\": 4}", "{\"abits\": -3}", "{\"abits\": 1e30, \"wbits\": 4}", "{\"abits\": \"x\"}", "{\"abits\": 8, \"wbits\": 4}",
            "{\"abits\": 4, \"wbits\": 4, \"method\": 7}", "{\"abits\": 2, \"wbits\": 16, \"method\": \"gptq\"}", "5",
        },
    };

    /// <summary>One mutated config.json: fields given other values or types, removed or duplicated; or the text damaged.</summary>
    private static string MutateConfig(string valid, Random r)
    {
        switch (r.Next(10))
        {
            case 0: return valid[..r.Next(valid.Length)]; // truncated
            case 1:
                {
                    var sb = new StringBuilder(valid);
                    const string chars = "{}[],:\"0-e.\\ a";
                    for (int k = r.Next(1, 4); k > 0; k--) sb[r.Next(sb.Length)] = chars[r.Next(chars.Length)];
                    return sb.ToString();
                }
            case 2: return new[] { "", "null", "[]", "{}", "\"config\"", "1", new string('[', 5000), "{\"hidden_size\": 32, \"hidden_size\": 64}" }[r.Next(8)];
            default:
                {
                    var root = JsonNode.Parse(valid)!.AsObject();
                    var fields = r.Next(2) == 0 ? Free : Fields;
                    for (int k = r.Next(1, 4); k > 0; k--)
                    {
                        string f = fields[r.Next(fields.Length)];
                        if (r.Next(4) == 0) root.Remove(f);
                        else if (Shaped.TryGetValue(f, out var shaped) && r.Next(3) > 0) root[f] = JsonNode.Parse(shaped[r.Next(shaped.Length)]);
                        else root[f] = JsonNode.Parse(Values[r.Next(Values.Length)]);
                    }
                    return root.ToJsonString();
                }
        }
    }

    [Fact]
    public void MutatedConfigs_OpenLoadAndGenerate_OrGiveAUserErrorNamingConfigJson()
    {
        string dir = TinyFolder(), path = Path.Combine(dir, ModelFolder.ConfigFile);
        string valid = File.ReadAllText(path);
        var r = new Random(777);
        int opened = 0, generated = 0, refused = 0;
        var clock = Stopwatch.StartNew();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        for (int i = 0; i < ConfigMutations; i++)
        {
            string text = MutateConfig(valid, r);
            File.WriteAllText(path, text);
            string what = $"config mutation {i}: {text}";
            try
            {
                var (_, ckpt, _) = ModelFolder.OpenChecked(dir);
                ckpt.Dispose();
                opened++;
            }
            catch (Exception e) when (CliErrors.IsUserError(e))
            {
                Assert.True(e.Message.Contains(ModelFolder.ConfigFile, StringComparison.Ordinal), $"{what}: the error does not name config.json: {e.Message}");
                refused++;
                continue;
            }
            catch (Exception e)
            {
                Assert.Fail($"{what}: {e.GetType().Name} escaped the checked open: {e}");
            }
            // It matches the weights: the rest of the load and a generation (transforms, rotary, quantizers) must cope too.
            if (LoadAndGenerate(dir, what) is null) generated++;
            else refused++;
        }
        output.WriteLine($"{ConfigMutations} config.json mutations: {opened} passed the checked open ({generated} generated), {refused} refused, in {clock.Elapsed.TotalSeconds:0.0} s ({(Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalSeconds:0.0} s CPU)");
        Assert.True(refused > ConfigMutations / 3, $"refused {refused}");
        Assert.True(generated > 20, $"generated {generated}");
    }

    [Theory]
    [InlineData("reslora_rotation", "{\"seed\": \"x\"}")]
    [InlineData("reslora_rotation", "[]")]
    [InlineData("reslora_quantization", "{\"abits\": 1e30, \"wbits\": 4}")]
    [InlineData("reslora_quantization", "{\"abits\": 0, \"wbits\": 4}")]
    public void DamagedResloraRecords_AreUserErrorsNamingTheField(string field, string value)
    {
        // Found by the config fuzz: a JSON error (reported as a bug), an error without the file, or a record ignored.
        string dir = TinyFolder(), path = Path.Combine(dir, ModelFolder.ConfigFile);
        var root = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        root[field] = JsonNode.Parse(value);
        File.WriteAllText(path, root.ToJsonString());
        var e = Assert.Throws<UserInputException>(() => ModelSessions.LoadBase(dir, new RuntimeOptions()).Dispose());
        Assert.StartsWith($"config.json: '{field}'", e.Message);
    }
}
