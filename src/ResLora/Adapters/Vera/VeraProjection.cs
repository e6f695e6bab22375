namespace ResLora.Adapters;

/// <summary>
/// VeRA's shared frozen projections: vera_A (r, max in) and vera_B (max out, r) over every adapted projection of a model
/// (PEFT's VeraModel._find_dim takes the largest in and out features among the targets), each layer using the slices
/// A[:, :in] and B[:out, :]. The sizes are only known once the model has built all its projections, so the tensors are
/// drawn on first use; a layer reserving a size after that is a bug (the model is built before it runs).
/// </summary>
/// <remarks>
/// Init (PEFT's <c>_kaiming_init</c>): a fresh CPU generator seeded with projection_prng_key draws A, then B, each
/// U(−√(6/fan_in), √(6/fan_in)) through libtorch's <c>uniform_</c> (Kaiming-uniform with gain √2, fan_in = columns).
/// The tensors are not module parameters: they are never trained, never in a base checkpoint, and saved once under
/// PEFT's model-level keys <c>base_model.vera_A</c> / <c>base_model.vera_B</c> when save_projection is set.
/// </remarks>
public sealed class VeraProjection
{
    /// <summary>PEFT's key of vera_A in adapter_model.safetensors (the adapter name removed).</summary>
    public const string KeyA = "base_model.vera_A";

    /// <summary>PEFT's key of vera_B in adapter_model.safetensors.</summary>
    public const string KeyB = "base_model.vera_B";

    private readonly object _gate = new();
    private readonly long _seed;
    private readonly ScalarType _dtype;
    private readonly Device _device;
    private long _maxIn, _maxOut;
    private Tensor? _a, _b;
    private Tensor? _loadedA, _loadedB; // compared by reference only, never read

    /// <param name="r">The rank (rows of A, columns of B).</param>
    /// <param name="seed">projection_prng_key.</param>
    /// <param name="dtype">The adapter dtype the tensors are kept in (float32 for a float32, fp16 or bf16 model).</param>
    /// <param name="device">Where the tensors live.</param>
    public VeraProjection(int r, long seed, ScalarType dtype, Device device)
    {
        R = r;
        _seed = seed;
        _dtype = dtype;
        _device = device;
    }

    public int R { get; }

    /// <summary>Widens the projections to cover a layer of (in, out) features; refused once they are drawn.</summary>
    public void Reserve(long inFeatures, long outFeatures, string module)
    {
        lock (_gate)
        {
            if (_a is not null && (inFeatures > _maxIn || outFeatures > _maxOut))
                throw new InvalidOperationException($"{module}: a VeRA layer of ({outFeatures}, {inFeatures}) was built after the shared projections were drawn at ({_maxOut}, {_maxIn}); build every layer before the first forward.");
            _maxIn = Math.Max(_maxIn, inFeatures);
            _maxOut = Math.Max(_maxOut, outFeatures);
        }
    }

    /// <summary>vera_A (r, max in), drawn on first use.</summary>
    public Tensor A { get { Draw(); return _a!; } }

    /// <summary>vera_B (max out, r), drawn on first use.</summary>
    public Tensor B { get { Draw(); return _b!; } }

    /// <summary>Copies saved projections in (a PEFT file's <see cref="KeyA"/> / <see cref="KeyB"/>); shapes must match.</summary>
    public void Load(Tensor a, Tensor b, string file)
    {
        // Every layer hands over the same two tensors of a folder: copy them once.
        if (ReferenceEquals(a, _loadedA) && ReferenceEquals(b, _loadedB)) return;
        Draw();
        void Check(string key, Tensor saved, Tensor live)
        {
            if (!saved.shape.SequenceEqual(live.shape))
                throw new UserInputException($"{file}: '{key}' has shape [{string.Join(", ", saved.shape)}] but this model's VeRA projection is [{string.Join(", ", live.shape)}] (r, the largest in/out features of the targets); check r and target_modules in adapter_config.json.");
        }
        Check(KeyA, a, _a!);
        Check(KeyB, b, _b!);
        using var _ = torch.no_grad();
        _a!.copy_(a);
        _b!.copy_(b);
        (_loadedA, _loadedB) = (a, b);
    }

    private void Draw()
    {
        lock (_gate)
        {
            if (_a is not null) return;
            if (_maxIn == 0) throw new InvalidOperationException("VeRA projections used before any layer reserved a size.");
            using var g = new Generator((ulong)_seed, torch.CPU);
            _a = KaimingUniform(new[] { (long)R, _maxIn }, g).to(_dtype, _device).DetachFromDisposeScope();
            _b = KaimingUniform(new[] { _maxOut, (long)R }, g).to(_dtype, _device).DetachFromDisposeScope();
        }
    }

    /// <summary>PEFT's _kaiming_init: U(−√3·√2/√fan_in, +…) with fan_in = shape[1], one uniform_ call on the generator.</summary>
    private static Tensor KaimingUniform(long[] shape, Generator g)
    {
        double bound = Math.Sqrt(3.0) * Math.Sqrt(2.0) / Math.Sqrt(shape[1]);
        using var _ = torch.no_grad();
        return torch.empty(shape, ScalarType.Float32).uniform_(-bound, bound, g);
    }
}
