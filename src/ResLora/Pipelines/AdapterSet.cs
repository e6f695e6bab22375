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
    /// tokens <see cref="TextGenerator"/> gives that prompt alone with its adapter active. Returns only the new
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
    /// Continues every row's prompt with its own adapter and its own settings in one batch, through the one decode engine
    /// (<see cref="TextGenerator.Generate(CausalLM, IReadOnlyList{GenerationRow}, Func{IReadOnlyList{string}, IDisposable})"/>)
    /// with each forward routed per row: each row gets the tokens <see cref="TextGenerator.Generate(CausalLM, IReadOnlyList{int}, GenerationOptions, Action{int})"/>
    /// gives its prompt alone with its adapter active and its options.
    /// </summary>
    /// <param name="rows">The rows; all must agree on <see cref="GenerationOptions.UseKvCache"/>.</param>
    public IReadOnlyList<IReadOnlyList<int>> Generate(IReadOnlyList<GenerationRow> rows) =>
        TextGenerator.Generate(Model, rows, adapters => Plan.Route(adapters, Model.Device));

    /// <summary>Frees the model and every adapter's tensors.</summary>
    public void Dispose() => Model.Dispose();
}
