using System.Text;
using ResLora.IO;

namespace ResLora.Adapters;

/// <summary>
/// What <see cref="AdapterFolder.Load"/> read: the config, non-fatal warnings (unknown config fields), and the adapter
/// tensors (float32, CPU) by Hugging Face module path, then by PEFT parameter suffix (<c>lora_A.weight</c>, ...).
/// Owns the tensors: dispose when done.
/// </summary>
public sealed class AdapterFolderContents : IDisposable
{
    internal AdapterFolderContents(string directory, AdapterConfigBase config, IReadOnlyList<string> warnings,
        IReadOnlyDictionary<string, IReadOnlyDictionary<string, Tensor>> tensors, IReadOnlyDictionary<string, Tensor> savedModules,
        IReadOnlyDictionary<string, Tensor>? shared = null)
    {
        Shared = shared ?? new Dictionary<string, Tensor>();
        Directory = directory;
        Config = config;
        Warnings = warnings;
        Tensors = tensors;
        SavedModules = savedModules;
    }

    public string Directory { get; }
    public AdapterConfigBase Config { get; }
    public IReadOnlyList<string> Warnings { get; }
    public IReadOnlyDictionary<string, IReadOnlyDictionary<string, Tensor>> Tensors { get; }

    /// <summary>Fully trained module weights (<c>modules_to_save</c>) by parameter path in the model (<c>classifier.weight</c>).</summary>
    public IReadOnlyDictionary<string, Tensor> SavedModules { get; }

    /// <summary>Model-level adapter tensors outside any module path, by full key (VeRA's <c>base_model.vera_A</c>; see <see cref="ISharedAdapterState"/>).</summary>
    public IReadOnlyDictionary<string, Tensor> Shared { get; }

    public void Dispose()
    {
        foreach (var t in Shared.Values) t.Dispose();
        foreach (var m in Tensors.Values)
            foreach (var t in m.Values) t.Dispose();
        foreach (var t in SavedModules.Values) t.Dispose();
    }
}

/// <summary>
/// PEFT adapter folders (peft-format.md §2.1–2.5): <c>adapter_config.json</c> + <c>adapter_model.safetensors</c> with keys
/// <c>base_model.model.&lt;module path&gt;.lora_A.weight</c> etc.
/// </summary>
public static class AdapterFolder
{
    public const string ConfigFileName = "adapter_config.json";
    public const string WeightsFileName = "adapter_model.safetensors";
    public const string KeyPrefix = "base_model.model.";
    public const string DefaultAdapterName = "default";

    /// <summary>Test hook (per thread): runs after the weights file is written, before the config file is.</summary>
    [ThreadStatic] internal static Action<string>? BeforeCommit;

    /// <summary>
    /// Writes the adapter into <paramref name="dir"/> (created if needed; other files in it are kept): first the weights,
    /// then the config, each atomically (temp file, flush, rename), so a crash leaves the previous pair or a complete new
    /// weights file beside the previous config, never a torn file or a missing folder. Tensors are written as float32,
    /// metadata {"format":"pt"}; the config is written with inference_mode forced to true, as PEFT does (§2.2).
    /// </summary>
    /// <param name="dir">The adapter folder.</param>
    /// <param name="config">The config the adapters were built from.</param>
    /// <param name="adapters">The adapters by module path.</param>
    /// <param name="savedModules">Weights of <see cref="AdapterConfigBase.ModulesToSave"/> by parameter path, saved as PEFT does
    /// (<c>base_model.model.classifier.weight</c>); every module the config names must be given.</param>
    /// <param name="state">The tensors to write for an adapter (default: <see cref="IAdapter.GetAdapterState"/>); <see cref="MutatedInitConversion"/> gives the rank-2r pair for the original base.</param>
    public static void Save(string dir, AdapterConfigBase config, IReadOnlyDictionary<string, IAdapter> adapters, IReadOnlyDictionary<string, Tensor>? savedModules = null,
        Func<IAdapter, IReadOnlyDictionary<string, Tensor>>? state = null)
    {
        config.Validate();
        if (adapters.Count == 0) throw new UserInputException($"{dir}: no adapters to save (the model has no adapter layers; check target_modules).");
        var layerTypes = AdapterMethods.For(config).LayerTypes(config);
        var tensors = new List<KeyValuePair<string, Tensor>>();
        using var scope = torch.NewDisposeScope();
        foreach (var (path, a) in adapters.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            if (a.Spec.Name != path) throw new UserInputException($"{dir}: adapter registered under '{path}' is for module '{a.Spec.Name}'; key the dictionary by IAdapter.Spec.Name.");
            if (!layerTypes.Contains(a.GetType()))
                throw new ArgumentException($"{dir}: module '{path}' holds a {a.GetType().Name} but the config describes a {config.Method} adapter ({string.Join(" or ", layerTypes.Select(t => t.Name))}); save with the config the model was built from.");
            foreach (var (suffix, t) in state?.Invoke(a) ?? a.GetAdapterState())
                tensors.Add(new(KeyPrefix + path + "." + suffix, t.detach().to_type(ScalarType.Float32).cpu().contiguous().clone()));
        }
        foreach (var (key, t) in adapters.Values.OfType<ISharedAdapterState>().SelectMany(s => s.GetSharedState()).DistinctBy(kv => kv.Key).OrderBy(kv => kv.Key, StringComparer.Ordinal))
            tensors.Add(new(key, t.detach().to_type(ScalarType.Float32).cpu().contiguous().clone()));
        foreach (var name in config.ModulesToSave ?? Array.Empty<string>())
            if (savedModules is null || !savedModules.Keys.Any(k => config.IsSavedModule(k)))
                throw new ArgumentException($"{dir}: modules_to_save names '{name}' but no weights of it were given to save.");
        foreach (var (name, t) in (savedModules ?? new Dictionary<string, Tensor>()).OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            if (!config.IsSavedModule(name)) throw new ArgumentException($"{dir}: '{name}' is not inside a module of modules_to_save.");
            tensors.Add(new(KeyPrefix + name, t.detach().to_type(ScalarType.Float32).cpu().contiguous().clone()));
        }
        string json = AdapterConfigJson.Serialize(config with { InferenceMode = true });
        void WritePair(string into)
        {
            SafetensorsWriter.Write(Path.Combine(into, WeightsFileName), tensors, new Dictionary<string, string> { ["format"] = "pt" });
            BeforeCommit?.Invoke(into);
            AtomicFile.WriteAllText(Path.Combine(into, ConfigFileName), json);
        }
        // A new folder appears whole; an existing one (a training run's --out) gets each file replaced atomically.
        if (Directory.Exists(dir)) WritePair(dir);
        else AtomicFolder.Write(dir, WritePair, flag: "adapter folder");
    }

    /// <summary>
    /// Saves every adapter found in <paramref name="model"/>, and the model's parameters inside the config's
    /// modules_to_save (fully trained modules, e.g. <c>lm_head.weight</c>) under their own names.
    /// </summary>
    public static void Save(string dir, AdapterConfigBase config, nn.Module model) =>
        Save(dir, config, AdapterModel.ByModulePath(model), config.ModulesToSave is { Count: > 0 } ? SavedModuleWeights(config, model) : null);

    /// <summary>
    /// The model's parameters inside the config's modules_to_save (fully trained modules, e.g. <c>lm_head.weight</c>) by
    /// parameter path, adapter parameters left out; the tensors are the model's own (callers copy what they keep).
    /// </summary>
    public static IReadOnlyDictionary<string, Tensor> SavedModuleWeights(AdapterConfigBase config, nn.Module model) =>
        model.named_parameters().Where(p => config.IsSavedModule(p.name) && !IsAdapterParameter(p.name)).ToDictionary(p => p.name, p => (Tensor)p.parameter, StringComparer.Ordinal);

    /// <summary>Whether a parameter path belongs to an adapter (a segment starts with a method's parameter prefix).</summary>
    private static bool IsAdapterParameter(string path) =>
        path.Split('.').Any(seg => AdapterMethods.ParameterPrefixes.Any(p => seg.StartsWith(p, StringComparison.Ordinal)));

    /// <summary>
    /// Reads a PEFT adapter folder. Accepts F32/F16/BF16 tensors (returned as float32), keys with or without the
    /// <c>base_model.model.</c> prefix and with or without PEFT's adapter name (<c>.lora_A.default.weight</c>).
    /// A tensor holding NaN or ±∞ is an error naming the file and the tensor.
    /// </summary>
    public static AdapterFolderContents Load(string dir, string adapterName = DefaultAdapterName)
    {
        string configPath = Path.Combine(dir, ConfigFileName);
        string weightsPath = Path.Combine(dir, WeightsFileName);
        if (!File.Exists(configPath)) throw new FileNotFoundException($"{configPath}: not found; an adapter folder needs {ConfigFileName} and {WeightsFileName}.", configPath);
        if (!File.Exists(weightsPath))
        {
            string bin = Path.Combine(dir, "adapter_model.bin");
            throw new FileNotFoundException(File.Exists(bin)
                ? $"{weightsPath}: not found, only the pickle file {bin}, which cannot be read safely; convert it in Python with PeftModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)."
                : $"{weightsPath}: not found; an adapter folder needs {ConfigFileName} and {WeightsFileName}.", weightsPath);
        }
        var (config, warnings) = AdapterConfigJson.Parse(BoundedFile.ReadAllText(configPath, BoundedFile.ConfigLimit, "adapter config"), configPath);
        var byModule = new Dictionary<string, Dictionary<string, Tensor>>(StringComparer.Ordinal);
        var saved = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var shared = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var origin = new Dictionary<(string, string), string>();
        try
        {
            using var file = SafetensorsFile.Open(weightsPath);
            foreach (var e in file.Entries)
            {
                if (e.Dtype is not ("F32" or "F16" or "BF16"))
                    throw new UserInputException($"{weightsPath}: tensor '{e.Name}' has dtype {e.Dtype}; adapter tensors must be F32, F16 or BF16.");
                // Model-level tensors (VeRA's base_model.vera_A): under base_model. but outside base_model.model.
                if (e.Name.StartsWith("base_model.", StringComparison.Ordinal) && !e.Name.StartsWith(KeyPrefix, StringComparison.Ordinal))
                {
                    shared[e.Name.EndsWith("." + adapterName, StringComparison.Ordinal) ? e.Name[..^(adapterName.Length + 1)] : e.Name] = file.Load(e.Name, ScalarType.Float32);
                    continue;
                }
                // modules_to_save weights: base_model.model.<path> (PEFT drops "modules_to_save.<name>." when saving).
                string plain = (e.Name.StartsWith(KeyPrefix, StringComparison.Ordinal) ? e.Name[KeyPrefix.Length..] : e.Name).Replace($".modules_to_save.{adapterName}.", ".", StringComparison.Ordinal);
                if (config.IsSavedModule(plain))
                {
                    if (!saved.TryAdd(plain, file.Load(e.Name, ScalarType.Float32)))
                        throw new UserInputException($"{weightsPath}: two keys name the module weight '{plain}'; remove one.");
                    continue;
                }
                var (module, param) = SplitKey(e.Name, adapterName, weightsPath);
                if (origin.TryGetValue((module, param), out var first))
                    throw new UserInputException($"{weightsPath}: keys '{first}' and '{e.Name}' both name {module}.{param}; remove one.");
                origin[(module, param)] = e.Name;
                if (!byModule.TryGetValue(module, out var m)) byModule[module] = m = new Dictionary<string, Tensor>(StringComparer.Ordinal);
                var t = m[param] = file.Load(e.Name, ScalarType.Float32);
                // A NaN or ∞ in an adapter (a diverged run saved elsewhere, a damaged file) would silently poison every
                // output, a merge or a resumed run: refused here, for every verb that reads an adapter.
                if (TensorScan.NonFiniteProblem(TensorScan.CountNonFinite(t), t.NumberOfElements) is { } bad)
                    throw new UserInputException($"{weightsPath}: tensor '{e.Name}': {bad}; the adapter is broken (a diverged or damaged save). Retrain it, or resume from an earlier checkpoint.");
            }
        }
        catch
        {
            foreach (var m in byModule.Values) foreach (var t in m.Values) t.Dispose();
            foreach (var t in saved.Values) t.Dispose();
            foreach (var t in shared.Values) t.Dispose();
            throw;
        }
        foreach (var name in config.ModulesToSave ?? Array.Empty<string>())
            if (!saved.Keys.Any(k => k == name || k.StartsWith(name + ".", StringComparison.Ordinal) || k.Contains("." + name + ".", StringComparison.Ordinal)))
            {
                foreach (var t in saved.Values) t.Dispose();
                foreach (var m in byModule.Values) foreach (var t in m.Values) t.Dispose();
                throw new UserInputException($"{weightsPath}: {ConfigFileName} lists '{name}' in modules_to_save but the file holds no weights of it; the folder is incomplete.");
            }
        return new AdapterFolderContents(dir, config, warnings,
            byModule.ToDictionary(kv => kv.Key, kv => (IReadOnlyDictionary<string, Tensor>)kv.Value, StringComparer.Ordinal), saved, shared);
    }

    /// <summary>
    /// Copies loaded tensors into the model's adapters (keyed by module path). Tensors for a module without an adapter,
    /// adapters without tensors, and shape mismatches are errors naming the key and the shapes.
    /// </summary>
    /// <param name="contents">What <see cref="Load"/> read.</param>
    /// <param name="adapters">The model's adapters by module path.</param>
    /// <param name="savedModulesHandled">True when the caller copies <see cref="AdapterFolderContents.SavedModules"/> itself
    /// (<see cref="ApplySavedModules"/>); otherwise a folder with such weights is refused rather than half applied.</param>
    public static void Apply(AdapterFolderContents contents, IReadOnlyDictionary<string, IAdapter> adapters, bool savedModulesHandled = false)
    {
        string file = Path.Combine(contents.Directory, WeightsFileName);
        if (contents.SavedModules.Count > 0 && !savedModulesHandled)
            throw new UserInputException($"{file}: the adapter also holds fully trained modules ({string.Join(", ", contents.Config.ModulesToSave ?? Array.Empty<string>())}, modules_to_save); load the folder with AdapterFolder.LoadInto (or ApplySavedModules) so they are not lost.");
        foreach (var (module, state) in contents.Tensors)
        {
            if (!adapters.TryGetValue(module, out var a))
            {
                string known = string.Join(", ", adapters.Keys.OrderBy(k => k, StringComparer.Ordinal).Take(6)) + (adapters.Count > 6 ? ", ..." : "");
                throw new UserInputException($"{file}: key '{KeyPrefix}{module}.{state.Keys.First()}' is for module '{module}', which has no adapter in this model (adapted modules: {(known.Length == 0 ? "none" : known)}); check target_modules and the base model.");
            }
            var own = a.GetAdapterState();
            foreach (var (param, t) in state)
                if (own.TryGetValue(param, out var live) && !live.shape.SequenceEqual(t.shape))
                    throw new UserInputException($"{file}: key '{KeyPrefix}{module}.{param}' has shape [{string.Join(", ", t.shape)}] but the model's tensor is [{string.Join(", ", live.shape)}]; check r / rank_pattern in {ConfigFileName}.");
            try { a.LoadAdapterState(state); }
            catch (UserInputException e) { throw new UserInputException($"{file}: {e.Message}", e); }
        }
        foreach (var module in adapters.Keys)
            if (!contents.Tensors.ContainsKey(module))
                throw new UserInputException($"{file}: has no tensors for module '{module}', which this model adapts; the folder was saved for a different target_modules.");
        var sharing = adapters.Values.OfType<ISharedAdapterState>().ToList();
        if (sharing.Count == 0 && contents.Shared.Count > 0)
            throw new UserInputException($"{file}: key '{contents.Shared.Keys.First()}' is a model-level tensor, which this model's {contents.Config.Method} adapters do not share; the file belongs to another method.");
        foreach (var s in sharing) s.LoadSharedState(contents.Shared, file);
    }

    /// <summary>
    /// Copies the fully trained module weights (<see cref="AdapterFolderContents.SavedModules"/>) into the model's parameters of
    /// the same names; a name the model lacks or a shape mismatch is an error naming the key.
    /// </summary>
    public static void ApplySavedModules(AdapterFolderContents contents, nn.Module model)
    {
        string file = Path.Combine(contents.Directory, WeightsFileName);
        var live = model.named_parameters().ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);
        using var noGrad = torch.no_grad();
        foreach (var (name, t) in contents.SavedModules)
        {
            if (!live.TryGetValue(name, out var p))
                throw new UserInputException($"{file}: key '{KeyPrefix}{name}' names a module weight this model does not have (modules_to_save: {string.Join(", ", contents.Config.ModulesToSave ?? Array.Empty<string>())}); the adapter was saved for another model or head.");
            if (!p.shape.SequenceEqual(t.shape))
                throw new UserInputException($"{file}: key '{KeyPrefix}{name}' has shape [{string.Join(", ", t.shape)}] but the model's is [{string.Join(", ", p.shape)}]; the adapter was trained with another number of labels.");
            p.copy_(t.to(p.dtype, p.device));
        }
    }

    /// <summary>
    /// Loads a folder into a model built from a matching config, fully trained modules (modules_to_save) included;
    /// returns the config warnings.
    /// </summary>
    public static IReadOnlyList<string> LoadInto(string dir, nn.Module model, string adapterName = DefaultAdapterName)
    {
        using var contents = Load(dir, adapterName);
        ApplySavedModules(contents, model); // first: a head the model lacks is named as such, not as a missing adapter
        Apply(contents, AdapterModel.ByModulePath(model), savedModulesHandled: true);
        return contents.Warnings;
    }

    /// <summary>
    /// Splits a PEFT tensor key into (module path, parameter suffix), inverse of the save naming (§2.4), on whole
    /// segments: optional <c>base_model.model.</c> prefix; then the module path up to the first segment starting with a
    /// registered parameter prefix; the adapter name is removed when it is the segment after the parameter name;
    /// <c>lora_magnitude_vector.weight</c> becomes <c>lora_magnitude_vector</c>.
    /// </summary>
    public static (string ModulePath, string Param) SplitKey(string key, string adapterName = DefaultAdapterName, string file = "")
    {
        string k = key.StartsWith(KeyPrefix, StringComparison.Ordinal) ? key[KeyPrefix.Length..] : key;
        string[] seg = k.Split('.');
        var prefixes = AdapterMethods.ParameterPrefixes;
        int i = Array.FindIndex(seg, 1, s => prefixes.Any(p => s.StartsWith(p, StringComparison.Ordinal)));
        if (i < 1)
            throw new UserInputException($"{file}: key '{key}' is not an adapter tensor (no segment starting with {string.Join("/", prefixes)} after a module path); only adapter weights are supported (bias='none', no modules_to_save).");
        var rest = seg.Skip(i + 1).ToList();
        if (rest.Count > 0 && rest[0] == adapterName) rest.RemoveAt(0);
        if (rest.Count > 1 || (rest.Count == 1 && rest[0] is not ("weight" or "bias")))
            throw new UserInputException($"{file}: key '{key}' does not end in <param>[.{adapterName}][.weight|.bias]; tensors of other adapters are not supported (load with the adapter name they were saved under).");
        string param = rest.Count == 0 ? seg[i] : seg[i] + "." + rest[0];
        if (param == "lora_magnitude_vector.weight") param = "lora_magnitude_vector";
        return (string.Join('.', seg.Take(i)), param);
    }
}
