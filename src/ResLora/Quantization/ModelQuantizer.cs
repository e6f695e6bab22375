using ResLora.Models;

namespace ResLora.Quantization;

/// <summary>Weight/activation bit widths and the weight method of a quantized evaluation (16 = off).</summary>
public sealed record QuantizeOptions
{
    public int WBits { get; init; } = 4;
    public int ABits { get; init; } = 4;
    /// <summary>rtn or gptq.</summary>
    public string Method { get; init; } = "rtn";
    public bool ClipSearch { get; init; } = true;

    public void Validate()
    {
        if (WBits is not (>= 2 and <= 16)) throw new UserInputException($"--wbits must be in 2..16 (16 = full precision), got {WBits}.");
        if (ABits is not (>= 2 and <= 16)) throw new UserInputException($"--abits must be in 2..16 (16 = full precision), got {ABits}.");
        if (Method is not ("rtn" or "gptq")) throw new UserInputException($"--wquant '{Method}' is not known; use rtn or gptq.");
    }
}

/// <summary>What <c>reslora quantize</c> wrote into config.json (<c>reslora_quantization</c>).</summary>
public sealed record QuantizationRecord
{
    [System.Text.Json.Serialization.JsonPropertyName("wbits")] public int WBits { get; init; }
    [System.Text.Json.Serialization.JsonPropertyName("abits")] public int ABits { get; init; }
    [System.Text.Json.Serialization.JsonPropertyName("method")] public string Method { get; init; } = "rtn";

    /// <summary>The record in config.json, or null when there is none; a damaged record is an error naming the field.</summary>
    public static QuantizationRecord? FromConfig(ModelConfig c)
    {
        if (c.ResloraQuantization is not { ValueKind: not System.Text.Json.JsonValueKind.Null } e) return null;
        static UserInputException Bad(string what) =>
            new($"config.json: 'reslora_quantization' {what}; it is written by reslora quantize as {{\"wbits\": 4, \"abits\": 8, \"method\": \"rtn\"}}.");
        QuantizationRecord? r;
        try { r = e.ValueKind == System.Text.Json.JsonValueKind.Object ? System.Text.Json.JsonSerializer.Deserialize<QuantizationRecord>(e) : null; }
        catch (System.Text.Json.JsonException x) { throw Bad($"is not a quantization record ({x.Message})"); }
        if (r is null) throw Bad($"is {e.ValueKind.ToString().ToLowerInvariant()}, not an object");
        if (r.WBits is not (>= 2 and <= 16) || r.ABits is not (>= 2 and <= 16)) throw Bad($"has wbits {r.WBits} and abits {r.ABits}; both must be in 2..16");
        return r;
    }
}

/// <summary>
/// Quantizes a loaded model for evaluation (spec §5): weights of every decoder linear (q,k,v,o,gate,up,down; never
/// lm_head or embeddings) by RTN or sequential GPTQ, and per-token activations on the input of every decoder linear
/// through forward pre-hooks (down_proj's input after the online Hadamard, since the model applies it before the call).
/// </summary>
public static class ModelQuantizer
{
    /// <summary>The decoder linears by full module name, in layer and group order (the family's <see cref="DecoderLayout.InputGroups"/>).</summary>
    public static IReadOnlyList<(string Name, nn.Module<Tensor, Tensor> Module)> DecoderLinears(CausalLM model)
    {
        var layout = model.Family.Layout;
        var all = model.named_modules().ToDictionary(m => m.name, m => m.module, StringComparer.Ordinal);
        var list = new List<(string, nn.Module<Tensor, Tensor>)>();
        for (int i = 0; i < model.Config.NumHiddenLayers; i++)
            foreach (var g in layout.InputGroups)
                foreach (var n in g)
                {
                    string name = layout.LayerPrefix(i) + n;
                    if (all.TryGetValue(name, out var m) && m is nn.Module<Tensor, Tensor> mm) list.Add((name, mm));
                }
        return list;
    }

    /// <summary>
    /// Quantizes the weights in place (fake quant) and installs activation quantizers; dispose the result to remove the
    /// activation hooks (weights stay quantized). <paramref name="calibration"/> (token id batches) is needed for GPTQ.
    /// </summary>
    public static IDisposable Apply(CausalLM model, QuantizeOptions o, IReadOnlyList<Tensor>? calibration = null)
    {
        o.Validate();
        var baseParams = model.BaseParameters();
        using (torch.no_grad())
        {
            if (o.WBits < 16 && o.Method == "rtn")
                foreach (var (name, _) in DecoderLinears(model))
                {
                    var w = baseParams[name + ".weight"];
                    using var q = Quantizers.Rtn(w, o.WBits, o.ClipSearch);
                    w.copy_(q);
                }
            else if (o.WBits < 16)
            {
                if (calibration is not { Count: > 0 }) throw new UserInputException("--wquant gptq needs calibration data (--calib FILE).");
                Gptq(model, baseParams, o, calibration);
            }
        }
        var hooks = new List<Action>();
        if (o.ABits < 16)
            foreach (var (_, m) in DecoderLinears(model))
            { var hr = m.register_forward_pre_hook((_, x) => Quantizers.Activation(x, o.ABits)); hooks.Add(() => hr.remove()); }
        return new Hooks(hooks);
    }

    private static void Gptq(CausalLM model, IReadOnlyDictionary<string, TorchSharp.Modules.Parameter> baseParams, QuantizeOptions o, IReadOnlyList<Tensor> calibration)
    {
        var modules = DecoderLinears(model).ToDictionary(x => x.Name, x => x.Module, StringComparer.Ordinal);
        var layout = model.Family.Layout;
        model.eval();
        // Sequential (§5.1): layer by layer, group by group, each group's Hessians collected with everything before it quantized.
        for (int i = 0; i < model.Config.NumHiddenLayers; i++)
            foreach (var g in layout.InputGroups)
            {
                var names = g.Select(n => layout.LayerPrefix(i) + n).Where(modules.ContainsKey).ToList();
                var hess = new Dictionary<string, Tensor>();
                var hooks = new List<Action>();
                long tokens = 0;
                foreach (var n in names)
                {
                    string key = n;
                    var hr = modules[n].register_forward_pre_hook((_, x) =>
                    {
                        using var scope = torch.NewDisposeScope();
                        var flat = x.detach().to_type(ScalarType.Float64).reshape(-1, x.shape[^1]);
                        var h = flat.t().matmul(flat) * 2.0;
                        if (hess.TryGetValue(key, out var acc)) acc.add_(h);
                        else hess[key] = h.DetachFromDisposeScope();
                        if (key == names[0]) tokens += flat.shape[0];
                        return x;
                    });
                    hooks.Add(() => hr.remove());
                }
                foreach (var batch in calibration)
                {
                    using var scope = torch.NewDisposeScope();
                    model.forward(batch);
                }
                foreach (var h in hooks) h();
                foreach (var n in names)
                {
                    var w = baseParams[n + ".weight"];
                    using var h = hess[n] / Math.Max(1, tokens);
                    using var q = Quantizers.Gptq(w, h, o.WBits, o.ClipSearch);
                    w.copy_(q);
                    hess[n].Dispose();
                }
            }
    }

    /// <summary>Installs the activation quantizers a quantized folder's config records (weights are stored quantized already).</summary>
    public static void ApplyRecorded(CausalLM model)
    {
        if (QuantizationRecord.FromConfig(model.Config) is not { ABits: < 16 } rec) return;
        foreach (var (_, m) in DecoderLinears(model)) m.register_forward_pre_hook((_, x) => Quantizers.Activation(x, rec.ABits));
    }

    /// <summary>Kurtosis of each decoder linear's input over the given batches (one value per distinct input: q/k/v share one, gate/up share one).</summary>
    public static IReadOnlyList<(string Module, double Kurtosis)> InputKurtosis(CausalLM model, IReadOnlyList<Tensor> batches)
    {
        var inputs = new Dictionary<string, List<Tensor>>(StringComparer.Ordinal);
        var hooks = new List<Action>();
        var layout = model.Family.Layout;
        var sharers = layout.InputGroups.SelectMany(g => g.Skip(1)).ToList(); // a group's later members read its first one's input
        foreach (var (name, m) in DecoderLinears(model))
        {
            if (sharers.Any(n => name.EndsWith("." + n, StringComparison.Ordinal))) continue;
            string key = name;
            inputs[key] = new List<Tensor>();
            var hr = m.register_forward_pre_hook((_, x) => { inputs[key].Add(x.detach().to_type(ScalarType.Float32).reshape(-1, x.shape[^1]).clone().DetachFromDisposeScope()); return x; });
            hooks.Add(() => hr.remove());
        }
        try
        {
            using var noGrad = torch.no_grad();
            model.eval();
            foreach (var b in batches)
            {
                using var scope = torch.NewDisposeScope();
                model.forward(b);
            }
        }
        finally
        {
            foreach (var h in hooks) h();
        }
        var result = new List<(string, double)>();
        foreach (var (name, list) in inputs)
        {
            using var all = torch.cat(list.ToArray(), 0);
            result.Add((name, Quantizers.Kurtosis(all)));
            foreach (var t in list) t.Dispose();
        }
        return result;
    }

    private sealed class Hooks(List<Action> hooks) : IDisposable
    {
        public void Dispose()
        {
            foreach (var h in hooks) h();
            hooks.Clear();
        }
    }
}
