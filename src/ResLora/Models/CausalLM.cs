using ResLora.IO;

namespace ResLora.Models;

/// <summary>
/// A decoder-only causal language model as the rest of the library sees it, whatever its family (<see cref="ICausalLMFamily"/>):
/// token embeddings, a stack of <see cref="IDecoderBlock"/>s sharing rotary positions and one causal mask (sliding-window
/// blocks get a windowed one), a final norm and an LM head (the tied embedding matrix when there is none). The family's
/// concrete class supplies the modules under Hugging Face's names; loading, saving, masks, the chunked loss and
/// checkpointing live here once.
/// </summary>
public abstract class CausalLM : nn.Module<Tensor, Tensor>
{
    private readonly IReadOnlyList<Rotary> _rotaries;
    private readonly IForwardLifecycle? _lifecycle;
    private bool _checkpointing;

    /// <summary>The family that built this model: its weight layout, default targets, tokenizer defaults.</summary>
    public ICausalLMFamily Family { get; }
    public ModelConfig Config { get; }
    public ScalarType Dtype { get; }
    public Device Device { get; }
    public ILinearFactory Factory { get; }

    protected CausalLM(string name, ICausalLMFamily family, ModelConfig config, ILinearFactory? factory, ScalarType dtype, Device device) : base(name)
    {
        config.Validate();
        Family = family;
        Config = config;
        Dtype = dtype;
        Device = device;
        Factory = factory ?? PlainLinearFactory.Instance;
        _lifecycle = Factory as IForwardLifecycle;
        _rotaries = family.CreateRotaries(config, device);
    }

    /// <summary>The token embedding (<c>model.embed_tokens</c>).</summary>
    public abstract Embedding EmbedTokens { get; }

    /// <summary>The decoder blocks in order.</summary>
    public abstract IReadOnlyList<IDecoderBlock> Blocks { get; }

    /// <summary>The norm after the last block (<c>model.norm</c>).</summary>
    protected abstract nn.Module<Tensor, Tensor> FinalNorm { get; }

    /// <summary>The LM head, or null when it is tied to <see cref="EmbedTokens"/>.</summary>
    protected abstract nn.Module<Tensor, Tensor>? LmHead { get; }

    /// <summary>The LM head through the factory (<c>lm_head</c>, no bias), or null when config.json ties it to the embeddings.</summary>
    protected nn.Module<Tensor, Tensor>? CreateLmHead() => Config.TieWordEmbeddings
        ? null
        : Factory.Create(new LinearSpec("lm_head", "lm_head", -1, Config.HiddenSize, Config.VocabSize, false), Dtype, Device);

    /// <summary>Hidden states entering the first block for token ids (batch, seq); families that scale embeddings override it.</summary>
    protected virtual Tensor Embed(Tensor inputIds) => EmbedTokens.call(inputIds);


    /// <summary>
    /// Activation checkpointing per decoder layer (<c>--grad-checkpoint</c>): while training with gradients on, each layer
    /// keeps only its input and is recomputed in backward (<see cref="DecoderLayerCheckpoint"/>). Turning it on is refused
    /// when the factory's modules cannot be recomputed one layer at a time (<see cref="ICheckpointSupport"/>).
    /// </summary>
    public bool GradientCheckpointing
    {
        get => _checkpointing;
        set
        {
            if (value && Factory is ICheckpointSupport { CheckpointRefusal: { } why })
                throw new UserInputException($"--grad-checkpoint: {why}");
            _checkpointing = value;
        }
    }

    /// <summary>Logits (batch, seq, vocab) for token ids (batch, seq), no padding, no cache.</summary>
    public override Tensor forward(Tensor inputIds) => Forward(inputIds, null, null);

    /// <summary>Logits with an optional attention mask (batch, seq) of 1 = token, 0 = padding.</summary>
    public Tensor forward(Tensor inputIds, Tensor? attentionMask) => Forward(inputIds, attentionMask, null);

    /// <summary>Final hidden states (batch, seq, hidden) after the last norm.</summary>
    public Tensor HiddenStates(Tensor inputIds, Tensor? attentionMask = null, KvCache? cache = null)
    {
        using var scope = torch.NewDisposeScope();
        using var forwardContext = _lifecycle?.BeginForward();
        long b = inputIds.shape[0], t = inputIds.shape[1];
        long past = cache?.Length ?? 0;
        if (attentionMask is not null && attentionMask.shape[1] != past + t)
            throw new UserInputException($"attention mask covers {attentionMask.shape[1]} positions but the cache holds {past} and the input {t}; it must cover past + new positions.");
        if (past + t > Config.MaxPositionEmbeddings)
            throw new UserInputException($"sequence of {past + t} positions exceeds the model's max_position_embeddings ({Config.MaxPositionEmbeddings}).");

        // Positions: with a mask, count only real tokens (left padding), as transformers' generate does.
        Tensor positions = attentionMask is null
            ? torch.arange(past, past + t, dtype: ScalarType.Int64, device: Device).unsqueeze(0).expand(b, t)
            : (attentionMask.to_type(ScalarType.Int64).cumsum(-1) - 1).clamp_min(0).narrow(1, past, t);
        var tables = new Dictionary<int, (Tensor Cos, Tensor Sin)>();
        (Tensor Cos, Tensor Sin) RotaryFor(IDecoderBlock block)
        {
            if (!tables.TryGetValue(block.RotaryIndex, out var cs)) tables[block.RotaryIndex] = cs = _rotaries[block.RotaryIndex].CosSin(positions, Dtype);
            return cs;
        }
        var masks = new Dictionary<int, Tensor?>();
        Tensor? MaskFor(IDecoderBlock block)
        {
            int window = block.SlidingWindow ?? 0;
            if (!masks.TryGetValue(window, out var m)) masks[window] = m = BuildMask(attentionMask, b, t, past, window);
            return m;
        }

        var h = Embed(inputIds); // (batch, seq, hidden)
        bool recompute = _checkpointing && training && torch.is_grad_enabled() && cache is null;
        // A checkpointed layer passes gradients to its parameters only if its input requires grad; the embeddings are
        // frozen, so the first layer's input is made a leaf that does (transformers' enable_input_require_grads).
        if (recompute && !h.requires_grad) h = h.detach().requires_grad_(true);
        foreach (var layer in Blocks)
        {
            var (cos, sin) = RotaryFor(layer);
            h = recompute ? DecoderLayerCheckpoint.Run(layer, h, cos, sin, MaskFor(layer)) : layer.Forward(h, cos, sin, MaskFor(layer), cache);
        }
        return scope.MoveToOuter(FinalNorm.call(h));
    }

    /// <summary>Logits (batch, seq, vocab).</summary>
    public Tensor Forward(Tensor inputIds, Tensor? attentionMask, KvCache? cache)
    {
        using var scope = torch.NewDisposeScope();
        var h = HiddenStates(inputIds, attentionMask, cache);
        return scope.MoveToOuter(Logits(h));
    }

    /// <summary>The LM head on final hidden states (…, hidden) → (…, vocab); the tied embedding matrix when there is no lm_head.</summary>
    public Tensor Logits(Tensor hidden) => LmHead is null ? nn.functional.linear(hidden, EmbedTokens.weight!, null) : LmHead.call(hidden);

    /// <summary>Logit elements per chunk of <see cref="CausalLmLoss"/> (default <see cref="LmHeadLoss.DefaultChunkElements"/>).</summary>
    public long LossChunkElements { get; set; } = LmHeadLoss.DefaultChunkElements;

    /// <summary>
    /// Mean masked next-token cross-entropy of final hidden states (<see cref="HiddenStates"/>) against labels (batch, seq),
    /// −100 ignored, with the LM head applied in chunks (<see cref="LmHeadLoss"/>): the batch's logits never exist.
    /// </summary>
    public (Tensor Loss, long Tokens) CausalLmLoss(Tensor hidden, Tensor labels)
    {
        bool headTrainable = LmHead is null ? EmbedTokens.weight!.requires_grad : LmHead.parameters().Any(p => p.requires_grad);
        return LmHeadLoss.Mean(hidden, labels, Logits, Config.VocabSize, headTrainable, LossChunkElements);
    }

    /// <summary>
    /// Per-sequence sums of the labelled tokens' log-probabilities from final hidden states (<see cref="HiddenStates"/>):
    /// labels (batch, seq) with −100 where nothing is scored, shifted by one as for <see cref="CausalLmLoss"/>, the head
    /// applied in chunks (<see cref="LmHeadLogps"/>). Returns <c>Sum</c> (batch) float32 with the graph and <c>Tokens</c>
    /// (batch) int64, the scored tokens of each row.
    /// </summary>
    public (Tensor Sum, Tensor Tokens) SequenceLogps(Tensor hidden, Tensor labels)
    {
        bool headTrainable = LmHead is null ? EmbedTokens.weight!.requires_grad : LmHead.parameters().Any(p => p.requires_grad);
        using var scope = torch.NewDisposeScope();
        var (logps, row) = LmHeadLogps.PerToken(hidden, labels, Logits, Config.VocabSize, headTrainable, LossChunkElements);
        long b = hidden.shape[0];
        var sum = torch.zeros(b, dtype: ScalarType.Float32, device: logps.device).index_add(0, row, logps, 1);
        var tokens = torch.zeros(b, dtype: ScalarType.Int64, device: row.device).index_add(0, row, torch.ones_like(row), 1);
        return (scope.MoveToOuter(sum), scope.MoveToOuter(tokens));
    }

    /// <summary>
    /// Additive mask (batch, 1, seq, past+seq): 0 where query i may see key j (j ≤ past+i and j is a token), the
    /// dtype's lowest value elsewhere (finite, so a fully padded row stays finite as in transformers). Null when a
    /// plain causal mask is enough (no cache, no padding, no window shorter than the sequence). With a sliding
    /// <paramref name="window"/> &gt; 0 (Mistral's <c>sliding_window</c>), query i also sees only keys j &gt; i − window, as
    /// transformers' sliding_window_overlay: itself and the window − 1 keys before it.
    /// </summary>
    private Tensor? BuildMask(Tensor? attentionMask, long b, long t, long past, int window)
    {
        bool anyPadding = attentionMask is not null && !attentionMask.to_type(ScalarType.Bool).all().item<bool>();
        if (past == 0 && !anyPadding && (window <= 0 || t <= window)) return null;
        long s = past + t;
        var qi = torch.arange(past, past + t, device: Device).unsqueeze(1); // (seq, 1)
        var kj = torch.arange(0, s, device: Device).unsqueeze(0);           // (1, past+seq)
        var visible = kj <= qi;
        if (window > 0) visible = visible.logical_and(kj > qi - window);
        var allowed = visible.unsqueeze(0).unsqueeze(0);                  // (1, 1, seq, past+seq)
        if (anyPadding) allowed = allowed.logical_and(attentionMask!.to_type(ScalarType.Bool).view(b, 1, 1, s));
        else allowed = allowed.expand(b, 1, t, s);
        double lowest = Dtype switch
        {
            ScalarType.BFloat16 => -3.3895313892515355e38,
            ScalarType.Float16 => -65504.0,
            ScalarType.Float64 => double.MinValue,
            _ => float.MinValue,
        };
        return torch.where(allowed, torch.zeros(1, dtype: Dtype, device: Device), torch.full(1, lowest, dtype: Dtype, device: Device));
    }


    /// <summary>The base weights a checkpoint must provide, by Hugging Face name, with their shapes (the family's layout).</summary>
    public IReadOnlyDictionary<string, long[]> ExpectedWeights() => Family.ExpectedWeights(Config);


    /// <summary>The live base parameters by Hugging Face name (views; do not dispose). A packed base (--base-bits) has none for its linears: an error.</summary>
    public IReadOnlyDictionary<string, Parameter> BaseParameters()
    {
        var d = new Dictionary<string, Parameter>(StringComparer.Ordinal);
        foreach (var (name, p, packed) in BaseTargets())
            d[name] = p ?? throw new UserInputException($"'{name}' is stored packed ({packed!.Packed!.Format}, --base-bits); this needs the full-precision base weights: run it without --base-bits.");
        return d;
    }

    /// <summary>The projections whose frozen weight is packed (--base-bits), by the Hugging Face name of that weight; empty for a full-precision model.</summary>
    public IReadOnlyDictionary<string, FrozenBase> PackedBases() =>
        named_modules().Where(m => m.module is IFrozenBaseOwner { Base.IsPacked: true })
            .ToDictionary(m => m.name + ".weight", m => ((IFrozenBaseOwner)m.module).Base, StringComparer.Ordinal);

    /// <summary>
    /// Every base weight by Hugging Face name as a checkpoint stores it: the parameters themselves, and packed weights
    /// dequantized to the model's dtype (with the merged ΔW once an adapter is merged). Dequantized tensors are new:
    /// enumerate inside a dispose scope.
    /// </summary>
    public IEnumerable<KeyValuePair<string, Tensor>> FullPrecisionWeights()
    {
        foreach (var (name, p, packed) in BaseTargets())
            yield return new(name, p ?? packed!.FullPrecisionWeight());
    }

    /// <summary>Each expected base weight: its parameter, or the packed base of its projection.</summary>
    private IEnumerable<(string Name, Parameter? Param, FrozenBase? Packed)> BaseTargets()
    {
        var packed = PackedBases();
        var all = named_parameters().ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);
        var list = new List<(string, Parameter?, FrozenBase?)>();
        foreach (var name in ExpectedWeights().Keys)
        {
            if (packed.TryGetValue(name, out var b)) list.Add((name, null, b));
            else if (all.TryGetValue(name, out var p)) list.Add((name, p, null));
            else throw new InvalidOperationException($"model has no parameter '{name}': a linear factory must register the base weight as 'weight' (and 'bias').");
        }
        return list;
    }

    /// <summary>Copies every base weight from <paramref name="load"/> (converted to the model's dtype and device; packed weights are quantized one at a time).</summary>
    public void LoadWeights(Func<string, Tensor> load)
    {
        using var noGrad = torch.no_grad();
        foreach (var (name, p, packed) in BaseTargets())
        {
            using var scope = torch.NewDisposeScope();
            var src = load(name);
            long[] shape = p?.shape ?? new long[] { packed!.Spec.OutFeatures, packed.Spec.InFeatures };
            if (!src.shape.SequenceEqual(shape))
                throw new UserInputException($"tensor '{name}' has shape [{string.Join(", ", src.shape)}] but the model expects [{string.Join(", ", shape)}].");
            if (p is not null) p.copy_(src.to(p.dtype, p.device));
            else packed!.Packed!.Pack(src);
        }
    }

    /// <summary>
    /// Loads every base weight from <paramref name="checkpoint"/> shard by shard: each file is read front to back, its
    /// tensors copied straight from the mapping into the parameters (<see cref="HfCheckpoint.CopyInto"/>; converted by
    /// <c>copy_</c> when the model's dtype differs, one tensor at a time) or packed one at a time, and released after its
    /// last tensor. So loading holds the model plus one tensor, never a second copy of the weights.
    /// </summary>
    public void LoadWeights(HfCheckpoint checkpoint)
    {
        using var noGrad = torch.no_grad();
        var targets = BaseTargets().ToDictionary(t => t.Name, StringComparer.Ordinal);
        var order = checkpoint.InFileOrder(targets.Keys);
        for (int i = 0; i < order.Count; i++)
        {
            var (name, p, packed) = targets[order[i]];
            long[] shape = p?.shape ?? new long[] { packed!.Spec.OutFeatures, packed.Spec.InFeatures };
            long[] stored = checkpoint.ShapeOf(name);
            if (!stored.SequenceEqual(shape))
                throw new UserInputException($"tensor '{name}' has shape [{string.Join(", ", stored)}] but the model expects [{string.Join(", ", shape)}].");
            using (var scope = torch.NewDisposeScope())
            {
                if (p is not null) checkpoint.CopyInto(name, p);
                else packed!.Packed!.Pack(checkpoint.Load(name));
            }
            if (i + 1 == order.Count || checkpoint.PathOf(order[i + 1]) != checkpoint.PathOf(name)) checkpoint.ReleaseFileOf(name);
        }
    }

    /// <summary>
    /// Random initialisation as transformers' LlamaPreTrainedModel._init_weights: normal(0, std) for embeddings and
    /// linear weights, zero biases, unit norms. Used for models built from scratch (tests, the demo).
    /// </summary>
    public void InitializeWeights(long seed, double std = 0.02)
    {
        using var noGrad = torch.no_grad();
        using var gen = new torch.Generator((ulong)seed);
        foreach (var (name, p, packed) in BaseTargets())
        {
            if (packed is not null)
            {
                // The same draws as a full-precision model of the same seed, then packed: the quantized twin of that model.
                using var r = torch.randn(new long[] { packed.Spec.OutFeatures, packed.Spec.InFeatures }, dtype: ScalarType.Float32, generator: gen) * std;
                packed.Packed!.Pack(r);
            }
            else if (name.EndsWith("norm.weight", StringComparison.Ordinal)) p!.fill_(1.0);
            else if (name.EndsWith(".bias", StringComparison.Ordinal)) p!.zero_();
            else
            {
                using var r = torch.randn(p!.shape, dtype: ScalarType.Float32, generator: gen) * std;
                p.copy_(r.to(p.dtype, p.device));
            }
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
            foreach (var r in _rotaries) r.Dispose();
        base.Dispose(disposing);
    }
}
