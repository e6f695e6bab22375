using System.Text.RegularExpressions;
using ResLora.Models;

namespace ResLora.Adapters;

/// <summary>One adapter loaded into a <see cref="MultiLoraPlan"/>: its name, folder, config, the projections it adapts and the bytes its tensors take.</summary>
public sealed record LoadedAdapter(string Name, string Source, LoraConfig Config, int Modules, long Bytes)
{
    /// <summary>lora, rslora or dora.</summary>
    public string Kind => Config.UseDora ? "dora" : Config.UseRslora ? "rslora" : "lora";
}

/// <summary>
/// A view of one loaded adapter on one projection: A (r, in), B (out, r) and the scaling s, so that ΔW = s·B·A
/// (DoRA adds its magnitude on top, <paramref name="IsDora"/>). The tensors are the adapter set's own: do not dispose.
/// </summary>
public sealed record LoraPairView(string Module, Tensor A, Tensor B, double Scaling, bool IsDora);

/// <summary>
/// The linear factory of a base model that carries many LoRA-family adapters at once (issue 18): every projection is
/// built as a <see cref="MultiLoraLinear"/> holding the frozen base weight once; adapters are added, removed and
/// switched afterwards without touching the base. An adapter costs only its own tensors (A, B, and DoRA's per-row
/// vector). Which adapter a forward uses is either the <see cref="Active"/> one for the whole batch, or, inside
/// <see cref="Route"/>, one per batch row. Targeting follows each adapter's config exactly as a single-adapter model
/// would (<see cref="AdapterPlan.Decide"/>: target_modules, exclude_modules, layers_to_transform, rank/alpha patterns).
/// Forwards are not thread-safe: run one forward at a time, and add or remove adapters only between forwards (adding,
/// removing and switching lock against each other, and refuse while a routed forward is running).
/// </summary>
public sealed class MultiLoraPlan : ILinearFactory
{
    /// <summary>The name that means "no adapter" in a per-row list (beside null).</summary>
    public const string BaseName = "base";

    private static readonly Regex NamePattern = new("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", RegexOptions.CultureInvariant);
    private readonly object _gate = new();
    private readonly Dictionary<string, MultiLoraLinear> _layers = new(StringComparer.Ordinal);
    private readonly List<LinearSpec> _specs = new();
    private readonly Dictionary<string, LoadedAdapter> _adapters = new(StringComparer.Ordinal);
    private string? _active;
    private RouteScope? _route;

    /// <summary>Builds the projection as a <see cref="MultiLoraLinear"/> with no adapter yet.</summary>
    public nn.Module<Tensor, Tensor> Create(LinearSpec spec, ScalarType dtype, Device device)
    {
        var layer = new MultiLoraLinear(spec, dtype, device, this);
        lock (_gate)
        {
            if (!_layers.TryAdd(spec.Name, layer)) throw new InvalidOperationException($"two projections share the module path '{spec.Name}'; LinearSpec names must be unique.");
            _specs.Add(spec);
        }
        return layer;
    }

    /// <summary>Every projection built, by Hugging Face module path.</summary>
    public IReadOnlyDictionary<string, MultiLoraLinear> Layers { get { lock (_gate) return new Dictionary<string, MultiLoraLinear>(_layers, StringComparer.Ordinal); } }

    /// <summary>The loaded adapters in load order.</summary>
    public IReadOnlyList<LoadedAdapter> Adapters { get { lock (_gate) return _adapters.Values.ToList(); } }

    /// <summary>
    /// The adapter every row uses outside <see cref="Route"/>; null (or <see cref="BaseName"/>) is the base alone.
    /// Switching costs nothing: no weight is copied or merged.
    /// </summary>
    public string? Active
    {
        get { lock (_gate) return _active; }
        set
        {
            lock (_gate)
            {
                string? n = value is null || value == BaseName ? null : value;
                if (n is not null) Require(n);
                _active = n;
            }
        }
    }

    /// <summary>
    /// Installs an adapter read from a folder under <paramref name="name"/>. Only peft_type LORA adapters (LoRA, rsLoRA,
    /// DoRA, and any method exported as LoRA) are accepted; the folder must hold exactly the tensors its config targets in
    /// this model. All or nothing: on any error nothing is installed. The caller keeps (and disposes) the contents.
    /// </summary>
    /// <param name="name">The adapter's name: letters, digits, '.', '_' or '-', not "base".</param>
    /// <param name="contents">What <see cref="AdapterFolder.Load"/> read.</param>
    public LoadedAdapter Add(string name, AdapterFolderContents contents)
    {
        CheckName(name);
        string where = $"adapter '{name}' ({contents.Directory})";
        var config = contents.Config as LoraConfig ?? throw new UserInputException(
            $"{where}: a {contents.Config.Method} adapter (peft_type {contents.Config.PeftType}) cannot share a base with other adapters; only LoRA, rsLoRA and DoRA adapters (peft_type LORA) can. " +
            $"Export it as a plain LoRA first (reslora export --model M --adapter {contents.Directory} --out DIR), then load that folder.");
        if (contents.SavedModules.Count > 0)
            throw new UserInputException($"{where}: the adapter also trains whole modules (modules_to_save: {string.Join(", ", config.ModulesToSave ?? Array.Empty<string>())}), which would replace shared base weights; adapter sets hold only low-rank adapters.");
        lock (_gate)
        {
            if (_adapters.ContainsKey(name)) throw new UserInputException($"{where}: an adapter named '{name}' is already loaded; remove it first or pick another name.");
            if (_route is not null) throw new InvalidOperationException($"{where}: cannot add an adapter while a routed forward is running.");
            var plan = new AdapterPlan(config);
            var decisions = plan.DecideAll(_specs);
            try { plan.EnsureAllPatternsMatched(); }
            catch (UserInputException e) { throw new UserInputException($"{where}: {e.Message}", e); }
            var built = new List<(MultiLoraLinear Layer, LoraSlot Slot)>();
            try
            {
                foreach (var d in decisions.Where(d => d.Adapted))
                {
                    var layer = _layers[d.Spec.Name];
                    built.Add((layer, BuildSlot(where, config, d, layer, contents)));
                }
                foreach (var module in contents.Tensors.Keys)
                    if (!_layers.TryGetValue(module, out var l) || !decisions.Any(d => d.Adapted && d.Spec.Name == module))
                        throw new UserInputException($"{where}: {AdapterFolder.WeightsFileName} holds tensors for '{module}', which {(l is null ? "is not a projection of this model" : "its config does not target")}; the folder was saved for another model or target_modules.");
            }
            catch
            {
                foreach (var (_, s) in built) s.Dispose();
                throw;
            }
            foreach (var (layer, slot) in built) layer.AddSlot(name, slot);
            var loaded = new LoadedAdapter(name, contents.Directory, config, built.Count, built.Sum(b => b.Slot.Bytes));
            _adapters[name] = loaded;
            return loaded;
        }
    }

    /// <summary>Unloads an adapter and frees its tensors; the base is untouched. Removing the active adapter makes the base active.</summary>
    public void Remove(string name)
    {
        lock (_gate)
        {
            Require(name);
            if (_route is not null) throw new InvalidOperationException($"cannot remove adapter '{name}' while a routed forward is running.");
            foreach (var l in _layers.Values) l.RemoveSlot(name);
            _adapters.Remove(name);
            if (_active == name) _active = null;
        }
    }

    /// <summary>The adapter's pairs on every projection it adapts, in module order (views: do not dispose).</summary>
    public IReadOnlyList<LoraPairView> Pairs(string name)
    {
        lock (_gate)
        {
            Require(name);
            var list = new List<LoraPairView>();
            foreach (var (path, l) in _layers.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                if (l.TryGetSlot(name, out var s)) list.Add(new LoraPairView(path, s.A, s.B, s.Scaling, s.DoraScale is not null));
            return list;
        }
    }

    /// <summary>Every projection the model created, in creation order.</summary>
    public IReadOnlyList<LinearSpec> Specs { get { lock (_gate) return _specs.ToList(); } }

    /// <summary>
    /// Until the returned scope is disposed, row i of every forward uses <paramref name="adapterPerRow"/>[i] (null or
    /// <see cref="BaseName"/>: the base alone). Rows are grouped by adapter once, here; every projection then gathers each
    /// group's rows for one low-rank product. One routed forward at a time.
    /// </summary>
    /// <param name="adapterPerRow">One adapter name (or null) per batch row.</param>
    /// <param name="device">The model's device (for the row indices).</param>
    public IDisposable Route(IReadOnlyList<string?> adapterPerRow, Device device)
    {
        if (adapterPerRow.Count == 0) throw new UserInputException("a mixed batch needs at least one row.");
        lock (_gate)
        {
            if (_route is not null) throw new InvalidOperationException("a routed forward is already running on this adapter set; run one forward at a time.");
            var names = adapterPerRow.Select(n => n is null || n == BaseName ? null : n).ToList();
            foreach (var n in names.Where(n => n is not null).Distinct(StringComparer.Ordinal)) Require(n!);
            var groups = new List<(string Name, Tensor? Rows)>();
            foreach (var g in names.Select((n, i) => (n, i)).Where(x => x.n is not null).GroupBy(x => x.n!, StringComparer.Ordinal))
            {
                long[] rows = g.Select(x => (long)x.i).ToArray();
                groups.Add((g.Key, rows.Length == names.Count ? null : torch.tensor(rows, dtype: ScalarType.Int64, device: device)));
            }
            // For projections that fuse a mixed batch: each row's group (groups.Count = none), computed once per route.
            Tensor? rowGroup = groups.Count < 2 ? null : torch.tensor(
                names.Select(n => n is null ? (long)groups.Count : groups.FindIndex(g => g.Name == n)).ToArray(), dtype: ScalarType.Int64, device: device);
            _route = new RouteScope(this, groups, names.Count, rowGroup);
            return _route;
        }
    }

    /// <summary>The (adapter, rows) pairs the forward of a batch of <paramref name="batch"/> rows applies; rows null = every row.</summary>
    internal IReadOnlyList<(string Name, Tensor? Rows)> CurrentGroups(long batch)
    {
        var route = _route;
        if (route is not null)
        {
            if (route.Batch != batch)
                throw new InvalidOperationException($"the routed forward was set up for {route.Batch} rows but a projection received a batch of {batch}.");
            return route.Groups;
        }
        return _active is { } a ? new[] { (a, (Tensor?)null) } : Array.Empty<(string, Tensor?)>();
    }

    /// <summary>The current route's group index per row (rows without adapter: the number of groups), or null when fewer than two adapters are routed.</summary>
    internal Tensor? CurrentRowGroups => _route?.RowGroup;

    /// <summary>Throws unless <paramref name="name"/> can name an adapter.</summary>
    public static void CheckName(string name)
    {
        if (name == BaseName || !NamePattern.IsMatch(name ?? ""))
            throw new UserInputException($"adapter name '{name}': use 1–64 letters, digits, '.', '_' or '-', starting with a letter or digit, and not '{BaseName}' (which means the model without adapter).");
    }

    private void Require(string name)
    {
        if (!_adapters.ContainsKey(name))
            throw new UserInputException($"no adapter named '{name}' is loaded; loaded: {(_adapters.Count == 0 ? "none" : string.Join(", ", _adapters.Keys))} (or '{BaseName}' for the model alone).");
    }

    /// <summary>Checks one module's saved tensors against the decision and copies them in the adapter dtype onto the layer's device.</summary>
    private static LoraSlot BuildSlot(string where, LoraConfig config, PlanDecision d, MultiLoraLinear layer, AdapterFolderContents contents)
    {
        string m = d.Spec.Name;
        string file = $"{where}: {AdapterFolder.WeightsFileName}";
        if (!contents.Tensors.TryGetValue(m, out var state))
            throw new UserInputException($"{file} has no tensors for '{m}', which its config targets in this model; the folder was saved for a different target_modules or model.");
        var expected = new Dictionary<string, long[]>(StringComparer.Ordinal)
        {
            ["lora_A.weight"] = new long[] { d.R, d.Spec.InFeatures },
            ["lora_B.weight"] = new long[] { d.Spec.OutFeatures, d.R },
        };
        if (config.UseDora) expected["lora_magnitude_vector"] = new long[] { d.Spec.OutFeatures };
        foreach (var k in state.Keys)
            if (!expected.ContainsKey(k)) throw new UserInputException($"{file}: unexpected tensor '{m}.{k}' for a {config.Method} adapter (expected {string.Join(", ", expected.Keys)}).");
        foreach (var (k, shape) in expected)
        {
            if (!state.TryGetValue(k, out var t)) throw new UserInputException($"{file}: tensor '{m}.{k}' is missing (expected shape [{string.Join(", ", shape)}]).");
            if (!t.shape.SequenceEqual(shape))
                throw new UserInputException($"{file}: '{m}.{k}' has shape [{string.Join(", ", t.shape)}] but r = {d.R} on this model needs [{string.Join(", ", shape)}]; check r / rank_pattern in {AdapterFolder.ConfigFileName}.");
        }
        double scaling = new LoraLayerOptions(d.R, d.Alpha, UseRslora: config.UseRslora).Scaling;
        using var scope = torch.NewDisposeScope();
        using var _ = torch.no_grad();
        var device = layer.Weight.device;
        Tensor a = state["lora_A.weight"].to(layer.AdapterDtype, device).clone();
        Tensor b = state["lora_B.weight"].to(layer.AdapterDtype, device).clone();
        Tensor? c = null;
        if (config.UseDora)
        {
            // §3.2: c = m / ‖W₀ + s·BA‖ per output row, computed as DoraLinear's forward does (the norm is detached there too).
            Tensor ba = b.matmul(a);
            Tensor n = torch.linalg.norm(layer.Weight.detach().to_type(layer.AdapterDtype).add(ba.mul(scaling)), dims: new long[] { 1 });
            c = LoraTerms.DoraScale(state["lora_magnitude_vector"].to(layer.AdapterDtype, device), n).DetachFromDisposeScope();
        }
        return new LoraSlot(a.DetachFromDisposeScope(), b.DetachFromDisposeScope(), scaling, c);
    }

    /// <summary>The row groups of one routed forward; disposing ends the route and frees the row indices.</summary>
    private sealed class RouteScope : IDisposable
    {
        private readonly MultiLoraPlan _owner;

        public RouteScope(MultiLoraPlan owner, IReadOnlyList<(string Name, Tensor? Rows)> groups, long batch, Tensor? rowGroup)
        {
            _owner = owner;
            Groups = groups;
            Batch = batch;
            RowGroup = rowGroup;
        }

        public IReadOnlyList<(string Name, Tensor? Rows)> Groups { get; }
        public long Batch { get; }
        public Tensor? RowGroup { get; }

        public void Dispose()
        {
            lock (_owner._gate)
            {
                if (!ReferenceEquals(_owner._route, this)) return;
                _owner._route = null;
            }
            foreach (var (_, rows) in Groups) rows?.Dispose();
            RowGroup?.Dispose();
        }
    }
}
