using ResLora.Adapters;
using ResLora.IO;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using static ResLora.Tests.Infrastructure.CliHarness;

namespace ResLora.Tests.Pipelines;

/// <summary>
/// What headers cannot show: NaN/∞ values and float weights labelled as integers. inspect --check reports them; every
/// adapter load refuses a non-finite adapter; --check-weights refuses a bad base; a load refuses integer weights.
/// </summary>
[Collection("console")]
public sealed class WeightCheckTests : IDisposable
{
    private const string Q0 = "model.layers.0.self_attn.q_proj.weight", Up1 = "model.layers.1.mlp.up_proj.weight";

    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-check-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>A model with 3 NaNs and 1 +∞ in q_proj of layer 0.</summary>
    private string NaNModel() => ModelFolder(Path.Combine(_dir, "nan-model"), w =>
    {
        w[Q0].view(-1).narrow(0, 0, 3).fill_(double.NaN);
        w[Q0].view(-1).narrow(0, 5, 1).fill_(double.PositiveInfinity);
    });

    [Fact]
    public void Load_WithFloatWeightsLabelledAsIntegers_IsRefusedNamingTheTensor()
    {
        string model = ModelFolder(Path.Combine(_dir, "model"));
        Relabel(Path.Combine(model, "model.safetensors"), Up1, "F32", "I32"); // float32 bytes, same size: the header check passes
        var e = Assert.Throws<UserInputException>(() => ModelSessions.LoadBase(model, new RuntimeOptions()).Dispose());
        Assert.Contains(Path.Combine(model, "model.safetensors"), e.Message);
        Assert.Contains($"'{Up1}': stored as I32", e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }

    [Fact]
    public void InspectCheck_ReportsNonFiniteCountsAndIntegerWeights_WithExitCode1()
    {
        string clean = ModelFolder(Path.Combine(_dir, "model"));
        var ok = Run("inspect", "--model", clean, "--check");
        Assert.True(ok.Rc == 0, ok.Err + ok.Out);
        Assert.StartsWith("ok: 21 tensors", ok.Out);

        string bad = NaNModel();
        Relabel(Path.Combine(bad, "model.safetensors"), Up1, "F32", "I32");
        var r = Run("inspect", "--model", bad, "--check");
        Assert.True(r.Rc == 1, r.Err + r.Out);
        Assert.Contains($"tensor '{Q0}': 4 of 1,024 values are NaN or infinite", r.Out);
        Assert.Contains($"tensor '{Up1}': stored as I32", r.Out);
        Assert.Contains("2 problem(s) in 21 tensors", r.Out);
    }

    [Fact]
    public void CheckWeights_RefusesABadBaseForTrainAndMerge()
    {
        string model = NaNModel(), data = Data(Path.Combine(_dir, "d.jsonl"), 16, 1), outDir = Path.Combine(_dir, "run");
        var train = Run(new[] { "train", "--model", model, "--data", data, "--steps", "1", "--batch-size", "4", "--eval-fraction", "0", "--out", outDir, "--check-weights" }.Concat(CliHarness.Templates).ToArray());
        Assert.Equal(2, train.Rc);
        Assert.StartsWith($"error: --check-weights: 1 tensor problem(s) in {model}", train.Err);
        Assert.Contains($"'{Q0}': 4 of 1,024 values are NaN or infinite", train.Err);
        Assert.Single(train.Err.Trim().Split('\n'));
        var merge = Run("merge", "--model", model, "--adapter", Path.Combine(_dir, "no-adapter"), "--out", Path.Combine(_dir, "m"), "--check-weights");
        Assert.Equal(2, merge.Rc);
        Assert.Contains("--check-weights", merge.Err);
    }

    [Fact]
    public void NaNInAnAdapter_IsOneLineNamingFileAndTensor_ForMergeAndResume()
    {
        string model = ModelFolder(Path.Combine(_dir, "model")), data = Data(Path.Combine(_dir, "d.jsonl"), 16, 1), outDir = Path.Combine(_dir, "run");
        var train = Run(new[] { "train", "--model", model, "--data", data, "--steps", "4", "--save-every", "2", "--batch-size", "4", "--eval-fraction", "0", "--out", outDir }.Concat(CliHarness.Templates).ToArray());
        Assert.True(train.Rc == 0, train.Err);
        string key = AdapterFolder.KeyPrefix + "model.layers.1.self_attn.v_proj.lora_A.weight";
        string weights = Path.Combine(outDir, AdapterFolder.WeightsFileName);
        PoisonWithNaN(weights, key, 2);

        var merge = Run("merge", "--model", model, "--adapter", outDir, "--out", Path.Combine(_dir, "merged"));
        Assert.Equal(2, merge.Rc);
        Assert.Equal($"error: {weights}: tensor '{key}': 2 of 256 values are NaN or infinite; the adapter is broken (a diverged or damaged save). Retrain it, or resume from an earlier checkpoint.", merge.Err.Trim());
        Assert.False(Directory.Exists(Path.Combine(_dir, "merged")));

        // The checkpoint's adapter is read on resume: the same check.
        string ckptWeights = Path.Combine(outDir, "checkpoint", "adapter", AdapterFolder.WeightsFileName);
        PoisonWithNaN(ckptWeights, key, 1);
        var resume = Run(new[] { "train", "--model", model, "--data", data, "--steps", "4", "--save-every", "2", "--batch-size", "4", "--eval-fraction", "0", "--out", outDir, "--resume" }.Concat(CliHarness.Templates).ToArray());
        Assert.Equal(2, resume.Rc);
        Assert.Contains($"{ckptWeights}: tensor '{key}': 1 of 256 values are NaN or infinite", resume.Err);
    }

    [Fact]
    public void Encoders_GetTheSameChecks_IntegerWeightsRefused_NaNReportedByCheckWeights()
    {
        const string query = "encoder.layer.1.attention.self.query.weight";
        var (dir, _, _) = TinyEncoders.WriteFolder(Path.Combine(_dir, "bert"));
        string file = Path.Combine(dir, "model.safetensors");
        PoisonWithNaN(file, query, 2);
        var report = InspectPipeline.CheckWeights(dir);
        Assert.Equal($"{file}: tensor '{query}': 2 of 256 values are NaN or infinite", Assert.Single(report.Problems).ToString());
        Assert.Contains("--check-weights: 1 tensor problem(s)", Assert.Throws<UserInputException>(() => InspectPipeline.RequireCleanWeights(dir)).Message);

        Relabel(file, query, "F32", "I32");
        var e = Assert.Throws<UserInputException>(() => ResLora.Models.Encoders.EncoderLoader.LoadEncoder(dir, new RuntimeOptions()).Dispose());
        Assert.Contains($"'{query}': stored as I32", e.Message);
        Assert.Contains(InspectPipeline.CheckWeights(dir).Problems, p => p.Tensor == query && p.Problem.StartsWith("stored as I32", StringComparison.Ordinal));
    }
}
