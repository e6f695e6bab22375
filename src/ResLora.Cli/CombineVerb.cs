using System.CommandLine;
using System.Globalization;
using ResLora.Pipelines;

namespace ResLora.Cli;

/// <summary><c>reslora combine</c>: PEFT's add_weighted_adapter for LoRA adapters of one base, written as a new adapter folder.</summary>
internal static class CombineVerb
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Base Hugging Face model folder the adapters were trained on.", Required = true };
        var adapters = new Option<string[]>("--adapter") { Description = "NAME=DIR[:WEIGHT] (weight 1 when left out; repeat for each adapter). LoRA or rsLoRA folders; DoRA and other methods: reslora export --as lora first.", Required = true, AllowMultipleArgumentsPerToken = false };
        var how = new Option<string>("--how") { Description = "linear (same rank; A and B summed with √weight each, as PEFT), cat (exact sum, rank = Σ r), svd (Σ wᵢΔWᵢ truncated to --rank), ties or dare_linear (with --density).", Required = true };
        var rank = new Option<int?>("--rank") { Description = "svd: rank of the result (default: the largest input rank)." };
        var density = new Option<double?>("--density") { Description = "ties, dare_linear: fraction of entries kept, in (0, 1]." };
        var seed = new Option<long>("--seed") { Description = "dare_linear: seed of the random pruning.", DefaultValueFactory = _ => 0L };
        var clamp = new Option<double?>("--svd-clamp") { Description = "svd: clamp the factors to the given quantile of their entries (PEFT's svd_clamp), in (0, 1]." };
        var sign = new Option<string>("--majority-sign") { Description = "ties: total (sign of the summed values, PEFT's default) or frequency (sign of the summed signs).", DefaultValueFactory = _ => "total" };
        var output = new Option<string>("--out") { Description = "New folder for the combined adapter (must not exist or be empty).", Required = true };
        var rt = new RuntimeOptionSet();
        var cmd = new Command("combine", "Combine LoRA adapters of one base into a new PEFT LoRA adapter, as PEFT's add_weighted_adapter: linear, cat, svd, ties or dare_linear.");
        foreach (var o in new Option[] { model, adapters, how, rank, density, seed, clamp, sign, output }) cmd.Options.Add(o);
        rt.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string dir = CliPaths.ModelDir(r.GetValue(model));
            var inputs = (r.GetValue(adapters) ?? Array.Empty<string>()).Select(ParseAdapter).ToList();
            var options = new CombineOptions
            {
                How = CombineOptions.ParseHow(r.GetValue(how)!),
                Rank = r.GetValue(rank),
                Density = r.GetValue(density),
                Seed = r.GetValue(seed),
                SvdClamp = r.GetValue(clamp),
                MajoritySign = r.GetValue(sign)?.Trim().ToLowerInvariant() switch
                {
                    "total" => MajoritySign.Total,
                    "frequency" => MajoritySign.Frequency,
                    var s => throw new UserInputException($"--majority-sign '{s}': use total or frequency."),
                },
            };
            var report = AdapterCombination.CombineFolders(dir, inputs, options, r.GetValue(output)!, rt.Read(r), w => Console.Error.WriteLine($"warning: {w}"));
            string list = string.Join(", ", inputs.Select(i => string.Create(CultureInfo.InvariantCulture, $"{i.Name} ×{i.Weight:G6}")));
            Console.Out.WriteLine($"combined {inputs.Count} adapter(s) ({list}) by {report.How} into {report.OutDir}: r = {report.Rank}, {report.Modules} modules");
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"max |B′A′ − Σ wᵢ·ΔWᵢ| relative to the largest entry: {report.Deviation:0.###e0}"));
            foreach (var n in report.Notes) Console.Out.WriteLine($"note: {n}");
            Console.Out.WriteLine($"report: {Path.Combine(report.OutDir, CombineReport.FileName)}");
            return 0;
        }));
        return cmd;
    }

    /// <summary>NAME=DIR[:WEIGHT] (or DIR alone, named after its folder); the weight is what follows the last ':' when it is a number.</summary>
    internal static CombineInput ParseAdapter(string spec)
    {
        int eq = spec.IndexOf('=', StringComparison.Ordinal);
        string name = eq > 0 ? spec[..eq] : "";
        string rest = eq > 0 ? spec[(eq + 1)..] : spec;
        double weight = 1.0;
        int colon = rest.LastIndexOf(':');
        if (colon > 0 && double.TryParse(rest[(colon + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out var w))
        {
            weight = w;
            rest = rest[..colon];
        }
        if (rest.Length == 0) throw new UserInputException($"--adapter '{spec}': give NAME=DIR[:WEIGHT], e.g. math=./adapters/math:0.7.");
        if (name.Length == 0) name = Path.GetFileName(Path.TrimEndingDirectorySeparator(rest));
        return new CombineInput(name, rest, weight);
    }
}
