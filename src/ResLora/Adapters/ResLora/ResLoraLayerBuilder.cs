using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>
/// Builds the ResLoRA blocks of one model and owns what lies between them (spec §2, §7): the chains (one per module
/// type, in layer order, linked only between equal (in, out) shapes), the per-forward context holding the tensors
/// passed between layers, and the merge coefficients.
/// </summary>
public sealed class ResLoraLayerBuilder : IAdapterLayerBuilder, IForwardLifecycle, IConfigSnapshot, ICalibratedMerge, ICheckpointSupport, IShardedStatistics, IStepStartHook
{
    private readonly ResLoraConfig _config;
    private readonly Generator? _generator;
    private readonly Dictionary<string, List<ResLoraLinear>> _chains = new(StringComparer.Ordinal);
    private readonly List<ResLoraLinear> _layers = new();
    private readonly Dictionary<ResLoraLinear, double> _alpha = new();
    private ForwardContext? _current;
    private long _forwardCounter;
    private double[]? _partials; // a sharded step's squared norms: [micro][layer][input, middle]
    private int _micro;

    public ResLoraLayerBuilder(ResLoraConfig config, Generator? generator = null)
    {
        config.Validate();
        _config = config;
        _generator = generator;
        ShortcutWeight = config.ShortcutWeight;
    }

    public ResLoraConfig Config => _config;
    public ResLoraStructure Structure => _config.StructureKind;
    public ResLoraMergeKind MergeKind => _config.MergeKind;
    public int PreNum => _config.PreNum;
    public int WindowLength => _config.WindowLength;
    public IReadOnlyList<ResLoraLinear> Layers => _layers;

    /// <summary>
    /// The residual paths' weight w in [0, 1] (1 = the method as published): is feeds A·drop(x_n + w·x_{n−1}), bs adds
    /// w·Σ B_{n−k}A_{n−k}, ms feeds B·(z_n + w·Σ z_{n−k}). Loaded from the config's <c>reslora_anneal</c>; under
    /// <c>--anneal-shortcuts</c> set each step by <see cref="BeginOptimizerStep"/> (<see cref="ShortcutAnneal.Weight"/>).
    /// </summary>
    public double ShortcutWeight { get; set; }

    /// <summary>Shortcut annealing: the weight of this step's forwards is a function of the step alone (resumes exactly).</summary>
    public void BeginOptimizerStep(int step, int totalSteps)
    {
        if (_config.Anneal is not { } a) return;
        if (a.Steps > totalSteps)
            throw new UserInputException($"--anneal-shortcuts {a.Steps} is longer than the run ({totalSteps} optimizer steps); give at most {totalSteps}.");
        ShortcutWeight = ShortcutAnneal.Weight(step, totalSteps, a.Steps, a.Schedule);
    }

    /// <summary>Chains by module type (each list in layer order; a shape change starts a new sub-chain inside the list).</summary>
    public IReadOnlyDictionary<string, List<ResLoraLinear>> Chains => _chains;

    public nn.Module<Tensor, Tensor> Build(AdapterTarget target, ScalarType dtype, Device device)
    {
        var options = new LoraLayerOptions(target.R, target.Alpha, _config.LoraDropout, _config.UseRslora, _config.InitLoraWeights, _config.LoftqIter);
        var layer = new ResLoraLinear(target.Spec, options, this, dtype, device, _generator);
        if (!_chains.TryGetValue(target.Spec.ModuleType, out var chain)) _chains[target.Spec.ModuleType] = chain = new List<ResLoraLinear>();
        var last = chain.Count > 0 ? chain[^1] : null;
        // §2 rule 4: link only when in and out features (and the rank, so bs can concatenate) equal the previous block's.
        if (last is not null && last.Spec.InFeatures == target.Spec.InFeatures && last.Spec.OutFeatures == target.Spec.OutFeatures && last.LoraA.shape[0] == target.R)
        {
            layer.Previous = last;
            layer.ChainPosition = last.ChainPosition + 1;
        }
        chain.Add(layer);
        layer.Index = _layers.Count;
        _layers.Add(layer);
        if (_config.Statistics is { } stats && stats.TryGetValue(target.Spec.Name, out var s))
        {
            layer.SeedStatistics(s.InputNorm, s.MiddleNorm);
            _alpha[layer] = s.Alpha;
        }
        return layer;
    }

    /// <summary>
    /// Spec §7.3: is and ms pass live tensors between decoder layers, so per-layer recomputation is refused for them; bs
    /// passes only weights (its predecessors' A and B) and recomputes safely.
    /// </summary>
    public string? CheckpointRefusal => Structure == ResLoraStructure.BlockShortcut ? null :
        $"ResLoRA's {_config.Structure} structure passes live tensors from each decoder layer to the next (is: a block's input; ms: its A·x), " +
        "and the shortcut's gradient through them is the method (spec §7.3). A checkpointed layer runs its first forward without a graph and is " +
        "recomputed alone in backward, so that gradient would be lost and the recompute would read another forward's tensors. " +
        "Use --structure bs (it passes only weights between layers) or train without --grad-checkpoint.";

    /// <summary>
    /// Spec §4.2 and §6 ("windows are per process"): under data parallelism each rank sees a shard of every batch, so a
    /// window entry is the norm over the whole global batch, √(Σ_r ‖x_r‖²_F), pushed once the ranks' squares are summed.
    /// </summary>
    public void BeginShardedStep(int microBatches)
    {
        _partials = new double[microBatches * _layers.Count * 2];
        _micro = 0;
    }

    public void BeginMicroBatch(int index) => _micro = index;

    public double[] PartialStatistics() => (double[])(_partials ?? throw new InvalidOperationException("ResLoRA: no sharded step was begun.")).Clone();

    public void CompleteShardedStep(ReadOnlySpan<double> totals)
    {
        if (_partials is null || totals.Length != _partials.Length)
            throw new InvalidOperationException($"ResLoRA: {totals.Length} reduced statistics for {_partials?.Length ?? 0} partial ones.");
        _partials = null;
        // In forward order, as one process pushes them: micro-batch by micro-batch, each layer once.
        for (int i = 0; i < totals.Length; i += 2)
            _layers[i / 2 % _layers.Count].PushNorms(Math.Sqrt(totals[i]), Math.Sqrt(totals[i + 1]));
    }

    /// <summary>During a sharded step, keeps a forward's squared norm as this rank's part and returns true.</summary>
    internal bool KeepPartial(ResLoraLinear layer, bool middle, double norm)
    {
        if (_partials is null) return false;
        _partials[(_micro * _layers.Count + layer.Index) * 2 + (middle ? 1 : 0)] += norm * norm;
        return true;
    }

    /// <summary>Opens the context of one model forward; layers stash and read cross-layer tensors only through it.</summary>
    public IDisposable BeginForward()
    {
        if (_current is not null)
            throw new InvalidOperationException("ResLoRA: a model forward started while another is still running on this model; forwards must not nest or overlap.");
        _current = new ForwardContext(this, ++_forwardCounter);
        return _current;
    }

    internal ForwardContext? Current => _current;

    /// <summary>While set, every is/ms block records its input and the vector it feeds to B (a calibration pass).</summary>
    public LeastSquaresFold? Fold { get; set; }

    /// <summary>A*_n per block from <see cref="LeastSquaresFold.Fit"/>; what the <c>ls</c> merge folds (ΔW = s·B_n·A*_n).</summary>
    public IReadOnlyDictionary<ResLoraLinear, Tensor>? FoldedA { get; set; }

    /// <summary>The ridge factor of the fold (λ = ridge · tr(X Xᵀ)/d).</summary>
    public double FoldRidge { get; set; } = LeastSquaresFold.DefaultRidge;

    public bool NeedsCalibration => MergeKind == ResLoraMergeKind.LeastSquares && FoldedA is null;

    /// <summary>The calibration pass of the <c>ls</c> merge: record every block's input and middle vector, then fit A* per block.</summary>
    public void Calibrate(Func<Tensor, Tensor, Tensor> forward, IEnumerable<(Tensor Ids, Tensor Mask)> batches)
    {
        if (_layers.Any(l => l.IsMerged)) throw new InvalidOperationException("ResLoRA: calibrate before merging.");
        using var fold = new LeastSquaresFold();
        Fold = fold;
        try
        {
            using var _ = torch.no_grad();
            foreach (var (ids, mask) in batches)
            {
                using var scope = torch.NewDisposeScope();
                fold.TokenMask = mask;
                forward(ids, mask);
            }
        }
        finally
        {
            Fold = null;
        }
        FoldedA = fold.Fit(_layers, FoldRidge);
    }

    internal ForwardContext Context(string module) =>
        _current ?? throw new InvalidOperationException($"{module}: a ResLoRA block ran outside a model forward; its residual path needs the model to open a forward context (CausalLM does).");

    /// <summary>The tensors one forward passes between layers (is: live inputs; ms: middle vectors). Never detached; dropped at the end.</summary>
    internal sealed class ForwardContext(ResLoraLayerBuilder owner, long id) : IDisposable
    {
        private readonly Dictionary<ResLoraLinear, Tensor> _stash = new();

        public long Id { get; } = id;

        public void Put(ResLoraLinear layer, Tensor t)
        {
            // A new handle to the same tensor (same autograd node), owned by the context rather than the layer's scope.
            var handle = t.alias().DetachFromDisposeScope();
            if (_stash.Remove(layer, out var old)) old.Dispose();
            _stash[layer] = handle;
        }

        public Tensor Get(ResLoraLinear from, string reader)
        {
            if (owner._current != this) throw new InvalidOperationException($"{reader}: stale ResLoRA context from an earlier forward.");
            return _stash.TryGetValue(from, out var t)
                ? t
                : throw new InvalidOperationException($"{reader}: its chain predecessor {from.Spec.Name} did not run earlier in this forward; ResLoRA needs layers to run in chain order.");
        }

        public void Dispose()
        {
            foreach (var t in _stash.Values) t.Dispose();
            _stash.Clear();
            if (owner._current == this) owner._current = null;
        }
    }

    /// <summary>
    /// The merge coefficient α of every block (spec §4.2), computed while no block is merged:
    /// is/bi: f_{n−1}/f_n from input-norm windows (1 at a chain start or when a norm is 0);
    /// is/bw: ‖W*_{n−2}‖/‖W*_{n−1}‖ with W*_j = W_j + s B_j A_j (1 at chain positions 0 and 1);
    /// ms/bi: Σ_k g_{n−k}/g_n from ‖A x‖ windows (0 at a chain start; a term is 1 when a norm is 0);
    /// ms/bw (A-merge): per-predecessor weights f_{n−k}/f_n, returned by <see cref="AMergeWeights"/>.
    /// </summary>
    public IReadOnlyDictionary<ResLoraLinear, double> ComputeAlphas()
    {
        if (_layers.Any(l => l.IsMerged)) return _alpha;
        _alpha.Clear();
        var wNorm = new Dictionary<ResLoraLinear, double>();
        double WStar(ResLoraLinear l)
        {
            if (wNorm.TryGetValue(l, out var v)) return v;
            using var scope = torch.NewDisposeScope();
            using var _ = torch.no_grad();
            var w = l.Base.Weight32() + LowRank.Product(l.LoraB, l.LoraA).mul(l.Scaling);
            return wNorm[l] = w.norm().item<float>();
        }
        static double Ratio(double num, double den) => num > 0 && den > 0 ? num / den : 1.0;
        foreach (var l in _layers)
        {
            double a = (Structure, MergeKind) switch
            {
                (ResLoraStructure.InputShortcut, ResLoraMergeKind.Bi) => l.Previous is null ? 1.0 : Ratio(l.Previous.InputNormMean, l.InputNormMean),
                (ResLoraStructure.InputShortcut, ResLoraMergeKind.Bw) => l.Previous?.Previous is null ? 1.0 : Ratio(WStar(l.Previous.Previous), WStar(l.Previous)),
                (ResLoraStructure.MiddleShortcut, ResLoraMergeKind.Bi) => l.Predecessors(PreNum).Sum(p => Ratio(p.MiddleNormMean, l.MiddleNormMean)),
                _ => 0.0,
            };
            _alpha[l] = a;
        }
        return _alpha;
    }

    /// <summary>ms A-merge (spec §4.2, eq. 13 as the code computes it): A*_n = A_n + Σ_k (f_{n−k}/f_n) A_{n−k}, f = input-norm window means.</summary>
    public IReadOnlyList<(ResLoraLinear Block, double Weight)> AMergeWeights(ResLoraLinear l) =>
        l.Predecessors(PreNum).Select(p => (p, p.InputNormMean > 0 && l.InputNormMean > 0 ? p.InputNormMean / l.InputNormMean : 1.0)).ToList();

    /// <summary>ΔW (out, in) float32 that removes the block's residual path (spec §4).</summary>
    internal Tensor DeltaWeight(ResLoraLinear l)
    {
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        Tensor d;
        double w = ShortcutWeight;
        if (Structure == ResLoraStructure.BlockShortcut || MergeKind == ResLoraMergeKind.Exact)
        {
            // §4.1, exact: W* = W + s Σ_{k=0..m} B_{n−k} A_{n−k} (predecessor terms times w; none at w = 0, annealed).
            d = LowRank.Product(l.LoraB, l.LoraA);
            if (w != 0)
                foreach (var p in l.Predecessors(PreNum)) d = w == 1 ? d + LowRank.Product(p.LoraB, p.LoraA) : d + LowRank.Product(p.LoraB, p.LoraA) * w;
        }
        else if (MergeKind == ResLoraMergeKind.LeastSquares)
        {
            var folded = FoldedA is { } f && f.TryGetValue(l, out var a) ? a
                : throw new InvalidOperationException($"{l.Spec.Name}: merge ls needs the calibration pass first (ResLoraLayerBuilder.Calibrate).");
            d = l.LoraB.detach().to_type(ScalarType.Float32).matmul(folded.detach().to_type(ScalarType.Float32));
        }
        else if (Structure == ResLoraStructure.MiddleShortcut && MergeKind == ResLoraMergeKind.Bw)
        {
            var a = l.LoraA.detach().to_type(ScalarType.Float32);
            foreach (var (p, f) in AMergeWeights(l)) a = a + p.LoraA.detach().to_type(ScalarType.Float32) * (w == 1 ? f : f * w);
            d = l.LoraB.detach().to_type(ScalarType.Float32).matmul(a);
        }
        else
        {
            // §4.2: W* = W + (1 + w·α*) s B_n A_n (w = 1 unless the paths were annealed part of the way).
            var alphas = ComputeAlphas();
            d = LowRank.Product(l.LoraB, l.LoraA) * (1.0 + (w == 1 ? alphas[l] : w * alphas[l]));
        }
        return scope.MoveToOuter(d.mul(l.Scaling));
    }

    /// <summary>Window means and α per module, for adapter_config.json (recomputed now when nothing is merged).</summary>
    public Dictionary<string, ResLoraModuleStatistics> CurrentStatistics()
    {
        var alphas = ComputeAlphas();
        return _layers.ToDictionary(l => l.Spec.Name, l => new ResLoraModuleStatistics
        {
            InputNorm = l.InputNormMean,
            MiddleNorm = l.MiddleNormMean,
            Alpha = alphas.TryGetValue(l, out var a) ? a : 0,
        }, StringComparer.Ordinal);
    }

    /// <summary>The config to save: this model's statistics filled in.</summary>
    public ResLoraConfig ConfigWithStatistics() => _config with
    {
        Statistics = CurrentStatistics(),
        Anneal = _config.Anneal is { } a ? a with { FinalWeight = ShortcutWeight } : null,
    };

    public AdapterConfigBase SnapshotConfig() => ConfigWithStatistics();
}
