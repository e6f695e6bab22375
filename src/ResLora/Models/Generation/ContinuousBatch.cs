namespace ResLora.Models;

/// <summary>
/// Continuous batching: a running batch that rows join and leave between decode steps (the scheduling of Orca, Yu et al.
/// 2022, and vLLM). <see cref="Join(IReadOnlyList{GenerationRow})"/> prefills the prompts of the rows that arrive together
/// into a KV cache of their own, picks their first tokens, and aligns that cache with the batch's by left padding the
/// shorter side with masked positions; <see cref="Step"/> decodes one token for every live row. A row that finishes
/// (budget, stop id, stop condition, stop string) or is cancelled leaves at once and its cache rows are dropped, with the leading padding no remaining row needs. Each row sees exactly the
/// positions (the attention mask's running count, as <see cref="CausalLM.HiddenStates"/> derives them) and the keys it
/// would see alone, with its own sampling generator and, through the route callback, its own adapter, so its tokens are
/// those of <see cref="TextGenerator.Generate(CausalLM, IReadOnlyList{GenerationRow}, Func{IReadOnlyList{string}, IDisposable})"/>
/// with that row alone. Not thread-safe: one thread drives it. Dispose it to free the cache and restore the model's mode.
/// </summary>
public sealed class ContinuousBatch : IDisposable
{
    /// <summary>One live row: its settings, its tokens so far, and its columns of the batch cache.</summary>
    private sealed class Live(GenerationRow row, torch.Generator? gen)
    {
        public GenerationRow Row { get; } = row;
        public torch.Generator? Gen { get; } = gen;
        public HashSet<int> Stops { get; } = new(row.Options.EosTokenIds);
        public List<int> Output { get; } = new();
        /// <summary>1 = a real token, 0 = padding, one entry per cache column (the batch cache's length).</summary>
        public List<long> Mask { get; } = new();
        /// <summary>The worst-case positions this row holds: its prompt plus its budget.</summary>
        public int Reserved => Row.Prompt.Count + Row.Options.MaxNewTokens;
        public bool Finished { get; set; }
    }

    private readonly CausalLM _model;
    private readonly Func<IReadOnlyList<string?>, IDisposable>? _route;
    private readonly List<Live> _rows = new();
    private readonly bool _wasTraining;
    private KvCache? _cache;
    private bool _disposed;

    /// <summary>An empty batch on <paramref name="model"/> (put in eval mode until disposed).</summary>
    /// <param name="model">The model.</param>
    /// <param name="route">Sets the adapter of each batch row for one forward (the live rows' adapters in batch order) until
    /// disposed; null: the model has no per-row adapters and every row must name none.</param>
    /// <param name="maxRows">Most rows at once (at least 1).</param>
    /// <param name="maxCachePositions">Most cache cells (rows × positions) the batch may come to hold, counting every row
    /// at its prompt plus budget; null = <paramref name="maxRows"/> × the model's max_position_embeddings. A single row
    /// always fits.</param>
    public ContinuousBatch(CausalLM model, Func<IReadOnlyList<string?>, IDisposable>? route, int maxRows, long? maxCachePositions = null)
    {
        if (maxRows < 1) throw new UserInputException($"--max-batch must be at least 1, got {maxRows}.");
        if (maxCachePositions is < 1) throw new UserInputException($"MaxCachePositions must be at least 1 (rows × positions), got {maxCachePositions}.");
        _model = model;
        _route = route;
        MaxRows = maxRows;
        MaxCachePositions = maxCachePositions ?? (long)maxRows * model.Config.MaxPositionEmbeddings;
        _wasTraining = model.training;
        model.eval();
    }

    /// <summary>Most rows at once.</summary>
    public int MaxRows { get; }

    /// <summary>Most cache cells (rows × positions) the batch reserves.</summary>
    public long MaxCachePositions { get; }

    /// <summary>Live rows (those that have neither finished nor been cancelled).</summary>
    public int Count => _rows.Count;

    /// <summary>Positions the batch cache holds now (its longest live row, padding included), 0 when empty.</summary>
    public long CacheLength => _cache?.Length ?? 0;

    /// <summary>
    /// Whether <paramref name="joining"/> can join the live rows: at most <see cref="MaxRows"/> together, and the rows times
    /// the longest prompt-plus-budget among them within <see cref="MaxCachePositions"/> (the cache can never outgrow that:
    /// it is as long as its longest row). Into an empty batch one row always fits.
    /// </summary>
    public bool Fits(IReadOnlyCollection<GenerationRow> joining)
    {
        int n = _rows.Count + joining.Count;
        if (n <= 1) return true;
        if (n > MaxRows) return false;
        long longest = Math.Max(_rows.Select(r => r.Reserved).DefaultIfEmpty(0).Max(), joining.Max(r => r.Prompt.Count + r.Options.MaxNewTokens));
        return n * longest <= MaxCachePositions;
    }

    /// <summary>
    /// Refuses a row the model cannot generate (as <see cref="TextGenerator"/> does: empty prompt, ids outside the vocabulary,
    /// prompt plus budget beyond max_position_embeddings, invalid sampling, an adapter without routing), so a caller can
    /// refuse it alone before <see cref="Join(IReadOnlyList{GenerationRow})"/>.
    /// </summary>
    /// <exception cref="UserInputException">The row's prompt or settings are invalid for the model.</exception>
    public void Check(GenerationRow row)
    {
        TextGenerator.Check(_model.Config, new[] { row }, _route is not null);
        if (!row.Options.UseKvCache) throw new ArgumentException("continuous batching needs the KV cache; UseKvCache must be true.", nameof(row));
    }

    /// <summary>Adds one row (<see cref="Join(IReadOnlyList{GenerationRow})"/>).</summary>
    public void Join(GenerationRow row) => Join(new[] { row });

    /// <summary>
    /// Adds rows that arrive together: checks each (<see cref="Check"/>), prefills their prompts in one forward of their
    /// own (left-padded to the longest, masked, each row with its adapter: the prefill TextGenerator runs for these rows as
    /// a batch, and for one row alone its unpadded forward), picks each row's first token and puts the rows that go on
    /// in the batch for the next <see cref="Step"/>. A row with no budget, already cancelled, or finished by its first
    /// token gets <see cref="GenerationRow.OnFinished"/> here and does not stay.
    /// </summary>
    /// <exception cref="UserInputException">A row's prompt or settings are invalid for the model (then none joins).</exception>
    public void Join(IReadOnlyList<GenerationRow> rows)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        foreach (var row in rows) Check(row);
        var lives = new List<Live>();
        foreach (var row in rows)
        {
            var live = new Live(row, row.Options.Greedy ? null : new torch.Generator((ulong)row.Options.Seed, _model.Device));
            if (row.Options.MaxNewTokens == 0 || row.Cancellation.IsCancellationRequested) Leave(live);
            else lives.Add(live);
        }
        if (lives.Count == 0) return;
        var own = new KvCache(_model.Config.NumHiddenLayers);
        try
        {
            Prefill(lives, own);
            var stay = Enumerable.Range(0, lives.Count).Where(j => !lives[j].Finished).ToList();
            foreach (var l in lives.Where(l => l.Finished)) Leave(l);
            if (stay.Count > 0)
            {
                if (stay.Count < lives.Count) own.KeepRows(stay.Select(j => (long)j).ToArray());
                var staying = stay.Select(j => lives[j]).ToList();
                TrimPadding(own, staying);
                Merge(staying, own);
            }
            lives.Clear();
        }
        finally
        {
            foreach (var l in lives) l.Gen?.Dispose(); // only after a failure
            own.Dispose();
        }
    }

    /// <summary>The joining rows' prompts through the model into <paramref name="own"/>; each row's first token; their masks.</summary>
    private void Prefill(List<Live> lives, KvCache own)
    {
        int n = lives.Count, len = lives.Max(l => l.Row.Prompt.Count);
        // Left padding: every row's last prompt token in the last column; without padding, no mask (as for one row alone).
        foreach (var l in lives) l.Mask.AddRange(Enumerable.Repeat(0L, len - l.Row.Prompt.Count).Concat(Enumerable.Repeat(1L, l.Row.Prompt.Count)));
        bool padded = lives.Any(l => l.Row.Prompt.Count < len);
        using (torch.no_grad())
        using (var scope = torch.NewDisposeScope())
        {
            var ids = torch.tensor(lives.SelectMany(l => Enumerable.Repeat(0L, len - l.Row.Prompt.Count).Concat(l.Row.Prompt.Select(t => (long)t))).ToArray(),
                dtype: ScalarType.Int64, device: _model.Device).view(n, len);
            var mask = padded ? torch.tensor(lives.SelectMany(l => l.Mask).ToArray(), dtype: ScalarType.Int64, device: _model.Device).view(n, len) : null;
            Tensor logits;
            using (_route?.Invoke(lives.Select(l => l.Row.Adapter).ToList()))
                logits = _model.Forward(ids, mask, own);
            var last = logits.select(1, -1).to_type(ScalarType.Float32); // (joining, vocab)
            for (int j = 0; j < n; j++) Choose(lives[j], last[j]);
        }
    }

    /// <summary>
    /// Drops cancelled rows, then decodes one token for every live row in one forward (each row routed to its adapter) and
    /// lets the rows that this token finishes leave. Does nothing when no row is live.
    /// </summary>
    public void Step()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Prune();
        if (_rows.Count == 0 || _cache is null) return;
        using (torch.no_grad())
        using (var scope = torch.NewDisposeScope())
        {
            int n = _rows.Count;
            long width = _cache.Length + 1;
            // Each row's last token, which its cache does not hold yet: (live, 1).
            var ids = torch.tensor(_rows.Select(r => (long)r.Output[^1]).ToArray(), dtype: ScalarType.Int64, device: _model.Device).view(n, 1);
            // With padding, the mask over past + new; without, none (as for a row alone, where positions are the same).
            bool padded = _rows.Any(r => r.Mask.Contains(0L));
            var mask = padded ? torch.tensor(_rows.SelectMany(r => r.Mask.Append(1L)).ToArray(), dtype: ScalarType.Int64, device: _model.Device).view(n, width) : null;
            Tensor logits;
            using (_route?.Invoke(_rows.Select(r => r.Row.Adapter).ToList()))
                logits = _model.Forward(ids, mask, _cache);
            var last = logits.select(1, -1).to_type(ScalarType.Float32); // (live, vocab)
            for (int j = 0; j < n; j++)
            {
                _rows[j].Mask.Add(1L);
                Choose(_rows[j], last[j]);
            }
        }
        Prune();
    }

    /// <summary>Picks a row's next token from its logits (vocab), as TextGenerator does, and records whether it ends the row.</summary>
    private static void Choose(Live live, Tensor logits)
    {
        var o = live.Row.Options;
        using var scope = torch.NewDisposeScope();
        // The padding is not part of the sequence the penalty looks at.
        var row = o.RepetitionPenalty == 1.0 ? logits : TextGenerator.PenalizeRepeats(logits, live.Row.Prompt.Concat(live.Output), o.RepetitionPenalty);
        int t = o.Greedy ? (int)row.argmax().item<long>() : TextGenerator.Pick(row, o, live.Gen!);
        live.Output.Add(t);
        live.Row.OnToken?.Invoke(t);
        if (live.Output.Count >= o.MaxNewTokens || o.ShouldStop(live.Output, live.Stops)) live.Finished = true;
    }

    /// <summary>Puts prefilled rows' cache (rows, kvHeads, prompt, headDim) into the batch's, padding the shorter on the left.</summary>
    private void Merge(List<Live> joining, KvCache own)
    {
        if (_cache is null) _cache = new KvCache(_model.Config.NumHiddenLayers);
        else
        {
            long width = _cache.Length, mine = own.Length;
            if (mine < width)
            {
                own.PadLeft(width - mine);
                foreach (var l in joining) l.Mask.InsertRange(0, Enumerable.Repeat(0L, (int)(width - mine)));
            }
            else if (mine > width)
            {
                _cache.PadLeft(mine - width);
                foreach (var r in _rows) r.Mask.InsertRange(0, Enumerable.Repeat(0L, (int)(mine - width)));
            }
        }
        _cache.AppendRows(own);
        _rows.AddRange(joining);
    }

    /// <summary>Drops the leading cache columns that are padding for every one of <paramref name="rows"/> (the rows of <paramref name="cache"/>).</summary>
    private static void TrimPadding(KvCache cache, List<Live> rows)
    {
        int trim = rows.Min(r => r.Mask.IndexOf(1L));
        if (trim <= 0) return;
        cache.TrimLeft(trim);
        foreach (var r in rows) r.Mask.RemoveRange(0, trim);
    }

    /// <summary>Lets finished and cancelled rows leave: their cache rows go, then the leading padding no live row needs.</summary>
    private void Prune()
    {
        var keep = new List<long>();
        var staying = new List<Live>();
        var leaving = new List<Live>();
        for (int i = 0; i < _rows.Count; i++)
        {
            var r = _rows[i];
            if (r.Finished || r.Row.Cancellation.IsCancellationRequested) leaving.Add(r);
            else
            {
                keep.Add(i);
                staying.Add(r);
            }
        }
        if (leaving.Count == 0) return;
        _rows.Clear();
        _rows.AddRange(staying);
        if (_rows.Count == 0)
        {
            _cache?.Dispose();
            _cache = null;
        }
        else
        {
            _cache!.KeepRows(keep.ToArray());
            TrimPadding(_cache, _rows);
        }
        foreach (var r in leaving) Leave(r);
    }

    private static void Leave(Live live)
    {
        live.Gen?.Dispose();
        live.Row.OnFinished?.Invoke(live.Output);
    }

    /// <summary>Frees the cache and the live rows' generators (their <see cref="GenerationRow.OnFinished"/> is not called) and restores the model's mode.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var r in _rows) r.Gen?.Dispose();
        _rows.Clear();
        _cache?.Dispose();
        _cache = null;
        if (_wasTraining) _model.train();
    }
}
