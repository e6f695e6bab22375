using ResLora.Adapters;
using ResLora.Models;

namespace ResLora.Pipelines;

/// <summary>
/// One base model with many named LoRA-family adapters (issue 18): load adapter folders under names, switch the active
/// one, unload one, and run batches where each row uses its own adapter (or none). The base weights are loaded once and
/// never written to; each adapter costs its own tensors only (<see cref="AdapterBytes"/>). LoRA, rsLoRA and DoRA
/// folders (peft_type LORA, which is also what <c>reslora export --as lora</c> writes for every other method) are
/// accepted; other adapter types are refused by name. Forwards run one at a time.
/// </summary>
public sealed class AdapterSet : IDisposable
{
    private AdapterSet(CausalLM model, MultiLoraPlan plan)
    {
        Model = model;
        Plan = plan;
    }

    /// <summary>The shared base model; its ordinary forward (and <see cref="TextGenerator"/>) uses the <see cref="Active"/> adapter.</summary>
    public CausalLM Model { get; }

    /// <summary>The factory the model was built with: the adapters and the routing.</summary>
    public MultiLoraPlan Plan { get; }

    /// <summary>Loads a Hugging Face model folder once, every projection ready to carry adapters, in eval mode.</summary>
    /// <param name="modelDir">The base model folder.</param>
    /// <param name="runtime">Device, dtype and threads.</param>
    public static AdapterSet Load(string modelDir, RuntimeOptions runtime)
    {
        var plan = new MultiLoraPlan();
        var model = ModelSessions.LoadBase(modelDir, runtime, plan);
        model.eval();
        return new AdapterSet(model, plan);
    }

    /// <summary>Wraps a model that was built with <paramref name="plan"/> as its linear factory (tests, applications that build models themselves).</summary>
    public static AdapterSet Create(CausalLM model, MultiLoraPlan plan)
    {
        if (!ReferenceEquals(model.Factory, plan)) throw new ArgumentException("the model was not built with this MultiLoraPlan as its linear factory.", nameof(plan));
        model.eval();
        return new AdapterSet(model, plan);
    }

    /// <summary>The loaded adapters in load order.</summary>
    public IReadOnlyList<LoadedAdapter> Adapters => Plan.Adapters;

    /// <summary>Bytes held by every loaded adapter's tensors: all the memory the adapters add to the base.</summary>
    public long AdapterBytes => Plan.Adapters.Sum(a => a.Bytes);

    /// <summary>The adapter the plain forward uses; null or <see cref="MultiLoraPlan.BaseName"/> for the base alone.</summary>
    public string? Active
    {
        get => Plan.Active;
        set => Plan.Active = value;
    }

    /// <summary>Reads an adapter folder and installs it under <paramref name="name"/> (see <see cref="MultiLoraPlan.Add"/>).</summary>
    /// <param name="name">The adapter's name.</param>
    /// <param name="adapterDir">A PEFT adapter folder.</param>
    /// <param name="warn">Receives the config's warnings (unknown fields).</param>
    public LoadedAdapter Add(string name, string adapterDir, Action<string>? warn = null)
    {
        MultiLoraPlan.CheckName(name);
        if (!Directory.Exists(adapterDir))
            throw new DirectoryNotFoundException($"adapter '{name}': {adapterDir}: no such folder; pass a folder with {AdapterFolder.ConfigFileName} and {AdapterFolder.WeightsFileName}.");
        using var contents = AdapterFolder.Load(adapterDir);
        foreach (var w in contents.Warnings) warn?.Invoke($"adapter '{name}': {w}");
        return Plan.Add(name, contents);
    }

    /// <summary>Unloads an adapter and frees its tensors (the base is untouched).</summary>
    public void Remove(string name) => Plan.Remove(name);

    /// <summary>
    /// Logits (batch, seq, vocab) of one forward where row i uses <paramref name="adapterPerRow"/>[i] (null or "base":
    /// none). Rows are grouped by adapter, so each projection does one low-rank product per adapter in the batch.
    /// </summary>
    /// <param name="inputIds">Token ids (batch, seq).</param>
    /// <param name="attentionMask">1 = token, 0 = padding (batch, past + seq), or null.</param>
    /// <param name="adapterPerRow">One adapter name (or null) per row.</param>
    /// <param name="cache">A KV cache to extend, or null.</param>
    public Tensor Forward(Tensor inputIds, Tensor? attentionMask, IReadOnlyList<string?> adapterPerRow, KvCache? cache = null)
    {
        if (inputIds.dim() != 2) throw new UserInputException($"input ids must be (batch, seq), got [{string.Join(", ", inputIds.shape)}].");
        if (adapterPerRow.Count != inputIds.shape[0])
            throw new UserInputException($"the batch has {inputIds.shape[0]} rows but {adapterPerRow.Count} adapter names were given; name one adapter (or null for none) per row.");
        using var route = Plan.Route(adapterPerRow, Model.Device);
        using var noGrad = torch.no_grad();
        return Model.Forward(inputIds, attentionMask, cache);
    }

    /// <summary>
    /// Continues every prompt with its own adapter in one batch (left padding, one KV cache): greedy at temperature 0,
    /// otherwise sampled with a generator per row seeded with <see cref="GenerationOptions.Seed"/>, so each row gets the
    /// tokens <see cref="TextGenerator.Generate"/> gives that prompt alone with its adapter active. Returns only the new
    /// ids per row (an end-of-sequence id included, as <see cref="TextGenerator"/> does).
    /// </summary>
    /// <param name="prompts">Token ids per row (each non-empty).</param>
    /// <param name="adapterPerRow">One adapter name (or null) per row.</param>
    /// <param name="options">Length, sampling and stop ids, shared by all rows.</param>
    /// <param name="onToken">Called with (row, token) as each row's token is chosen.</param>
    public IReadOnlyList<IReadOnlyList<int>> Generate(IReadOnlyList<IReadOnlyList<int>> prompts, IReadOnlyList<string?> adapterPerRow, GenerationOptions options, Action<int, int>? onToken = null)
    {
        if (prompts.Count == 0) throw new UserInputException("no prompts to generate from.");
        if (adapterPerRow.Count != prompts.Count) throw new UserInputException($"{prompts.Count} prompts but {adapterPerRow.Count} adapter names; name one adapter (or null for none) per prompt.");
        return Generate(prompts.Select((p, i) => new GenerationRow(p, adapterPerRow[i], options) { OnToken = onToken is null ? null : t => onToken(i, t) }).ToList());
    }

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
    /// Continues every row's prompt with its own adapter and its own settings (token budget, sampling, repetition
    /// penalty, seed, stop ids, stop condition, stop strings, cancellation) in one batch: each row gets the tokens <see cref="TextGenerator.Generate"/> gives
    /// its prompt alone with its adapter active and its options. A row that stops (stop id, stop condition, budget,
    /// cancellation) leaves the batch: its KV cache rows are dropped, so the remaining rows cost only their own work.
    /// Returns the new ids per row (a stop id included; a cancelled row's tokens so far).
    /// </summary>
    /// <param name="rows">The rows; all must agree on <see cref="GenerationOptions.UseKvCache"/>.</param>
    public IReadOnlyList<IReadOnlyList<int>> Generate(IReadOnlyList<GenerationRow> rows)
    {
        int b = rows.Count;
        if (b == 0) throw new UserInputException("no prompts to generate from.");
        var c = Model.Config;
        bool useCache = rows[0].Options.UseKvCache;
        for (int i = 0; i < b; i++)
        {
            var r = rows[i];
            r.Options.Validate();
            if (r.Options.UseKvCache != useCache) throw new ArgumentException("every row of a batch must agree on UseKvCache.", nameof(rows));
            if (r.Prompt.Count == 0) throw new UserInputException($"prompt {i} has no tokens; give each row at least one token (e.g. BOS).");
            foreach (int id in r.Prompt)
                if (id < 0 || id >= c.VocabSize) throw new UserInputException($"prompt {i}: token id {id} is outside the model's vocabulary (vocab_size {c.VocabSize}).");
            if (r.Prompt.Count + r.Options.MaxNewTokens > c.MaxPositionEmbeddings)
                throw new UserInputException($"prompt {i} ({r.Prompt.Count} tokens) + max new tokens ({r.Options.MaxNewTokens}) exceeds the model's max_position_embeddings ({c.MaxPositionEmbeddings}).");
        }
        if (PaddedLength(rows) > c.MaxPositionEmbeddings)
            throw new UserInputException($"the batch's longest prompt plus its largest token budget ({PaddedLength(rows)} positions) exceeds the model's max_position_embeddings ({c.MaxPositionEmbeddings}); generate these rows in separate batches.");
        int len = rows.Max(r => r.Prompt.Count);
        var context = new List<long>[b];
        var mask = new List<long>[b];
        for (int i = 0; i < b; i++)
        {
            int pad = len - rows[i].Prompt.Count; // left padding: every row's last prompt token sits in the last column
            context[i] = Enumerable.Repeat(0L, pad).Concat(rows[i].Prompt.Select(t => (long)t)).ToList();
            mask[i] = Enumerable.Repeat(0L, pad).Concat(Enumerable.Repeat(1L, rows[i].Prompt.Count)).ToList();
        }
        var outputs = Enumerable.Range(0, b).Select(_ => new List<int>()).ToArray();
        var stops = rows.Select(r => new HashSet<int>(r.Options.EosTokenIds)).ToArray();
        var gens = rows.Select(r => r.Options.Greedy ? null : new torch.Generator((ulong)r.Options.Seed, Model.Device)).ToArray();
        // The original indices of the rows in the batch, in batch order (also the KV cache's rows).
        var live = Enumerable.Range(0, b).Where(i => rows[i].Options.MaxNewTokens > 0).ToList();
        foreach (int i in Enumerable.Range(0, b).Except(live)) rows[i].OnFinished?.Invoke(outputs[i]);
        var finished = new bool[b];
        using var cache = useCache ? new KvCache(c.NumHiddenLayers) : null;
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
                var ids = torch.tensor(feed.SelectMany(x => x).ToArray(), dtype: ScalarType.Int64, device: Model.Device).view(n, width);
                var m = torch.tensor(live.SelectMany(i => mask[i]).ToArray(), dtype: ScalarType.Int64, device: Model.Device).view(n, mask[live[0]].Count);
                var last = Forward(ids, m, live.Select(i => rows[i].Adapter).ToList(), cache).select(1, -1).to_type(ScalarType.Float32); // (live, vocab)
                prefill = false;
                for (int j = 0; j < n; j++)
                {
                    int i = live[j];
                    var o = rows[i].Options;
                    var logits = o.RepetitionPenalty == 1.0 ? last[j] : TextGenerator.PenalizeRepeats(last[j], rows[i].Prompt.Concat(outputs[i]), o.RepetitionPenalty); // (vocab); the padding is not part of the sequence
                    int t = o.Greedy ? (int)logits.argmax().item<long>() : TextGenerator.Pick(logits, o, gens[i]!);
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
        }
        return outputs;
    }

    /// <summary>Frees the model and every adapter's tensors.</summary>
    public void Dispose() => Model.Dispose();
}

/// <summary>One row of a mixed-adapter batch: its prompt, its adapter and its own generation settings.</summary>
/// <param name="Prompt">Token ids (non-empty).</param>
/// <param name="Adapter">The adapter's name, or null (or <see cref="MultiLoraPlan.BaseName"/>) for the base alone.</param>
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
