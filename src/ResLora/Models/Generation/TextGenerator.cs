namespace ResLora.Models;

/// <summary>One row of a generation batch: its prompt, its adapter and its own generation settings.</summary>
/// <param name="Prompt">Token ids (non-empty).</param>
/// <param name="Adapter">The adapter's name on a model that carries several (an adapter set), or null for the model as it is.</param>
/// <param name="Options">Budget, sampling, seed and stop conditions of this row.</param>
public sealed record GenerationRow(IReadOnlyList<int> Prompt, string? Adapter, GenerationOptions Options)
{
    /// <summary>Called with each token as it is chosen (on the generating thread).</summary>
    public Action<int>? OnToken { get; init; }

    /// <summary>When cancelled, the row leaves the batch before the next step; its tokens so far are returned.</summary>
    public CancellationToken Cancellation { get; init; }

    /// <summary>Called once, on the generating thread, with the row's tokens when it leaves the batch (finished or cancelled), before the batch ends.</summary>
    public Action<IReadOnlyList<int>>? OnFinished { get; init; }
}

/// <summary>
/// The decode engine: every generation (<c>reslora generate</c>, eval's accuracy, the demo, <c>serve</c>) runs this loop.
/// Rows are left-padded into one batch with one KV cache: the prompts are processed once, then one position per row and
/// new token. Each row has its own budget, sampling (a generator per row seeded with its seed), repetition penalty, stop
/// ids, stop condition, stop strings, cancellation and, on an adapter set, adapter; a row that stops leaves the batch and
/// its KV cache rows are dropped. A single prompt is a batch of one.
/// </summary>
public static class TextGenerator
{
    /// <summary>Continues one prompt; returns only the new token ids (the prompt is not repeated; a stop id included).</summary>
    public static IReadOnlyList<int> Generate(CausalLM model, IReadOnlyList<int> promptIds, GenerationOptions options, Action<int>? onToken = null) =>
        Generate(model, new[] { new GenerationRow(promptIds, null, options) { OnToken = onToken } })[0];

    /// <summary>
    /// Positions a batch of <paramref name="rows"/> needs: the longest prompt (every row is left-padded to it) plus the
    /// largest token budget. It must stay within the model's max_position_embeddings.
    /// </summary>
    public static int PaddedLength(IEnumerable<GenerationRow> rows)
    {
        int len = 0, budget = 0;
        foreach (var r in rows)
        {
            len = Math.Max(len, r.Prompt.Count);
            budget = Math.Max(budget, r.Options.MaxNewTokens);
        }
        return len + budget;
    }

    /// <summary>
    /// Continues every row's prompt with its own settings in one batch; each row gets the tokens it gets alone. Returns
    /// the new ids per row (a stop id included; a cancelled row's tokens so far). The model's training mode is restored.
    /// </summary>
    /// <param name="model">The model.</param>
    /// <param name="rows">The rows; all must agree on <see cref="GenerationOptions.UseKvCache"/>.</param>
    /// <param name="route">
    /// Sets the adapter of each batch row for one forward (the live rows' adapters in batch order) until disposed; null:
    /// the model has no per-row adapters and every row must name none.
    /// </param>
    public static IReadOnlyList<IReadOnlyList<int>> Generate(CausalLM model, IReadOnlyList<GenerationRow> rows, Func<IReadOnlyList<string?>, IDisposable>? route = null)
    {
        int b = rows.Count;
        if (b == 0) throw new UserInputException("no prompts to generate from.");
        Check(model.Config, rows, route is not null);
        bool useCache = rows[0].Options.UseKvCache;
        int len = rows.Max(r => r.Prompt.Count);
        // Left padding: every row's last prompt token sits in the last column. Without padding no mask is needed.
        bool padded = rows.Any(r => r.Prompt.Count < len);
        var context = new List<long>[b];
        var mask = new List<long>[b];
        for (int i = 0; i < b; i++)
        {
            int pad = len - rows[i].Prompt.Count;
            context[i] = Enumerable.Repeat(0L, pad).Concat(rows[i].Prompt.Select(t => (long)t)).ToList();
            mask[i] = Enumerable.Repeat(0L, pad).Concat(Enumerable.Repeat(1L, rows[i].Prompt.Count)).ToList();
        }
        var outputs = Enumerable.Range(0, b).Select(_ => new List<int>()).ToArray();
        var stops = rows.Select(r => new HashSet<int>(r.Options.EosTokenIds)).ToArray();
        var gens = rows.Select(r => r.Options.Greedy ? null : new torch.Generator((ulong)r.Options.Seed, model.Device)).ToArray();
        // The original indices of the rows in the batch, in batch order (also the KV cache's rows).
        var live = Enumerable.Range(0, b).Where(i => rows[i].Options.MaxNewTokens > 0).ToList();
        foreach (int i in Enumerable.Range(0, b).Except(live)) rows[i].OnFinished?.Invoke(outputs[i]);
        var finished = new bool[b];
        bool wasTraining = model.training;
        model.eval();
        using var cache = useCache ? new KvCache(model.Config.NumHiddenLayers) : null;
        using var noGrad = torch.no_grad();
        try
        {
            bool prefill = true;
            while (true)
            {
                var keep = live.Where(i => !finished[i] && !rows[i].Cancellation.IsCancellationRequested).ToList();
                foreach (int i in live.Except(keep)) rows[i].OnFinished?.Invoke(outputs[i]);
                if (keep.Count == 0) break;
                if (keep.Count < live.Count && cache is not null && !prefill)
                    cache.KeepRows(keep.Select(i => (long)live.IndexOf(i)).ToArray());
                live = keep;
                using var scope = torch.NewDisposeScope();
                // With the cache, the prompt once and then each row's last token; without it, every row's whole context.
                var feed = live.Select(i => prefill || cache is null ? context[i] : context[i].Skip(context[i].Count - 1)).Select(x => x.ToArray()).ToList();
                int n = live.Count, width = feed[0].Length;
                var ids = torch.tensor(feed.SelectMany(x => x).ToArray(), dtype: ScalarType.Int64, device: model.Device).view(n, width);
                var m = padded ? torch.tensor(live.SelectMany(i => mask[i]).ToArray(), dtype: ScalarType.Int64, device: model.Device).view(n, mask[live[0]].Count) : null;
                Tensor logits;
                using (route?.Invoke(live.Select(i => rows[i].Adapter).ToList()))
                    logits = model.Forward(ids, m, cache);
                var last = logits.select(1, -1).to_type(ScalarType.Float32); // (live, vocab)
                prefill = false;
                for (int j = 0; j < n; j++)
                {
                    int i = live[j];
                    var o = rows[i].Options;
                    // The padding is not part of the sequence the penalty looks at.
                    var row = o.RepetitionPenalty == 1.0 ? last[j] : PenalizeRepeats(last[j], rows[i].Prompt.Concat(outputs[i]), o.RepetitionPenalty); // (vocab)
                    int t = o.Greedy ? (int)row.argmax().item<long>() : Pick(row, o, gens[i]!);
                    outputs[i].Add(t);
                    context[i].Add(t);
                    mask[i].Add(1L);
                    rows[i].OnToken?.Invoke(t);
                    if (outputs[i].Count >= o.MaxNewTokens || o.ShouldStop(outputs[i], stops[i])) finished[i] = true;
                }
            }
        }
        finally
        {
            foreach (var g in gens) g?.Dispose();
            if (wasTraining) model.train();
        }
        return outputs;
    }

    internal static void Check(ModelConfig c, IReadOnlyList<GenerationRow> rows, bool routed)
    {
        bool one = rows.Count == 1;
        for (int i = 0; i < rows.Count; i++)
        {
            var r = rows[i];
            string which = one ? "the prompt" : $"prompt {i}";
            r.Options.Validate();
            if (r.Options.UseKvCache != rows[0].Options.UseKvCache) throw new ArgumentException("every row of a batch must agree on UseKvCache.", nameof(rows));
            if (!routed && r.Adapter is not null) throw new ArgumentException($"row {i} names adapter '{r.Adapter}', but the model carries no per-row adapters; route the rows.", nameof(rows));
            if (r.Prompt.Count == 0)
                throw new UserInputException($"{which} has no tokens; give a non-empty prompt (or a tokenizer with a BOS token to start from).");
            foreach (int id in r.Prompt)
                if (id < 0 || id >= c.VocabSize) throw new UserInputException($"{which}: token id {id} is outside the model's vocabulary (vocab_size {c.VocabSize}).");
            if (r.Prompt.Count + r.Options.MaxNewTokens > c.MaxPositionEmbeddings)
                throw new UserInputException($"{which} ({r.Prompt.Count} tokens) + --max-new-tokens ({r.Options.MaxNewTokens}) exceeds the model's max_position_embeddings ({c.MaxPositionEmbeddings}).");
        }
        if (PaddedLength(rows) > c.MaxPositionEmbeddings)
            throw new UserInputException($"the batch's longest prompt plus its largest token budget ({PaddedLength(rows)} positions) exceeds the model's max_position_embeddings ({c.MaxPositionEmbeddings}); generate these rows in separate batches.");
    }

    /// <summary>
    /// Hugging Face's repetition penalty on one row of logits (vocab): for every distinct id in <paramref name="seen"/>
    /// (the prompt and the tokens generated so far), a positive logit is divided by <paramref name="penalty"/> and a
    /// negative one multiplied by it (CTRL, Keskar et al. 2019, section 4.1; transformers'
    /// <c>RepetitionPenaltyLogitsProcessor</c>). Other logits are unchanged. Returns a new tensor.
    /// </summary>
    public static Tensor PenalizeRepeats(Tensor logits, IEnumerable<int> seen, double penalty)
    {
        var ids = seen.Distinct().Select(i => (long)i).ToArray();
        if (ids.Length == 0 || penalty == 1.0) return logits.clone();
        using var scope = torch.NewDisposeScope();
        var idx = torch.tensor(ids, dtype: ScalarType.Int64, device: logits.device); // (seen)
        var score = logits.gather(0, idx); // (seen)
        score = torch.where(score > 0, score / penalty, score * penalty);
        return logits.scatter(0, idx, score).MoveToOuterDisposeScope(); // (vocab)
    }

    /// <summary>Greedy arg-max at temperature 0; otherwise softmax(logits/T) restricted by top-k and top-p, sampled.</summary>
    internal static int Pick(Tensor logits, GenerationOptions o, torch.Generator gen)
    {
        using var scope = torch.NewDisposeScope();
        if (o.Greedy) return (int)logits.argmax().item<long>();
        // A repetition penalty near 0 (valid: > 0) divides positive logits into +inf; inf - inf in softmax is NaN and
        // multinomial throws, failing every row of a served batch. Clamped, the tokens at the top share the mass.
        var l = (logits / o.Temperature).nan_to_num(0.0, float.MaxValue, float.MinValue);
        if (o.TopK > 0 && o.TopK < l.shape[0])
        {
            var kth = l.topk(o.TopK).values[-1];
            l = l.masked_fill(l < kth, double.NegativeInfinity);
        }
        var probs = l.softmax(-1);
        if (o.TopP < 1.0)
        {
            var (sorted, idx) = probs.sort(-1, descending: true);
            var cum = sorted.cumsum(-1);
            // Drop a token when the mass before it already reaches p; the most likely token is always kept.
            // A top_p below float32's smallest value (~1e-45) compares as 0, which would drop that token too (all-zero
            // probabilities, NaN, multinomial throws): keep the first explicitly.
            var drop = (cum - sorted) >= o.TopP;
            drop[0] = torch.tensor(false, device: drop.device);
            sorted = sorted.masked_fill(drop, 0.0);
            probs = torch.zeros_like(probs).scatter(-1, idx, sorted);
            probs = probs / probs.sum();
        }
        return (int)torch.multinomial(probs, 1, false, gen).item<long>();
    }
}
