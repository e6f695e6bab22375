using System.Runtime.InteropServices;

namespace ResLora.Training.Distributed;

/// <summary>
/// A stop every rank of a data-parallel job decided together (each rank threw it at the same step from the same reduced
/// values, e.g. a NaN loss on any rank): the job ends normally on every rank, with this message from rank 0.
/// </summary>
public sealed class AgreedStopException(string message) : UserInputException(message);

/// <summary>
/// The arithmetic of data-parallel training, kept free of MPI so it can be tested in one process: which rows of a global
/// batch a rank takes, how its loss is weighted so the summed gradients equal the single-process gradient, the dropout
/// seed of each rank and step, and the bucketed all-reduce of the trainable gradients.
/// </summary>
public static class DataParallel
{
    /// <summary>Default all-reduce bucket: 4 Mi float32 elements (16 MiB), one MPI call each.</summary>
    public const int DefaultBucketElements = 1 << 22;

    /// <summary>
    /// The rows [Start, Start + Count) of a global batch of <paramref name="rows"/> that rank <paramref name="rank"/> of
    /// <paramref name="size"/> takes: contiguous, disjoint, covering every row, sizes differing by at most one
    /// (rank r takes ⌊r·rows/size⌋ up to ⌊(r+1)·rows/size⌋). A rank may get none when rows &lt; size (an epoch's last batch).
    /// </summary>
    public static (int Start, int Count) ShardRows(int rows, int rank, int size)
    {
        if (size < 1 || rank < 0 || rank >= size) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} of {size}");
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        int start = (int)((long)rank * rows / size), end = (int)((long)(rank + 1) * rows / size);
        return (start, end - start);
    }

    /// <summary>The rows [start, start + count) of every tensor of <paramref name="batch"/> (views, no copy).</summary>
    /// <remarks>A batch whose rows come in groups (<see cref="TrainBatch.RowGroup"/>: a preference pair's chosen and rejected
    /// rows) is sharded by whole groups by the caller; the slice keeps the group size and the per-row values.</remarks>
    public static TrainBatch Slice(TrainBatch batch, int start, int count) => new(
        batch.InputIds.narrow(0, start, count),
        batch.AttentionMask.narrow(0, start, count),
        batch.Labels.narrow(0, start, count),
        batch.TokenTypeIds?.narrow(0, start, count))
    {
        RowGroup = batch.RowGroup,
        RowValues = batch.RowValues?.narrow(0, start, count),
    };

    /// <summary>
    /// The factor a rank multiplies its mean loss (over its <paramref name="localItems"/> loss tokens or rows) by, so that
    /// the ranks' terms sum to the mean over the global batch's <paramref name="globalItems"/>: mean_r·n_r/N = sum_r/N,
    /// and Σ_r sum_r/N is the single-process mean. N = 0 (no loss token anywhere) gives 0, as one process's empty sum does.
    /// </summary>
    public static double LossWeight(long localItems, long globalItems) => globalItems > 0 ? (double)localItems / globalItems : 0.0;

    /// <summary>
    /// The global mean loss from the summed (loss sum, items) pair; with no items the sum itself (0), as
    /// <see cref="Trainer.CausalLmLoss"/> returns for a batch without loss tokens.
    /// </summary>
    public static double GlobalMean(double lossSum, double items) => items > 0 ? lossSum / items : lossSum;

    /// <summary>
    /// The torch seed of <paramref name="rank"/> at <paramref name="step"/>: each rank draws its own dropout masks for its
    /// own rows, and a resumed run (with any number of ranks) draws what the uninterrupted run would have drawn there.
    /// </summary>
    public static long DropoutSeed(long seed, int step, int rank)
    {
        // splitmix64 finaliser over (seed, step, rank): well-mixed, positive, and no two (step, rank) pairs collide in practice.
        ulong z = unchecked((ulong)seed * 0x9E3779B97F4A7C15UL + (ulong)step * 0xBF58476D1CE4E5B9UL + (ulong)rank * 0x94D049BB133111EBUL);
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return (long)((z ^ (z >> 31)) >> 1);
    }

    /// <summary>
    /// Sums the gradients of <paramref name="parameters"/> over all ranks in place: packed in parameter order into float32
    /// buffers of at most <paramref name="bucketElements"/> (a parameter larger than that is a bucket of its own), one
    /// all-reduce per bucket, unpacked in each gradient's dtype. The first buffer also carries one has-a-gradient flag per
    /// parameter and <paramref name="alongside"/> (summed in place too), so a small adapter costs one MPI call per step.
    /// A parameter without a gradient contributes zeros, and has one afterwards when any rank's had one (a rank whose
    /// shard was empty has none), as in one process over the whole batch. Returns the number of bytes all-reduced.
    /// </summary>
    public static long AllReduceGradients(IReadOnlyList<Parameter> parameters, ICommunicator comm, int bucketElements = DefaultBucketElements, Span<float> alongside = default)
    {
        long bytes = 0;
        var buckets = Buckets(parameters.Select(p => p.numel()).ToList(), bucketElements);
        float[] flags = Array.Empty<float>();
        for (int b = 0; b < buckets.Count; b++)
        {
            using var scope = torch.NewDisposeScope();
            var members = buckets[b].Select(i => parameters[i]).ToList();
            var parts = members.Select(p => p.grad is { } g
                ? g.detach().flatten().to(ScalarType.Float32, torch.CPU)
                : torch.zeros(p.numel(), ScalarType.Float32)).ToList();
            int head = b == 0 ? parameters.Count + alongside.Length : 0;
            if (b == 0)
            {
                var extra = parameters.Select(p => p.grad is null ? 0.0f : 1.0f).Concat(alongside.ToArray()).ToArray();
                parts.Insert(0, torch.tensor(extra));
            }
            var flat = torch.cat(parts.ToArray()).contiguous(); // (head + Σ numel,)
            var span = MemoryMarshal.Cast<byte, float>(flat.bytes);
            comm.AllReduceSum(span);
            flat.bytes = MemoryMarshal.AsBytes(span); // a no-op when the span is the tensor's own memory
            bytes += span.Length * sizeof(float);
            if (b == 0)
            {
                flags = span[..parameters.Count].ToArray();
                span.Slice(parameters.Count, alongside.Length).CopyTo(alongside);
            }
            long offset = head;
            foreach (var i in buckets[b])
            {
                var p = parameters[i];
                long n = p.numel();
                if (p.grad is null && flags[i] > 0) p.grad = torch.zeros_like(p).DetachFromDisposeScope();
                if (p.grad is { } g)
                    using (torch.no_grad())
                        g.copy_(flat.narrow(0, offset, n).view(g.shape).to(g.dtype, g.device));
                offset += n;
            }
        }
        return bytes;
    }

    /// <summary>
    /// Checks that this rank starts where rank 0 does: the same step and the same trainable parameters (a checksum to
    /// 1e-6, as ranks may sum with different thread counts). Ranks that read different model files, or an --out folder
    /// that is not shared (rank 0 resumes, another starts afresh), would otherwise train apart without a word.
    /// </summary>
    public static void CheckSameStart(ICommunicator comm, int step, IReadOnlyList<Parameter> parameters)
    {
        double sum = 0, abs = 0;
        using (torch.no_grad())
            foreach (var p in parameters)
            {
                using var f = p.detach().to(ScalarType.Float64, torch.CPU);
                using var s = f.sum();
                using var a = f.abs().sum();
                sum += s.item<double>();
                abs += a.item<double>();
            }
        var mine = new[] { step, sum, abs };
        var root = (double[])mine.Clone();
        comm.Broadcast(MemoryMarshal.AsBytes(root.AsSpan()), 0);
        bool same = root[0] == mine[0] && Math.Abs(root[1] - mine[1]) <= 1e-6 * (1 + root[2]) && Math.Abs(root[2] - mine[2]) <= 1e-6 * (1 + root[2]);
        if (!same)
            throw new UserInputException($"rank {comm.Rank} starts at step {step} with adapter checksum {sum:G9}, rank 0 at step {root[0]} with {root[1]:G9}: every rank must read the same --model and data, and the same --out (on a file system all ranks share, for --resume).");
    }

    /// <summary>Consecutive index groups whose element counts sum to at most <paramref name="limit"/> (a larger item alone).</summary>
    public static IReadOnlyList<IReadOnlyList<int>> Buckets(IReadOnlyList<long> sizes, long limit)
    {
        var buckets = new List<IReadOnlyList<int>>();
        var cur = new List<int>();
        long filled = 0;
        for (int i = 0; i < sizes.Count; i++)
        {
            if (cur.Count > 0 && filled + sizes[i] > limit)
            {
                buckets.Add(cur);
                cur = new List<int>();
                filled = 0;
            }
            cur.Add(i);
            filled += sizes[i];
        }
        if (cur.Count > 0) buckets.Add(cur);
        return buckets;
    }
}
