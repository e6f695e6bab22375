using System.CommandLine;
using System.Globalization;
using ResLora.IO;
using ResLora.Models;
using ResLora.Pipelines;
using Spectre.Console;

namespace ResLora.Cli;

internal static class InspectVerb
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face model folder.", Required = true };
        var all = new Option<bool>("--all") { Description = "List every linear module by full name instead of grouping by type." };
        var kurt = new Option<bool>("--kurtosis") { Description = "Also measure the kurtosis of every decoder linear's input on --data (RoLoRA's outlier measure; Gaussian = 3)." };
        var data = new Option<string?>("--data") { Description = "Text for --kurtosis (JSONL/JSON data file)." };
        var cmd = new Command("inspect", "Show a model folder: architecture, parameter counts, and every linear module with its shape (the names adapters target).");
        cmd.Options.Add(model);
        cmd.Options.Add(all);
        cmd.Options.Add(kurt);
        cmd.Options.Add(data);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string dir = CliPaths.ModelDir(r.GetValue(model));
            var info = InspectPipeline.Describe(dir, groupByType: !r.GetValue(all));
            var c = info.Config;
            var console = CliConsole.Out();
            console.MarkupLine($"[bold]{Markup.Escape(dir)}[/]");
            var t = new Table().AddColumn("field").AddColumn("value");
            t.AddRow("architecture", Markup.Escape(string.Join(", ", c.Architectures ?? new[] { c.ModelType })));
            t.AddRow("layers", c.NumHiddenLayers.ToString(CultureInfo.InvariantCulture));
            t.AddRow("hidden / intermediate", $"{c.HiddenSize} / {c.IntermediateSize}");
            t.AddRow("heads / kv heads / head dim", $"{c.NumAttentionHeads} / {c.NumKeyValueHeads} / {c.HeadDim}");
            t.AddRow("vocab", c.VocabSize.ToString(CultureInfo.InvariantCulture));
            t.AddRow("rope theta / scaling", $"{c.RopeTheta} / {c.RopeScaling?.Kind ?? "none"}");
            t.AddRow("tied embeddings", c.TieWordEmbeddings.ToString());
            t.AddRow("q/k/v bias", c.HasQkvBias.ToString());
            t.AddRow("stored dtype", c.TorchDtype ?? "?");
            t.AddRow("parameters", $"{info.Parameters:N0}");
            t.AddRow("in linear modules", $"{info.LinearParameters:N0}");
            console.Write(t);
            var lin = new Table().AddColumn("linear module").AddColumn("out × in").AddColumn("count");
            foreach (var x in info.Linears) lin.AddRow(x.Name, $"{x.Out} × {x.In}", x.Count.ToString(CultureInfo.InvariantCulture));
            console.Write(lin);
            if (r.GetValue(kurt))
            {
                string file = r.GetValue(data) ?? throw new UserInputException("--kurtosis needs --data FILE (text to run through the model).");
                var kt = new Table().AddColumn("linear input").AddColumn("kurtosis");
                foreach (var (name, k) in InspectPipeline.Kurtosis(dir, file, new RuntimeOptions()))
                    kt.AddRow(name, k.ToString("0.00", CultureInfo.InvariantCulture));
                console.Write(kt);
            }
            return 0;
        }));
        return cmd;
    }
}
