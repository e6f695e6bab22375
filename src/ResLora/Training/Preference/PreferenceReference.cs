using ResLora.Adapters;
using ResLora.Models;

namespace ResLora.Training.Preference;

/// <summary>
/// The reference model of DPO and IPO without a second copy of the model: the same model with its adapters switched off
/// (PEFT's <c>disable_adapter()</c>; <see cref="AdapterSwitch"/>), which is the base model, or with the trainable
/// parameters set back for the forward to the values they had when the run started (a run that starts from an SFT
/// adapter, <c>--init-adapter</c>, compares with that SFT model, as TRL does with a reference adapter). Forwards run in
/// eval mode (no dropout) without gradients; the model's mode is restored after each.
/// </summary>
public sealed class PreferenceReference : IDisposable
{
    private readonly CausalLM _model;
    private readonly List<(Parameter Live, Tensor Initial)>? _initial;

    private PreferenceReference(CausalLM model, List<(Parameter, Tensor)>? initial, string description)
    {
        _model = model;
        _initial = initial;
        Description = description;
    }

    /// <summary>What the reference is, for the run's first lines.</summary>
    public string Description { get; }

    /// <summary>The base model: every adapter switched off for the reference forward.</summary>
    public static PreferenceReference AdapterOff(CausalLM model, string? description = null) =>
        new(model, null, description ?? "the base model (adapters switched off for the reference forward)");

    /// <summary>The model as it is now: a copy of every trainable parameter (the adapter's size, not the model's) is kept and swapped in for each reference forward.</summary>
    public static PreferenceReference InitialWeights(CausalLM model, string what)
    {
        using var _ = torch.no_grad();
        var list = model.parameters().Where(p => p.requires_grad).Select(p => (p, p.detach().clone())).ToList();
        return new(model, list, what);
    }

    /// <summary>
    /// Each row's summed log-probability of its labelled tokens under the reference, (rows) float32, no graph. Call it
    /// before the policy's forward of a training step: the initial-weights reference writes the parameters in place and
    /// back, which a graph recorded before it would refuse in backward.
    /// </summary>
    public Tensor SequenceLogps(TrainBatch batch)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        bool training = _model.training;
        _model.eval();
        List<Tensor>? current = null;
        try
        {
            if (_initial is null)
            {
                using (AdapterSwitch.Off(_model))
                {
                    var hidden = _model.HiddenStates(batch.InputIds, batch.AttentionMask);
                    return scope.MoveToOuter(_model.SequenceLogps(hidden, batch.Labels).Sum);
                }
            }
            current = _initial.Select(x => x.Live.detach().clone()).ToList();
            foreach (var (live, initial) in _initial) live.detach().copy_(initial);
            var h = _model.HiddenStates(batch.InputIds, batch.AttentionMask);
            return scope.MoveToOuter(_model.SequenceLogps(h, batch.Labels).Sum);
        }
        finally
        {
            if (current is not null)
                for (int i = 0; i < current.Count; i++) _initial![i].Live.detach().copy_(current[i]);
            if (training) _model.train();
        }
    }

    /// <summary>The reference log-probabilities of every pair, computed once: (chosen, rejected) per pair, in order.</summary>
    public float[] Table(IReadOnlyList<PreferencePair> pairs, int batchSize, int padId)
    {
        var values = new float[pairs.Count * 2];
        for (int i = 0; i < pairs.Count; i += batchSize)
        {
            using var scope = torch.NewDisposeScope();
            var group = pairs.Skip(i).Take(batchSize).ToList();
            using var batch = PreferenceData.Collate(group, padId, _model.Device);
            SequenceLogps(batch).to(CPU).data<float>().ToArray().CopyTo(values, i * 2);
        }
        return values;
    }

    public void Dispose()
    {
        if (_initial is null) return;
        foreach (var (_, t) in _initial) t.Dispose();
        _initial.Clear();
    }
}
