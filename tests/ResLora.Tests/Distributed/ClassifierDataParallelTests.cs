using System.Text.Json.Nodes;
using ResLora.Adapters;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Training;

namespace ResLora.Tests.Distributed;

/// <summary>
/// The sequence-classification pipeline on two thread-ranks against one process (no MPI): per-row losses (mean over rows)
/// are weighted like token losses, and rank 0 alone writes the run.
/// </summary>
public sealed class ClassifierDataParallelTests : IDisposable
{
    private readonly string _dir = TestDirs.InMemory("reslora-dp-cls-");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void ClassifierTraining_OnTwoThreadRanks_EqualsOneProcess_AndOnlyRankZeroWrites()
    {
        // Without the encoder's dropout: each rank draws its own masks, so with dropout the runs agree only in distribution.
        var (model, _, _) = TinyEncoders.WriteFolder(Path.Combine(_dir, "bert"), seed: 4, edit: c =>
        {
            c["hidden_dropout_prob"] = 0.0;
            c["attention_probs_dropout_prob"] = 0.0;
        });
        var rng = new Random(1);
        string data = Path.Combine(_dir, "train.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 40).Select(_ =>
        {
            bool pos = rng.Next(2) == 0;
            return new JsonObject { ["text"] = $"the movie was {(pos ? "good" : "bad")} .", ["label"] = pos ? "pos" : "neg" }.ToJsonString();
        }));
        FineTuneRequest Request(string outDir, ResLora.Training.Distributed.ICommunicator? comm) => new()
        {
            ModelDir = model,
            DataPath = data,
            EvalFraction = 0,
            Method = new MethodSpec { Method = "lora", Rank = 4, Alpha = 8, Targets = ModuleTargets.AllLinear },
            Train = new TrainOptions { Steps = 6, BatchSize = 7, LearningRate = 2e-2, LogEvery = 1, SaveEvery = 0, Seed = 3, TensorBoard = false },
            OutDir = outDir,
            Communicator = comm,
        };
        var one = FineTuning.Run(Request(Path.Combine(_dir, "one"), null));
        var two = new ThreadGroup(2).Run(comm => FineTuning.Run(Request(Path.Combine(_dir, "two"), comm)));
        foreach (var rank in two)
            for (int i = 0; i < one.Curve.Count; i++) Assert.Equal(one.Curve[i].Loss, rank.Curve[i].Loss, 4);
        Assert.Equal(2, two[0].Ranks);
        Assert.True(File.Exists(Path.Combine(_dir, "two", "adapter_model.safetensors")));
        Assert.Single(File.ReadAllLines(Path.Combine(_dir, "two", TrainLoop.MetricsFile)), l => l.Contains("\"step\":1,", StringComparison.Ordinal));
    }
}
