using System.Text.Json;
using ResLora.Text;

namespace ResLora.Training;

/// <summary>A tokenized example: ids and labels of equal length (label −100 = no loss).</summary>
public sealed record TokenizedExample(int[] Ids, int[] Labels);

/// <summary>What tokenizing a data set produced, including what had to be cut (reported to the user).</summary>
public sealed record TokenizedSet(IReadOnlyList<TokenizedExample> Examples, int Truncated, int DroppedWithoutLoss);

/// <summary>Turns examples into token sequences with a loss mask, and sequences into padded or packed batches.</summary>
public static class Tokenization
{
    public const int IgnoreIndex = -100;

    /// <summary>
    /// Each example as <see cref="TokenizeOne"/> makes it; sequences longer than <paramref name="seqLen"/> are cut on the
    /// right; an example left with no loss token is dropped. Both are counted. <paramref name="trainOnPrompt"/> puts the
    /// prompt's tokens (a conversation's system and user turns) under the loss too (LLaMA-Factory's <c>train_on_prompt</c>).
    /// </summary>
    public static TokenizedSet Tokenize(IReadOnlyList<TextExample> examples, ITextTokenizer tok, int seqLen, bool addEos = true, bool trainOnPrompt = false)
    {
        if (seqLen < 2) throw new UserInputException($"--seq-len must be at least 2, got {seqLen}.");
        var result = new List<TokenizedExample>(examples.Count);
        int truncated = 0, dropped = 0;
        foreach (var ex in examples)
        {
            var (idArr, labels) = TokenizeOne(ex, tok, addEos, trainOnPrompt);
            if (idArr.Length > seqLen)
            {
                truncated++;
                idArr = idArr[..seqLen];
                labels = labels[..seqLen];
            }
            // The first label never counts (the loss predicts token i from tokens < i).
            if (!labels.Skip(1).Any(l => l != IgnoreIndex)) { dropped++; continue; }
            result.Add(new TokenizedExample(idArr, labels));
        }
        return new TokenizedSet(result, truncated, dropped);
    }

    /// <summary>
    /// One example, uncut. Prompt/completion and plain text: BOS (when the tokenizer config asks for it) + prompt +
    /// completion + EOS. The prompt/completion boundary is found by encoding the prompt alone and the whole text: tokens
    /// shared with the prompt's encoding get no loss, so a merge across the boundary never hides completion tokens.
    /// A conversation (<see cref="TextExample.LossSpans"/>): its rendered text encoded as it is (the template wrote BOS
    /// and the end-of-turn tokens); a token carries loss when the characters it was made from lie inside an assistant turn.
    /// With <paramref name="trainOnPrompt"/> (LLaMA-Factory's <c>train_on_prompt</c>) every token carries loss: the prompt,
    /// the Alpaca preamble, a conversation's system and user turns and its template text as well as the answers.
    /// </summary>
    public static TokenizedExample TokenizeOne(TextExample ex, ITextTokenizer tok, bool addEos = true, bool trainOnPrompt = false)
    {
        if (ex.LossSpans is { } spans) return Conversation(ex.Completion, trainOnPrompt ? new[] { (0, ex.Completion.Length) } : spans, tok);
        int? eos = tok.EosTokenIds.Count > 0 ? tok.EosTokenIds[0] : null;
        var ids = new List<int>();
        if (tok.AddBosToken && tok.BosTokenId is { } bos) ids.Add(bos);
        int start = ids.Count;
        var full = tok.Encode(ex.Prompt + ex.Completion);
        int boundary = 0;
        if (!ex.IsPlainText && !trainOnPrompt)
        {
            var p = tok.Encode(ex.Prompt);
            while (boundary < p.Count && boundary < full.Count && p[boundary] == full[boundary]) boundary++;
        }
        ids.AddRange(full);
        if (addEos && eos is { } e) ids.Add(e);
        var labels = new int[ids.Count];
        for (int i = 0; i < labels.Length; i++) labels[i] = i < start + boundary ? IgnoreIndex : ids[i];
        return new TokenizedExample(ids.ToArray(), labels);
    }

    private static TokenizedExample Conversation(string text, IReadOnlyList<(int Start, int End)> spans, ITextTokenizer tok)
    {
        if (tok is not ITokenOffsets offsets)
            throw new UserInputException("conversation data needs a tokenizer that reports where each token came from (a Hugging Face tokenizer.json); this model's tokenizer (tokenizer.model or vocab.txt) does not. Add the model's tokenizer.json to its folder.");
        var tokens = offsets.EncodeWithOffsets(text);
        var ids = new int[tokens.Count];
        var labels = new int[tokens.Count];
        for (int i = 0; i < tokens.Count; i++)
        {
            var t = tokens[i];
            ids[i] = t.Id;
            bool inside = false;
            foreach (var (s, e) in spans)
                if (t.Start >= s && t.End <= e) { inside = true; break; }
            labels[i] = inside ? t.Id : IgnoreIndex;
        }
        return new TokenizedExample(ids, labels);
    }

    /// <summary>Concatenates examples and cuts the stream into sequences of exactly <paramref name="seqLen"/> (the tail shorter than that is dropped).</summary>
    public static IReadOnlyList<TokenizedExample> Pack(IReadOnlyList<TokenizedExample> examples, int seqLen)
    {
        var ids = new List<int>();
        var labels = new List<int>();
        var packed = new List<TokenizedExample>();
        foreach (var ex in examples)
        {
            ids.AddRange(ex.Ids);
            labels.AddRange(ex.Labels);
            while (ids.Count >= seqLen)
            {
                packed.Add(new TokenizedExample(ids.Take(seqLen).ToArray(), labels.Take(seqLen).ToArray()));
                ids.RemoveRange(0, seqLen);
                labels.RemoveRange(0, seqLen);
            }
        }
        if (packed.Count == 0 && ids.Count > 1) packed.Add(new TokenizedExample(ids.ToArray(), labels.ToArray()));
        return packed;
    }

    /// <summary>Right-pads a group of sequences to the longest one: mask 0 and label −100 on padding.</summary>
    public static TrainBatch Collate(IReadOnlyList<TokenizedExample> group, int padId, Device? device = null)
    {
        int n = group.Count, len = group.Max(g => g.Ids.Length);
        var ids = new long[n * len];
        var mask = new long[n * len];
        var labels = new long[n * len];
        for (int r = 0; r < n; r++)
        {
            var g = group[r];
            for (int c = 0; c < len; c++)
            {
                int k = r * len + c;
                bool real = c < g.Ids.Length;
                ids[k] = real ? g.Ids[c] : padId;
                mask[k] = real ? 1 : 0;
                labels[k] = real ? g.Labels[c] : IgnoreIndex;
            }
        }
        var shape = new long[] { n, len };
        var d = device ?? torch.CPU;
        return new TrainBatch(
            torch.tensor(ids, shape, dtype: ScalarType.Int64, device: d).DetachFromDisposeScope(),
            torch.tensor(mask, shape, dtype: ScalarType.Int64, device: d).DetachFromDisposeScope(),
            torch.tensor(labels, shape, dtype: ScalarType.Int64, device: d).DetachFromDisposeScope());
    }

    /// <summary>Evaluation batches in order (no shuffling), each disposed by the consumer.</summary>
    public static IEnumerable<TrainBatch> Sequential(IReadOnlyList<TokenizedExample> examples, int batchSize, int padId, Device? device = null)
    {
        for (int i = 0; i < examples.Count; i += batchSize)
            yield return Collate(examples.Skip(i).Take(batchSize).ToList(), padId, device);
    }
}

/// <summary>
/// Shuffled batches of any example type, reshuffled every epoch from the seed; the position (epoch, index) is saved in
/// checkpoints so a resumed run sees exactly the batches it would have seen.
/// </summary>
public class ShuffledBatchSource<T> : ITrainBatchSource
{
    private readonly IReadOnlyList<T> _examples;
    private readonly int _batchSize;
    private readonly long _seed;
    private readonly Func<IReadOnlyList<T>, TrainBatch> _collate;
    private int[] _order = Array.Empty<int>();

    public int Epoch { get; private set; }
    public int Index { get; private set; }

    public ShuffledBatchSource(IReadOnlyList<T> examples, int batchSize, long seed, Func<IReadOnlyList<T>, TrainBatch> collate)
    {
        if (examples.Count == 0) throw new UserInputException("no training examples are left after tokenization; check --seq-len and the data.");
        if (batchSize < 1) throw new UserInputException($"--batch-size must be ≥ 1, got {batchSize}.");
        _examples = examples;
        _batchSize = batchSize;
        _seed = seed;
        _collate = collate;
        Reorder();
    }

    private void Reorder()
    {
        _order = Enumerable.Range(0, _examples.Count).ToArray();
        new Random(unchecked((int)(_seed * 1_000_003 + Epoch))).Shuffle(_order);
    }

    public TrainBatch Next()
    {
        if (Index >= _order.Length)
        {
            Epoch++;
            Index = 0;
            Reorder();
        }
        var group = new List<T>(_batchSize);
        for (int i = Index; i < Math.Min(Index + _batchSize, _order.Length); i++) group.Add(_examples[_order[i]]);
        Index += _batchSize;
        return _collate(group);
    }

    public string SavePosition() => JsonSerializer.Serialize(new Dictionary<string, long> { ["epoch"] = Epoch, ["index"] = Index, ["seed"] = _seed, ["count"] = _examples.Count });

    public void RestorePosition(string json)
    {
        var d = JsonSerializer.Deserialize<Dictionary<string, long>>(json) ?? throw new UserInputException("checkpoint: empty data position.");
        if (d.GetValueOrDefault("count") != _examples.Count || d.GetValueOrDefault("seed") != _seed)
            throw new UserInputException($"checkpoint: the data set or seed changed since the checkpoint ({d.GetValueOrDefault("count")} examples, seed {d.GetValueOrDefault("seed")}; now {_examples.Count}, seed {_seed}); resume with the same --data and --seed, or start a new --out folder.");
        Epoch = (int)d["epoch"];
        Reorder();
        Index = (int)d["index"];
    }
}

/// <summary>
/// Endless shuffled batches: each epoch is a seeded permutation (seed + epoch) of the examples, cut into batches.
/// Its position (epoch, index) is saved with checkpoints, so a resumed run sees exactly the batches it would have seen.
/// </summary>
public sealed class ShuffledBatchSource(IReadOnlyList<TokenizedExample> examples, int batchSize, int padId, long seed, Device? device = null)
    : ShuffledBatchSource<TokenizedExample>(examples, batchSize, seed, group => Tokenization.Collate(group, padId, device));
