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
    private AdapterSet(LlamaForCausalLM model, MultiLoraPlan plan)
    {
        Model = model;
        Plan = plan;
    }

    /// <summary>The shared base model; its ordinary forward (and <see cref="TextGenerator"/>) uses the <see cref="Active"/> adapter.</summary>
    public LlamaForCausalLM Model { get; }

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
    public static AdapterSet Create(LlamaForCausalLM model, MultiLoraPlan plan)
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
        options.Validate();
        int b = prompts.Count;
        if (b == 0) throw new UserInputException("no prompts to generate from.");
        if (adapterPerRow.Count != b) throw new UserInputException($"{b} prompts but {adapterPerRow.Count} adapter names; name one adapter (or null for none) per prompt.");
        var c = Model.Config;
        for (int i = 0; i < b; i++)
        {
            if (prompts[i].Count == 0) throw new UserInputException($"prompt {i} has no tokens; give each row at least one token (e.g. BOS).");
            foreach (int id in prompts[i])
                if (id < 0 || id >= c.VocabSize) throw new UserInputException($"prompt {i}: token id {id} is outside the model's vocabulary (vocab_size {c.VocabSize}).");
            if (prompts[i].Count + options.MaxNewTokens > c.MaxPositionEmbeddings)
                throw new UserInputException($"prompt {i} ({prompts[i].Count} tokens) + max new tokens ({options.MaxNewTokens}) exceeds the model's max_position_embeddings ({c.MaxPositionEmbeddings}).");
        }
        int len = prompts.Max(p => p.Count);
        var context = new long[b][];
        var mask = new List<long[]>();
        for (int i = 0; i < b; i++)
        {
            int pad = len - prompts[i].Count; // left padding: every row's last prompt token sits in the last column
            context[i] = Enumerable.Repeat(0L, pad).Concat(prompts[i].Select(t => (long)t)).ToArray();
            mask.Add(Enumerable.Repeat(0L, pad).Concat(Enumerable.Repeat(1L, prompts[i].Count)).ToArray());
        }
        var outputs = Enumerable.Range(0, b).Select(_ => new List<int>()).ToArray();
        var done = new bool[b];
        var eos = new HashSet<int>(options.EosTokenIds);
        var gens = options.Temperature == 0 ? null : Enumerable.Range(0, b).Select(_ => new torch.Generator((ulong)options.Seed, Model.Device)).ToArray();
        using var cache = options.UseKvCache ? new KvCache(c.NumHiddenLayers) : null;
        using var noGrad = torch.no_grad();
        try
        {
            long[][] feed = context;
            for (int step = 0; step < options.MaxNewTokens && done.Contains(false); step++)
            {
                using var scope = torch.NewDisposeScope();
                var ids = torch.tensor(feed.SelectMany(r => r).ToArray(), dtype: ScalarType.Int64, device: Model.Device).view(b, feed[0].Length);
                var m = torch.tensor(mask.SelectMany(r => r).ToArray(), dtype: ScalarType.Int64, device: Model.Device).view(b, mask[0].Length);
                var last = Forward(ids, m, adapterPerRow, cache).select(1, -1).to_type(ScalarType.Float32); // (batch, vocab)
                var next = new long[b];
                for (int i = 0; i < b; i++)
                {
                    if (done[i]) continue; // a finished row keeps a slot in the batch; its tokens are not used
                    int t = options.Temperature == 0 ? (int)last[i].argmax().item<long>() : TextGenerator.Pick(last[i], options, gens![i]);
                    next[i] = t;
                    outputs[i].Add(t);
                    onToken?.Invoke(i, t);
                    if (eos.Contains(t)) done[i] = true;
                }
                for (int i = 0; i < b; i++)
                {
                    context[i] = context[i].Append(next[i]).ToArray();
                    mask[i] = mask[i].Append(1L).ToArray();
                }
                feed = options.UseKvCache ? next.Select(t => new[] { t }).ToArray() : context;
            }
        }
        finally
        {
            foreach (var g in gens ?? Array.Empty<torch.Generator>()) g.Dispose();
        }
        return outputs;
    }

    /// <summary>Frees the model and every adapter's tensors.</summary>
    public void Dispose() => Model.Dispose();
}
