using ResLora.Adapters;
using ResLora.Models;
using ResLora.Tests.Infrastructure;
using ResLora.Training;
using ResLora.Training.Distributed;
using TorchSharp;

namespace ResLora.Tests.Distributed;

/// <summary>The arithmetic of data parallelism without MPI: shards, loss weights, buckets, seeds, and whole sharded steps on threads.</summary>
public sealed class DataParallelTests
{
    [Fact]
    public void ShardRows_AreContiguousDisjoint_CoverTheBatch_AndDifferByAtMostOne()
    {
        for (int size = 1; size <= 5; size++)
            for (int rows = 0; rows <= 17; rows++)
            {
                var shards = Enumerable.Range(0, size).Select(r => DataParallel.ShardRows(rows, r, size)).ToList();
                Assert.Equal(0, shards[0].Start);
                for (int r = 1; r < size; r++) Assert.Equal(shards[r - 1].Start + shards[r - 1].Count, shards[r].Start);
                Assert.Equal(rows, shards.Sum(s => s.Count));
                Assert.True(shards.Max(s => s.Count) - shards.Min(s => s.Count) <= 1, $"{rows} rows over {size}");
            }
        Assert.Throws<ArgumentOutOfRangeException>(() => DataParallel.ShardRows(8, 2, 2));
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(6)] // one rank gets no row of the 5
    public void LossWeights_MakeTheRanksSumTheGlobalMean(int ranks)
    {
        using var scope = torch.NewDisposeScope();
        var gen = new torch.Generator(7);
        var logits = torch.randn(new long[] { 5, 6, 11 }, generator: gen);
        var labels = torch.randint(0, 11, new long[] { 5, 6 }, generator: gen);
        labels[1, ..] = torch.tensor(-100L); // a row without loss tokens
        labels[3, 2..] = torch.tensor(-100L);
        var (whole, n) = Trainer.CausalLmLoss(logits, labels);
        double sum = 0, sumOfSums = 0;
        long items = 0;
        var parts = new List<(double Mean, long N)>();
        for (int r = 0; r < ranks; r++)
        {
            var (s, c) = DataParallel.ShardRows(5, r, ranks);
            if (c == 0) continue;
            var (mean, nr) = Trainer.CausalLmLoss(logits.narrow(0, s, c), labels.narrow(0, s, c));
            parts.Add((mean.item<float>(), nr));
            items += nr;
            sumOfSums += nr > 0 ? mean.item<float>() * nr : mean.item<float>();
        }
        Assert.Equal(n, items);
        foreach (var (mean, nr) in parts) sum += mean * DataParallel.LossWeight(nr, items);
        Assert.Equal(whole.item<float>(), sum, 5);
        Assert.Equal(whole.item<float>(), DataParallel.GlobalMean(sumOfSums, items), 5);
        Assert.Equal(0, DataParallel.LossWeight(0, 0));
        Assert.Equal(0, DataParallel.GlobalMean(0, 0));
    }

    [Fact]
    public void Buckets_KeepOrder_RespectTheLimit_AndGiveABigItemItsOwn()
    {
        var b = DataParallel.Buckets(new long[] { 3, 3, 5, 20, 1, 1 }, 8);
        Assert.Equal(new[] { new[] { 0, 1 }, new[] { 2 }, new[] { 3 }, new[] { 4, 5 } }, b.Select(x => x.ToArray()).ToArray());
    }

    [Fact]
    public void DropoutSeeds_DifferByRankAndStep_AndAreReproducible()
    {
        var seeds = new HashSet<long>();
        for (int step = 1; step <= 50; step++)
            for (int rank = 0; rank < 8; rank++)
            {
                long s = DataParallel.DropoutSeed(42, step, rank);
                Assert.True(s >= 0);
                Assert.True(seeds.Add(s));
                Assert.Equal(s, DataParallel.DropoutSeed(42, step, rank));
            }
        Assert.NotEqual(DataParallel.DropoutSeed(42, 1, 0), DataParallel.DropoutSeed(43, 1, 0));
    }

    [Fact]
    public void AllReduceGradients_SumsEveryRanksGradient_InSmallBuckets()
    {
        var grads = new[] { new[] { 1f, 2f, 3f, 4f, 5f, 6f }, new[] { 10f, 20f, 30f, 40f, 50f, 60f } };
        var group = new ThreadGroup(2);
        var results = group.Run(comm =>
        {
            using var a = new TorchSharp.Modules.Parameter(torch.zeros(2, 2));
            using var b = new TorchSharp.Modules.Parameter(torch.zeros(2));
            using var c = new TorchSharp.Modules.Parameter(torch.zeros(3)); // no gradient on any rank: stays without one
            var g = grads[comm.Rank];
            a.grad = torch.tensor(g[..4], new long[] { 2, 2 });
            b.grad = torch.tensor(g[4..]);
            long bytes = DataParallel.AllReduceGradients(new[] { a, b, c }, comm, bucketElements: 3);
            return (a.grad!.data<float>().ToArray().Concat(b.grad!.data<float>().ToArray()).ToArray(), c.grad is null, bytes);
        });
        foreach (var (values, cWithout, bytes) in results)
        {
            Assert.Equal(new[] { 11f, 22f, 33f, 44f, 55f, 66f }, values);
            Assert.True(cWithout);
            Assert.Equal((3 + 4 + 2 + 3) * sizeof(float), bytes); // flags, then buckets [a], [b], [c]
        }
    }

    [Fact]
    public void CheckSameStart_RefusesARankThatStartsElsewhere()
    {
        var group = new ThreadGroup(2);
        group.Run(comm =>
        {
            using var p = new TorchSharp.Modules.Parameter(torch.ones(3));
            DataParallel.CheckSameStart(comm, 5, new[] { p }); // the same on both: passes
            return 0;
        });
        var e = Assert.Throws<AggregateException>(() => new ThreadGroup(2).Run(comm =>
        {
            using var p = new TorchSharp.Modules.Parameter(torch.ones(3) * (comm.Rank + 1)); // rank 1 read other weights
            DataParallel.CheckSameStart(comm, 5, new[] { p });
            return 0;
        }));
        var inner = Assert.IsType<UserInputException>(e.InnerException);
        Assert.Contains("rank 1 starts at step 5", inner.Message);
        Assert.Contains("a file system all ranks share", inner.Message);
    }

    /// <summary>
    /// Two ranks on threads against one process, ResLoRA-is with grad accumulation and a batch whose last micro-batch leaves
    /// a rank without rows: the same losses, the same adapter weights and the same norm windows (summed over the ranks).
    /// </summary>
    [Fact]
    public void ShardedSteps_OnTwoThreadRanks_EqualOneProcess_ForResLoraWindows()
    {
        var config = TinyModels.Config(vocab: 40);
        var ids = Enumerable.Range(0, 7).Select(i => new TokenizedExample(
            Enumerable.Range(0, 5 + i % 3).Select(j => (i * 7 + j * 3) % 37 + 3).ToArray(),
            Enumerable.Range(0, 5 + i % 3).Select(j => j < 2 ? -100 : (i * 7 + j * 3) % 37 + 3).ToArray())).ToList();
        var options = new TrainOptions { Steps = 4, BatchSize = 3, GradAccum = 2, LearningRate = 1e-2, MaxGradNorm = 1.0, Seed = 3 };

        (double[] Losses, float[] Weights, double[] Windows) Train(ICommunicator? comm)
        {
            var plan = new AdapterPlan(new ResLoraConfig { R = 2, LoraAlpha = 4, Structure = "is", TargetModules = ModuleTargets.List("q_proj", "v_proj") }, new torch.Generator(9));
            using var model = TinyModels.Build(config, seed: 4, factory: plan);
            AdapterModel.FreezeAllButAdapters(model);
            var trainer = new Trainer(model, options, new object[] { plan.Builder }) { Communicator = comm };
            using var opt = trainer.CreateOptimizer();
            var data = new ShuffledBatchSource(ids, options.BatchSize, padId: 0, seed: options.Seed);
            var losses = Enumerable.Range(1, options.Steps).Select(s => trainer.Step(opt, data, s, options.Steps).Loss).ToArray();
            var weights = trainer.TrainableParameters.SelectMany(p => p.detach().data<float>().ToArray()).ToArray();
            var builder = (ResLoraLayerBuilder)plan.Builder;
            var windows = builder.Layers.SelectMany(l => new[] { l.InputNormMean, (double)l.WindowCount }).ToArray();
            return (losses, weights, windows);
        }

        var one = Train(null);
        var ranks = new ThreadGroup(2).Run(comm => Train(comm));
        foreach (var r in ranks)
        {
            for (int i = 0; i < one.Losses.Length; i++) Assert.Equal(one.Losses[i], r.Losses[i], 4);
            for (int i = 0; i < one.Weights.Length; i++) Assert.True(Math.Abs(one.Weights[i] - r.Weights[i]) < 2e-5, $"weight {i}: {one.Weights[i]} vs {r.Weights[i]}");
            for (int i = 0; i < one.Windows.Length; i++) Assert.Equal(one.Windows[i], r.Windows[i], 4);
        }
        Assert.Equal(ranks[0].Weights, ranks[1].Weights); // bit-identical across ranks
    }
}
