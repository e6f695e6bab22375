using ResLora.Models;
using ResLora.Text;

namespace ResLora.Scoring;

/// <summary>
/// lm-evaluation-harness's <c>loglikelihood</c> on a causal LM: for each (context, continuation) the summed log-probability
/// of the continuation's tokens and whether greedy decoding would produce them.
/// <para>
/// Naive mode is lm-eval's HFLM <c>_loglikelihood_tokens</c>: every request is one row <c>(context + continuation)[-(max+1):][:-1]</c>,
/// rows right-padded into batches, and the continuation's tokens read off the last positions.
/// </para>
/// <para>
/// Shared-context mode (the default) forwards a context once per distinct adapter among the requests that share it (the
/// choices of one question), keeps its keys and values, repeats them to one cache row per request, and forwards every
/// continuation after it in one batch (right-padded, the mask covering past + new positions). The first continuation
/// token is scored from the context's last logits. Contexts of several questions go in one batch, left-padded (positions
/// count real tokens only, so each row sees the positions it would alone). A request that would be cut to max length
/// is scored naively. Both modes give the same numbers up to float32 rounding.
/// </para>
/// </summary>
public sealed class LoglikelihoodScorer
{
    private readonly LoglikelihoodForward _forward;
    private readonly Func<Tensor, Tensor>? _head;
    private readonly int _layers;
    private readonly int _vocab;
    private readonly Device _device;
    private readonly LoglikelihoodOptions _options;
    private readonly int _maxLength;

    /// <summary>A scorer over any forward (an adapter set's routed one, or <see cref="LoglikelihoodForwards.Of(CausalLM)"/>).</summary>
    /// <param name="forward">The forward; must accept a <see cref="KvCache"/> of <paramref name="config"/>'s layer count.</param>
    /// <param name="config">The model's config: layers, vocabulary and max positions.</param>
    /// <param name="device">Where the ids go (the model's device).</param>
    /// <param name="options">Batching and mode; null for the defaults.</param>
    public LoglikelihoodScorer(LoglikelihoodForward forward, ModelConfig config, Device device, LoglikelihoodOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(forward);
        ArgumentNullException.ThrowIfNull(config);
        _forward = forward;
        _layers = config.NumHiddenLayers;
        _vocab = config.VocabSize;
        _device = device;
        _options = options ?? new LoglikelihoodOptions();
        _options.Validate();
        _maxLength = _options.MaxLength ?? config.MaxPositionEmbeddings;
        if (_maxLength > config.MaxPositionEmbeddings)
            throw new UserInputException($"max length {_maxLength}: the model has only {config.MaxPositionEmbeddings} positions (max_position_embeddings); pass at most that.");
    }

    /// <summary>
    /// A scorer over a forward that returns final hidden states (batch, seq, hidden) and the LM head that turns rows of
    /// them into logits: the head then runs only at the positions scored (the last context position and the
    /// continuation's), not at every context position. Use it only when the head is the same for every row (no adapter
    /// changes <c>lm_head</c>).
    /// </summary>
    /// <param name="hiddenForward">The forward, returning hidden states instead of logits.</param>
    /// <param name="head">Hidden rows (n, hidden) to logits (n, vocab).</param>
    /// <param name="config">The model's config.</param>
    /// <param name="device">Where the ids go.</param>
    /// <param name="options">Batching and mode; null for the defaults.</param>
    public LoglikelihoodScorer(LoglikelihoodForward hiddenForward, Func<Tensor, Tensor> head, ModelConfig config, Device device, LoglikelihoodOptions? options = null)
        : this(hiddenForward, config, device, options)
    {
        ArgumentNullException.ThrowIfNull(head);
        _head = head;
    }

    /// <summary>A scorer over a plain model (no adapters); the LM head runs only where a token is scored.</summary>
    /// <param name="model">The model.</param>
    /// <param name="options">Batching and mode; null for the defaults.</param>
    public LoglikelihoodScorer(CausalLM model, LoglikelihoodOptions? options = null)
        : this(LoglikelihoodForwards.HiddenOf(model), model.Logits, model.Config, model.Device, options) { }


    /// <summary>The longest input one forward sees.</summary>
    public int MaxLength => _maxLength;

    /// <summary>Encodes each request with <see cref="EncodePair.Encode"/> and scores it; results in input order.</summary>
    /// <param name="tok">The model's tokenizer.</param>
    /// <param name="requests">The requests.</param>
    /// <param name="progress">Called with (requests done, total) after each batch.</param>
    public IReadOnlyList<LoglikelihoodResult> Score(ITextTokenizer tok, IReadOnlyList<LoglikelihoodRequest> requests, Action<int, int>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(tok);
        ArgumentNullException.ThrowIfNull(requests);
        var encoded = new LoglikelihoodTokens[requests.Count];
        for (int i = 0; i < requests.Count; i++)
        {
            var (ctx, cont) = EncodePair.Encode(tok, requests[i].Context, requests[i].Continuation);
            if (cont.Length == 0)
                throw new UserInputException($"request {i}: the continuation '{requests[i].Continuation}' adds no token after the context '{Shorten(requests[i].Context)}' (the tokenizer merges it into the context); give a non-empty continuation.");
            encoded[i] = new LoglikelihoodTokens(ctx, cont, requests[i].Adapter);
        }
        return ScoreTokens(encoded, progress);
    }

    /// <summary>Scores tokenized requests; results in input order.</summary>
    /// <param name="requests">The requests (context and continuation each at least one token).</param>
    /// <param name="progress">Called with (requests done, total) after each batch.</param>
    public IReadOnlyList<LoglikelihoodResult> ScoreTokens(IReadOnlyList<LoglikelihoodTokens> requests, Action<int, int>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(requests);
        for (int i = 0; i < requests.Count; i++) Check(i, requests[i]);
        var results = new LoglikelihoodResult[requests.Count];
        int done = 0;
        void Done(int n)
        {
            done += n;
            progress?.Invoke(done, requests.Count);
        }
        using var noGrad = torch.no_grad();
        var naive = new List<int>();
        var shared = new List<int>();
        for (int i = 0; i < requests.Count; i++)
            (_options.SharedContext && requests[i].Context.Count + requests[i].Continuation.Count <= _maxLength + 1 ? shared : naive).Add(i);
        foreach (var batch in SharedBatches(requests, shared))
        {
            ScoreShared(requests, batch, results);
            Done(batch.Sum(g => g.Count));
        }
        // lm-eval's order: longest first, so each batch pads little and the first one shows the peak memory.
        naive.Sort((a, b) => Total(requests[b]).CompareTo(Total(requests[a])) is var c && c != 0 ? c : a.CompareTo(b));
        for (int start = 0; start < naive.Count; start += _options.BatchSize)
        {
            var batch = naive.GetRange(start, Math.Min(_options.BatchSize, naive.Count - start));
            ScoreNaive(requests, batch, results);
            Done(batch.Count);
        }
        return results;
    }

    private static int Total(LoglikelihoodTokens r) => r.Context.Count + r.Continuation.Count;

    private void Check(int i, LoglikelihoodTokens r)
    {
        if (r.Context.Count == 0) throw new UserInputException($"request {i}: the context has no token; score after the BOS token (EncodePair does so for an empty context).");
        if (r.Continuation.Count == 0) throw new UserInputException($"request {i}: the continuation has no token; give a non-empty continuation.");
        if (r.Continuation.Count > _maxLength)
            throw new UserInputException($"request {i}: the continuation has {r.Continuation.Count} tokens but the max length is {_maxLength}; shorten the choice or raise the max length.");
        foreach (var t in r.Context.Concat(r.Continuation))
            if (t < 0 || t >= _vocab) throw new UserInputException($"request {i}: token id {t} is outside the model's vocabulary (0..{_vocab - 1}); was it encoded with this model's tokenizer?");
    }

    /// <summary>Each request alone as lm-eval's HFLM: its last max+1 tokens, all but the last as input, right-padded.</summary>
    private void ScoreNaive(IReadOnlyList<LoglikelihoodTokens> requests, List<int> batch, LoglikelihoodResult[] results)
    {
        using var scope = torch.NewDisposeScope();
        var inputs = new List<int[]>(batch.Count);
        foreach (int i in batch)
        {
            var whole = requests[i].Context.Concat(requests[i].Continuation).ToArray();
            int from = Math.Max(0, whole.Length - (_maxLength + 1));
            inputs.Add(whole[from..^1]);
        }
        int width = inputs.Max(x => x.Length);
        var (ids, mask) = Pad(inputs, width, left: false);
        var logits = _forward(ids, mask, batch.Select(i => requests[i].Adapter).ToList(), null); // (batch, width, vocab)
        // Position p predicts token p + 1: the continuation's n tokens come from the input's last n positions.
        var parts = batch.Select((i, r) => logits[r].narrow(0, inputs[r].Length - requests[i].Continuation.Count, requests[i].Continuation.Count)).ToList();
        var scored = PickAll(parts, batch.Select(i => requests[i].Continuation).ToList());
        for (int r = 0; r < batch.Count; r++) results[batch[r]] = scored[r];
    }

    /// <summary>Requests grouped by identical context ids; groups packed into batches of about <see cref="LoglikelihoodOptions.BatchSize"/> continuations.</summary>
    private IEnumerable<List<List<int>>> SharedBatches(IReadOnlyList<LoglikelihoodTokens> requests, List<int> indices)
    {
        var groups = new Dictionary<string, List<int>>();
        var order = new List<List<int>>();
        foreach (int i in indices)
        {
            string key = string.Join(',', requests[i].Context);
            if (!groups.TryGetValue(key, out var g)) { groups[key] = g = new List<int>(); order.Add(g); }
            g.Add(i);
        }
        // Longest context first: neighbours in a batch have similar lengths, so left padding stays small.
        var sorted = order.Select((g, k) => (g, k)).OrderByDescending(x => requests[x.g[0]].Context.Count).ThenBy(x => x.k).Select(x => x.g).ToList();
        var batch = new List<List<int>>();
        int rows = 0, ctxWidth = 0, contWidth = 0;
        foreach (var g in sorted)
        {
            int c = requests[g[0]].Context.Count, n = g.Max(i => requests[i].Continuation.Count) - 1;
            bool fits = rows + g.Count <= _options.BatchSize && Math.Max(ctxWidth, c) + Math.Max(contWidth, n) <= _maxLength;
            if (batch.Count > 0 && !fits)
            {
                yield return batch;
                batch = new List<List<int>>();
                rows = ctxWidth = contWidth = 0;
            }
            batch.Add(g);
            rows += g.Count;
            ctxWidth = Math.Max(ctxWidth, c);
            contWidth = Math.Max(contWidth, n);
        }
        if (batch.Count > 0) yield return batch;
    }

    /// <summary>One forward of the batch's contexts (one row per group and adapter), one of all its continuations after them.</summary>
    private void ScoreShared(IReadOnlyList<LoglikelihoodTokens> requests, List<List<int>> groups, LoglikelihoodResult[] results)
    {
        using var scope = torch.NewDisposeScope();
        // Context rows: each group's context once per distinct adapter among its requests.
        var ctxInputs = new List<int[]>();
        var ctxAdapters = new List<string?>();
        var members = new List<int>();      // the batch's requests in row order of the continuation forward
        var ctxRowOf = new List<long>();    // the context row each request continues
        foreach (var g in groups)
        {
            var rowOfAdapter = new Dictionary<string, int>(); // "\0" stands for null (the base): no adapter name holds it
            foreach (int i in g)
            {
                string? a = requests[i].Adapter;
                if (!rowOfAdapter.TryGetValue(a ?? "\0", out int row))
                {
                    rowOfAdapter[a ?? "\0"] = row = ctxInputs.Count;
                    ctxInputs.Add(requests[i].Context.ToArray());
                    ctxAdapters.Add(a);
                }
                members.Add(i);
                ctxRowOf.Add(row);
            }
        }
        int ctxWidth = ctxInputs.Max(x => x.Length);
        var (ctxIds, ctxMask) = Pad(ctxInputs, ctxWidth, left: true);
        using var cache = new KvCache(_layers);
        var ctxLogits = _forward(ctxIds, ctxMask, ctxAdapters, cache);  // (ctxRows, ctxWidth, vocab)
        var lastOut = ctxLogits.select(1, ctxWidth - 1);                // (ctxRows, vocab or hidden): predicts each continuation's first token

        var contInputs = members.Select(i => requests[i].Continuation.Take(requests[i].Continuation.Count - 1).ToArray()).ToList();
        // Continuations differ in length (ARC's choices from 1 to 20 tokens): padded to the longest of the batch, most of
        // the forward would be padding. They go in chunks of similar length instead, each extending its own copy of the
        // context rows' cache.
        var contOut = new Tensor?[members.Count];
        foreach (var chunk in LengthChunks(Enumerable.Range(0, members.Count).Where(r => contInputs[r].Length > 0).OrderBy(r => contInputs[r].Length).ToList(), contInputs))
        {
            var rowIndex = chunk.Select(r => ctxRowOf[r]).ToArray();
            using var sub = cache.CopyRows(rowIndex);
            int width = chunk.Max(r => contInputs[r].Length);
            var (contIds, contMask) = Pad(chunk.Select(r => contInputs[r]).ToList(), width, left: false);
            var rows = torch.tensor(rowIndex, dtype: ScalarType.Int64, device: _device);
            var pastMask = ctxMask is null ? torch.ones(chunk.Count, ctxWidth, dtype: ScalarType.Int64, device: _device) : ctxMask.index_select(0, rows);
            var mask = torch.cat(new[] { pastMask, contMask ?? torch.ones(chunk.Count, width, dtype: ScalarType.Int64, device: _device) }, 1); // (chunk, past + width)
            var output = _forward(contIds, mask, chunk.Select(r => requests[members[r]].Adapter).ToList(), sub); // (chunk, width, vocab or hidden)
            for (int j = 0; j < chunk.Count; j++) contOut[chunk[j]] = output[j];
        }
        // Each request's rows: its context's last position, then its continuation's positions but the last.
        var parts = new List<Tensor>(members.Count);
        for (int r = 0; r < members.Count; r++)
        {
            var cont = requests[members[r]].Continuation;
            var first = lastOut.narrow(0, ctxRowOf[r], 1);
            parts.Add(cont.Count == 1 ? first : torch.cat(new[] { first, contOut[r]!.narrow(0, 0, cont.Count - 1) }, 0)); // (contLen, vocab or hidden)
        }
        var scored = PickAll(parts, members.Select(i => requests[i].Continuation).ToList());
        for (int r = 0; r < members.Count; r++) results[members[r]] = scored[r];
    }

    /// <summary>
    /// Splits rows sorted by ascending length into chunks whose padded size (rows × the longest) stays within a quarter
    /// more than their real positions, or within <see cref="ChunkSlack"/> padded positions of them, so padding costs at
    /// most 25 % of a continuation forward or less than another forward would.
    /// </summary>
    /// <summary>
    /// Padded positions a chunk may carry before a new forward pays off: a forward of any size reads every weight once
    /// (about 100 ms for a 0.5B model in float32 here), about what 18 positions of compute cost.
    /// </summary>
    internal const int ChunkSlack = 32;

    internal static List<List<int>> LengthChunks(IReadOnlyList<int> sortedRows, IReadOnlyList<int[]> inputs)
    {
        var chunks = new List<List<int>>();
        var current = new List<int>();
        long real = 0;
        foreach (int r in sortedRows)
        {
            int len = inputs[r].Length; // the longest so far: rows come sorted by length
            long padded = (current.Count + 1L) * len;
            if (current.Count > 0 && padded > 1.25 * (real + len) && padded - (real + len) > ChunkSlack)
            {
                chunks.Add(current);
                current = new List<int>();
                real = 0;
            }
            current.Add(r);
            real += len;
        }
        if (current.Count > 0) chunks.Add(current);
        return chunks;
    }

    /// <summary>
    /// Each part's summed float32 log-probability of its targets and whether every target is the arg-max (as
    /// <see cref="TokenLogprobs"/>): all parts' rows go through the head (when the forward returned hidden states) and the
    /// log-softmax together, one pass over the head's weights and one over the vocabulary for the whole batch.
    /// </summary>
    /// <param name="parts">Per request its rows (n, vocab or hidden), row i predicting target i.</param>
    /// <param name="targets">Per request its target ids.</param>
    private LoglikelihoodResult[] PickAll(IReadOnlyList<Tensor> parts, IReadOnlyList<IReadOnlyList<int>> targets)
    {
        using var scope = torch.NewDisposeScope();
        var rows = torch.cat(parts.ToArray(), 0);
        var logp = (_head is null ? rows : _head(rows)).to(ScalarType.Float32).log_softmax(-1); // (all rows, vocab)
        var target = torch.tensor(targets.SelectMany(t => t).Select(t => (long)t).ToArray(), dtype: ScalarType.Int64, device: logp.device);
        float[] picked = logp.gather(1, target.unsqueeze(1)).squeeze(1).cpu().data<float>().ToArray();
        long[] argmax = logp.argmax(1).cpu().data<long>().ToArray();
        var results = new LoglikelihoodResult[parts.Count];
        int at = 0;
        for (int r = 0; r < parts.Count; r++)
        {
            double sum = 0;
            bool greedy = true;
            foreach (int t in targets[r])
            {
                sum += picked[at];
                greedy &= argmax[at] == t;
                at++;
            }
            results[r] = new LoglikelihoodResult(sum, greedy, targets[r].Count);
        }
        return results;
    }

    /// <summary>Ids (rows, width) padded with 0 on the left or right, and the 1/0 mask (null when no row is padded).</summary>
    private (Tensor Ids, Tensor? Mask) Pad(IReadOnlyList<int[]> rows, int width, bool left)
    {
        var ids = new long[rows.Count * width];
        var mask = new long[rows.Count * width];
        bool padded = false;
        for (int r = 0; r < rows.Count; r++)
        {
            int offset = left ? width - rows[r].Length : 0;
            padded |= rows[r].Length < width;
            for (int j = 0; j < rows[r].Length; j++)
            {
                ids[r * width + offset + j] = rows[r][j];
                mask[r * width + offset + j] = 1;
            }
        }
        var idsT = torch.tensor(ids, new long[] { rows.Count, width }, dtype: ScalarType.Int64, device: _device);
        return (idsT, padded ? torch.tensor(mask, new long[] { rows.Count, width }, dtype: ScalarType.Int64, device: _device) : null);
    }

    private static string Shorten(string s) => s.Length <= 60 ? s : "…" + s[^59..];
}
