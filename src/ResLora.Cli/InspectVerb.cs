using System.CommandLine;
using ResLora.IO;
using ResLora.Models;
using Spectre.Console;

namespace ResLora.Cli;

internal static class InspectVerb
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Hugging Face model folder.", Required = true };
        var cmd = new Command("inspect", "Show a model folder: architecture, parameter counts, and every linear module with its shape (the names adapters target).");
        cmd.Options.Add(model);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string dir = CliPaths.ModelDir(r.GetValue(model));
            using var ckpt = HfCheckpoint.Open(dir);
            var c = ckpt.Config;
            var console = AnsiConsole.Console;
            console.MarkupLine($"[bold]{Markup.Escape(dir)}[/]");
            var t = new Table().AddColumn("field").AddColumn("value");
            t.AddRow("architecture", Markup.Escape(string.Join(", ", c.Architectures ?? new[] { c.ModelType })));
            t.AddRow("layers", c.NumHiddenLayers.ToString());
            t.AddRow("hidden / intermediate", $"{c.HiddenSize} / {c.IntermediateSize}");
            t.AddRow("heads / kv heads / head dim", $"{c.NumAttentionHeads} / {c.NumKeyValueHeads} / {c.HeadDim}");
            t.AddRow("vocab", c.VocabSize.ToString());
            t.AddRow("rope theta / scaling", $"{c.RopeTheta} / {c.RopeScaling?.Kind ?? "none"}");
            t.AddRow("tied embeddings", c.TieWordEmbeddings.ToString());
            t.AddRow("q/k/v bias", c.HasQkvBias.ToString());
            t.AddRow("stored dtype", c.TorchDtype ?? "?");
            long total = 0;
            foreach (var name in ckpt.TensorNames) total += ckpt.ShapeOf(name).Aggregate(1L, (a, b) => a * b);
            t.AddRow("parameters", $"{total:N0}");
            console.Write(t);

            var lin = new Table().AddColumn("linear module").AddColumn("out × in").AddColumn("count");
            var groups = ckpt.TensorNames
                .Where(n => n.EndsWith(".weight", StringComparison.Ordinal) && ckpt.ShapeOf(n).Length == 2 && !n.Contains("embed_tokens", StringComparison.Ordinal))
                .Select(n => (Name: n[..^".weight".Length], Shape: ckpt.ShapeOf(n)))
                .GroupBy(x => (Type: x.Name.Split('.')[^1], Shape: $"{x.Shape[0]} × {x.Shape[1]}"))
                .OrderBy(g => g.Min(x => x.Name), StringComparer.Ordinal);
            foreach (var g in groups) lin.AddRow(g.Key.Type, g.Key.Shape, g.Count().ToString());
            console.Write(lin);
            return 0;
        }));
        return cmd;
    }
}
