using System.Text.Json.Nodes;
using ResLora.Tests.Infrastructure;

namespace ResLora.Tests.Cli;

/// <summary>
/// <c>reslora train --config FILE</c> (issue 28): a JSON or YAML recipe of train's flags trains like the same flags, the
/// command line overrides it, mistakes name the key and the file (exit 2), and the recipe a run writes re-runs it.
/// </summary>
[Collection("console")]
public sealed class TrainConfigCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-trainconfig-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Model() => Directory.Exists(Path.Combine(_dir, "model")) ? Path.Combine(_dir, "model") : CliHarness.ModelFolder(Path.Combine(_dir, "model"));

    private string Data() => File.Exists(Path.Combine(_dir, "train.jsonl")) ? Path.Combine(_dir, "train.jsonl") : CliHarness.Data(Path.Combine(_dir, "train.jsonl"), 24, 1);

    private static List<double> Losses(string dir) =>
        File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).Where(m => m["loss"] is not null && m["eval_loss"] is null).Select(m => m["loss"]!.GetValue<double>()).ToList();

    private string Write(string name, string text)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllText(path, text);
        return path;
    }

    /// <summary>The recipe as JSON: the same flags <see cref="Flags"/> gives.</summary>
    private string JsonRecipe(string outName) => new JsonObject
    {
        ["model"] = Model(), ["data"] = Data(), ["out"] = Path.Combine(_dir, outName), ["method"] = "lora", ["steps"] = 3, ["batch_size"] = 4,
        ["lr"] = 3e-3, ["log-every"] = 1, ["eval_generate"] = 0, ["threads"] = 1, ["prompt_template"] = "{Body}", ["completion-template"] = " {Answer}", ["seed"] = 7,
    }.ToJsonString();

    private string[] Flags(string outName) =>
        new[] { "train", "--model", Model(), "--data", Data(), "--out", Path.Combine(_dir, outName), "--method", "lora", "--steps", "3", "--batch-size", "4", "--lr", "3e-3", "--log-every", "1", "--eval-generate", "0", "--threads", "1", "--seed", "7" }
            .Concat(CliHarness.Templates).ToArray();

    [Fact]
    public void JsonAndYamlRecipes_TrainLikeTheSameFlags_AndTheWrittenRecipeReRuns()
    {
        var flags = CliHarness.Run(Flags("flags"));
        Assert.True(flags.Rc == 0, flags.Err);
        var json = CliHarness.Run("train", "--config", Write("recipe.json", JsonRecipe("json")));
        Assert.True(json.Rc == 0, json.Err);
        string yaml = $"model: '{Model()}'\ndata: '{Data()}'\nout: '{Path.Combine(_dir, "yaml")}'\nmethod: lora\nsteps: 3\nbatch_size: 4\nlr: 3e-3\nlog-every: 1\neval_generate: 0\nthreads: 1\nprompt_template: '{{Body}}'\ncompletion_template: ' {{Answer}}'\nseed: 7\n";
        var fromYaml = CliHarness.Run("train", "--config", Write("recipe.yaml", yaml));
        Assert.True(fromYaml.Rc == 0, fromYaml.Err);
        var expected = Losses(Path.Combine(_dir, "flags"));
        Assert.Equal(3, expected.Count);
        Assert.Equal(expected, Losses(Path.Combine(_dir, "json")));
        Assert.Equal(expected, Losses(Path.Combine(_dir, "yaml")));

        // The recipe the flags run wrote re-runs it (into another --out, given on the command line).
        string written = Path.Combine(_dir, "flags", "train_config.json");
        var recipe = JsonNode.Parse(File.ReadAllText(written))!.AsObject();
        Assert.Equal(3, recipe["steps"]!.GetValue<int>());
        Assert.Equal("{Body}", recipe["prompt-template"]!.GetValue<string>());
        Assert.False(recipe.ContainsKey("config"));
        var again = CliHarness.Run("train", "--config", written, "--out", Path.Combine(_dir, "again"));
        Assert.True(again.Rc == 0, again.Err);
        Assert.Equal(expected, Losses(Path.Combine(_dir, "again")));
        Assert.Equal(Path.Combine(_dir, "again"), JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "again", "train_config.json")))!["out"]!.GetValue<string>());
    }

    [Fact]
    public void TheCommandLine_OverridesTheRecipe()
    {
        var (rc, _, err) = CliHarness.Run("train", "--config", Write("r.json", JsonRecipe("ignored")), "--steps", "2", "--out", Path.Combine(_dir, "cli"));
        Assert.True(rc == 0, err);
        Assert.Equal(2, Losses(Path.Combine(_dir, "cli")).Count);
        Assert.False(Directory.Exists(Path.Combine(_dir, "ignored")));
        var recipe = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "cli", "train_config.json")))!;
        Assert.Equal(2, recipe["steps"]!.GetValue<int>());
        Assert.Equal("lora", recipe["method"]!.GetValue<string>());
    }

    [Fact]
    public void AnUnknownKey_IsExit2_NamingTheKeyTheFileAndTheNearestFlag()
    {
        string path = Write("typo.json", "{\"model\": \"m\", \"stesp\": 3}");
        var (rc, _, err) = CliHarness.Run("train", "--config", path);
        Assert.Equal(2, rc);
        Assert.Contains("unknown key 'stesp'", err);
        Assert.Contains(path, err);
        Assert.Contains("--steps", err);
        var yaml = CliHarness.Run("train", "--config", Write("typo.yaml", "batch_sise: 4\n"));
        Assert.Equal(2, yaml.Rc);
        Assert.Contains("--batch-size", yaml.Err);
    }

    [Fact]
    public void AWrongType_IsExit2_NamingTheKeyAndTheExpectedType()
    {
        var steps = CliHarness.Run("train", "--config", Write("bad.json", "{\"steps\": \"many\"}"));
        Assert.Equal(2, steps.Rc);
        Assert.Contains("key 'steps' (--steps) must be an integer", steps.Err);
        var pack = CliHarness.Run("train", "--config", Write("bad.yaml", "pack: 3\n"));
        Assert.Equal(2, pack.Rc);
        Assert.Contains("key 'pack' (--pack) must be true or false", pack.Err);
        var lr = CliHarness.Run("train", "--config", Write("bad2.json", "{\"lr\": [1]}"));
        Assert.Equal(2, lr.Rc);
        Assert.Contains("must be a number", lr.Err);
    }
}
