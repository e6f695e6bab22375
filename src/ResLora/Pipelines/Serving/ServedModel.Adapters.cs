using ResLora.Adapters;
using ResLora.Text.Templates;

namespace ResLora.Pipelines.Serving;

// Adapters loaded and unloaded while the server runs (issue 36): which names are served, the requests that hold each
// adapter, and the changes to the adapter set, which run on the worker between batches so they never race a forward.
public sealed partial class ServedModel
{
    /// <summary>Where a served adapter is in its life: being loaded (not served yet), served, or being unloaded (no longer served).</summary>
    private enum AdapterState
    {
        Loading,
        Ready,
        Unloading,
    }

    /// <summary>One adapter name: its state, its chat format, and the requests that use it now.</summary>
    private sealed class ServedAdapter(string name, AdapterState state, ChatFormat? chat)
    {
        public string Name { get; } = name;
        public AdapterState State { get; set; } = state;
        public ChatFormat? Chat { get; set; } = chat;
        public int Users { get; set; }
        public TaskCompletionSource? Idle { get; set; } // set by an unload, completed when Users reaches 0
    }

    /// <summary>
    /// A request's hold on the model it named: while held, the adapter is not removed (an unload waits for it).
    /// Disposing releases it; the base's lease holds nothing.
    /// </summary>
    private sealed class AdapterLease(ServedModel owner, ServedAdapter? adapter, ChatFormat? chat) : IDisposable
    {
        private int _released;

        public string? Adapter => adapter?.Name;
        public ChatFormat? Chat { get; } = chat;

        public void Dispose()
        {
            if (adapter is null || Interlocked.Exchange(ref _released, 1) == 1) return;
            lock (owner._adaptersLock)
            {
                if (--adapter.Users == 0) adapter.Idle?.TrySetResult();
            }
        }
    }

    private readonly object _adaptersLock = new();
    private readonly Dictionary<string, ServedAdapter> _served = new(StringComparer.Ordinal); // guarded by _adaptersLock
    private ChatFormat? _baseChat;
    private AdapterRoot? _adapterRoot;

    /// <summary>The folder adapters may be loaded from at run time (its real path), or null when loading at run time is off.</summary>
    public string? AdapterRootPath => _adapterRoot?.Path;

    /// <summary>Every served model id: the base's name, then <c>name:adapter</c> for each adapter served now (in load order).</summary>
    public IReadOnlyList<string> ModelIds
    {
        get
        {
            lock (_adaptersLock)
                return _served.Values.Where(a => a.State == AdapterState.Ready).Select(a => $"{Name}:{a.Name}").Prepend(Name).ToList();
        }
    }

    /// <summary>The adapter a model id names (null for the base); refused when it names nothing served.</summary>
    public string? Resolve(string model)
    {
        using var lease = Acquire(model);
        return lease.Adapter;
    }

    /// <summary>Resolves a model id and holds its adapter until the lease is disposed; refused as <see cref="Resolve"/> refuses.</summary>
    private AdapterLease Acquire(string model)
    {
        if (model == Name) return new AdapterLease(this, null, _baseChat);
        lock (_adaptersLock)
        {
            if (model.StartsWith(Name + ":", StringComparison.Ordinal) && _served.TryGetValue(model[(Name.Length + 1)..], out var a) && a.State == AdapterState.Ready)
            {
                a.Users++;
                return new AdapterLease(this, a, a.Chat);
            }
        }
        throw new ServingException(ServingErrorKind.ModelNotFound, $"the model '{model}' is not served; served models: {string.Join(", ", ModelIds)}.", "model");
    }

    private void InitAdapters(Dictionary<string, ChatFormat?> chat, string? adapterRoot)
    {
        _baseChat = chat[""];
        foreach (var a in _set.Adapters) _served[a.Name] = new ServedAdapter(a.Name, AdapterState.Ready, chat[a.Name]);
        _adapterRoot = adapterRoot is null ? null : new AdapterRoot(adapterRoot);
    }

    /// <summary>
    /// Loads the adapter folder <paramref name="path"/> (relative to the adapter root, or an absolute path inside it) and
    /// serves it as <c>name:<paramref name="name"/></c> once the batch running now ends. Only folders under
    /// <see cref="ServingOptions.AdapterRoot"/> are read: the path's real path (links followed) must lie inside it.
    /// </summary>
    /// <param name="name">The adapter's name (letters, digits, '.', '_', '-'; not taken).</param>
    /// <param name="path">The adapter folder.</param>
    /// <param name="warn">Receives the config's warnings (unknown fields).</param>
    /// <param name="cancel">Drops the load while it waits for the worker.</param>
    /// <exception cref="ServingException">Loading is off, the path is outside the root or missing, the folder is not a
    /// LoRA-family adapter of this base, the name is taken, the queue is full.</exception>
    public async Task<LoadedAdapter> LoadAdapterAsync(string name, string path, Action<string>? warn = null, CancellationToken cancel = default)
    {
        var root = _adapterRoot ?? throw new ServingException(ServingErrorKind.NotFound,
            "loading adapters at run time is off on this server; start it with --adapter-root DIR to load adapter folders from under DIR.", null);
        try
        {
            MultiLoraPlan.CheckName(name);
        }
        catch (UserInputException e)
        {
            throw new ServingException(ServingErrorKind.InvalidRequest, $"lora_name: {e.Message}", "lora_name");
        }
        string dir = root.Resolve(path);
        ServedAdapter entry;
        lock (_adaptersLock)
        {
            if (_served.TryGetValue(name, out var taken))
                throw new ServingException(ServingErrorKind.InvalidRequest, taken.State switch
                {
                    AdapterState.Loading => $"the adapter '{name}' is being loaded by another request; wait for it, or pick another lora_name.",
                    AdapterState.Unloading => $"the adapter '{name}' is being unloaded (after the requests that use it); load it again once the unload has answered, or pick another lora_name.",
                    _ => $"the adapter '{name}' has already been loaded; unload it first (POST /v1/unload_lora_adapter) or pick another lora_name.",
                }, "lora_name");
            entry = new ServedAdapter(name, AdapterState.Loading, null);
            _served[name] = entry; // reserves the name; not served until Ready
        }
        bool loaded = false;
        try
        {
            AdapterFolderContents contents;
            try
            {
                contents = AdapterFolder.Load(dir);
            }
            catch (Exception e) when (e is UserInputException or IOException)
            {
                throw new ServingException(ServingErrorKind.InvalidRequest, $"lora_path '{path}': {e.Message}", "lora_path");
            }
            using (contents)
            {
                foreach (var w in contents.Warnings) warn?.Invoke($"adapter '{name}': {w}");
                if (contents.Config is not LoraConfig)
                    throw new ServingException(ServingErrorKind.InvalidRequest,
                        $"lora_path '{path}' holds a {contents.Config.Method} adapter (peft_type {contents.Config.PeftType}); this server batches only LoRA-family adapters (LoRA, rsLoRA, DoRA: peft_type LORA) over its shared base. "
                        + "Export it as a plain LoRA first (reslora export --model M --adapter DIR --out DIR2), then load that folder.", "lora_path");
                var chat = Prompts.ChatFormatFor(_modelDir, dir, Options.ChatTemplate);
                if (chat is not null) TryChatTemplate(chat, $"{Name}:{name}");
                LoadedAdapter added;
                try
                {
                    // On the worker, between batches: the adapter set's layers are read by every forward.
                    added = await Scheduler.Run(() => _set.Plan.Add(name, contents), cancel).ConfigureAwait(false);
                }
                catch (UserInputException e)
                {
                    throw new ServingException(ServingErrorKind.InvalidRequest, e.Message, "lora_path");
                }
                lock (_adaptersLock)
                {
                    entry.Chat = chat;
                    entry.State = AdapterState.Ready;
                }
                loaded = true;
                return added;
            }
        }
        catch (UserInputException e)
        {
            throw new ServingException(ServingErrorKind.InvalidRequest, e.Message, "lora_path"); // the chat template's trial render
        }
        finally
        {
            if (!loaded)
                lock (_adaptersLock) _served.Remove(name);
        }
    }

    /// <summary>
    /// Stops serving the adapter <paramref name="name"/> at once (new requests naming it get the unknown-model refusal),
    /// waits for the requests that already use it to finish, then frees its tensors on the worker between batches.
    /// Adapters loaded at start-up may be unloaded too. Once accepted, the unload completes even if the caller goes away.
    /// </summary>
    /// <param name="name">The adapter's name (as in <c>name:adapter</c>).</param>
    /// <exception cref="ServingException">No such adapter is served (<see cref="ServingErrorKind.ModelNotFound"/>); the
    /// queue is full (the adapter stays served).</exception>
    public async Task UnloadAdapterAsync(string name)
    {
        ServedAdapter entry;
        Task idle;
        lock (_adaptersLock)
        {
            if (!_served.TryGetValue(name, out var found) || found.State != AdapterState.Ready)
            {
                var ready = _served.Values.Where(a => a.State == AdapterState.Ready).Select(a => a.Name).ToList();
                throw new ServingException(ServingErrorKind.ModelNotFound,
                    $"the adapter '{name}' cannot be found: it is not loaded{(found is { State: AdapterState.Unloading } ? " (it is being unloaded already)" : "")}; loaded adapters: {(ready.Count == 0 ? "none" : string.Join(", ", ready))}.", "lora_name");
            }
            entry = found;
            entry.State = AdapterState.Unloading;
            entry.Idle = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            if (entry.Users == 0) entry.Idle.TrySetResult();
            idle = entry.Idle.Task;
        }
        await idle.ConfigureAwait(false); // ordered after every request that resolved the adapter before now
        try
        {
            await Scheduler.Run(() =>
            {
                _set.Remove(name);
                return true;
            }).ConfigureAwait(false);
        }
        catch (ServingException e) when (e.Kind == ServingErrorKind.QueueFull)
        {
            lock (_adaptersLock)
            {
                entry.State = AdapterState.Ready;
                entry.Idle = null;
            }
            throw;
        }
        lock (_adaptersLock) _served.Remove(name);
    }
}
