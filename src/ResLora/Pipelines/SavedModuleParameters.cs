using ResLora.Adapters;
using ResLora.Models;

namespace ResLora.Pipelines;

/// <summary>
/// PEFT's <c>modules_to_save</c> on a causal LM (<c>--modules-to-save lm_head</c>): whole base modules trained beside the
/// adapter and saved in its safetensors under the module's own key (<c>base_model.model.lm_head.weight</c>, as PEFT
/// saves a ModulesToSaveWrapper's copy: peft-format.md §2.4); <see cref="AdapterFolder.LoadInto"/> copies them back.
/// </summary>
public static class SavedModuleParameters
{
    /// <summary>
    /// The model's base parameters inside the plan config's modules_to_save, by parameter path. Each name must match a
    /// base module that holds no adapter and is not packed; a tied lm_head has no weight of its own.
    /// </summary>
    public static IReadOnlyDictionary<string, Parameter> Resolve(CausalLM model, AdapterPlan plan)
    {
        var config = plan.Config;
        var found = new Dictionary<string, Parameter>(StringComparer.Ordinal);
        if (config.ModulesToSave is not { Count: > 0 } names) return found;
        if (plan.Decisions.FirstOrDefault(d => d.Adapted && config.IsSavedModule(d.Spec.Name)) is { } both)
            throw new UserInputException($"--modules-to-save: '{both.Spec.Name}' is also adapted (--targets); a module is either adapted or trained fully. Remove it from one of the two.");
        var expected = model.ExpectedWeights();
        var live = model.named_parameters().ToDictionary(p => p.name, p => p.parameter, StringComparer.Ordinal);
        foreach (var name in names)
        {
            var one = config with { ModulesToSave = new[] { name } };
            var weights = expected.Keys.Where(k => one.IsSavedModule(k)).ToList();
            if (weights.Count == 0)
            {
                if (name is "lm_head" && model.Config.TieWordEmbeddings)
                    throw new UserInputException("--modules-to-save lm_head: this model ties lm_head to model.embed_tokens (tie_word_embeddings in config.json), so the head has no weight of its own. Use --modules-to-save embed_tokens, which trains the shared matrix (input embeddings and output head together).");
                string modules = string.Join(", ", expected.Keys.Select(k => k[..k.LastIndexOf('.')]).Where(m => !m.Contains(".layers.", StringComparison.Ordinal)).Distinct().Append("model.layers.N.<module>"));
                throw new UserInputException($"--modules-to-save '{name}' matched no module of this model; modules are: {modules}.");
            }
            if (live.Keys.Any(k => one.IsSavedModule(k) && !expected.ContainsKey(k)))
                throw new UserInputException($"--modules-to-save '{name}' holds adapter layers; name a module that is not adapted (e.g. lm_head, embed_tokens, norm).");
            foreach (var w in weights)
            {
                if (!live.TryGetValue(w, out var p))
                    throw new UserInputException($"--modules-to-save '{name}': the base weight {w} is packed (--base-bits) and cannot be trained fully; run without --base-bits or name another module.");
                found[w] = p;
            }
        }
        return found;
    }
}
