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
            using var ckpt = HfCheckpoint.Open(dir);
            var c = ckpt.Config;
            var console = CliConsole.Out();
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
            var weights = LlamaForCausalLM.ExpectedWeights(c);
            ckpt.ValidateAgainst(weights);
            long total = weights.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b));
            long linear = weights.Where(kv => kv.Value.Length == 2 && !kv.Key.Contains("embed_tokens", StringComparison.Ordinal)).Sum(kv => kv.Value[0] * kv.Value[1]);
            t.AddRow("parameters", $"{total:N0}");
            t.AddRow("in linear modules", $"{linear:N0}");
            console.Write(t);

            var lin = new Table().AddColumn("linear module").AddColumn("out × in").AddColumn("count");
            var linears = weights
                .Where(kv => kv.Key.EndsWith(".weight", StringComparison.Ordinal) && kv.Value.Length == 2 && !kv.Key.Contains("embed_tokens", StringComparison.Ordinal))
                .Select(kv => (Name: kv.Key[..^".weight".Length], Shape: kv.Value))
                .ToList();
            if (r.GetValue(all))
                foreach (var x in linears) lin.AddRow(x.Name, $"{x.Shape[0]} × {x.Shape[1]}", "1");
            else
                foreach (var g in linears.GroupBy(x => (Type: x.Name.Split('.')[^1], Shape: $"{x.Shape[0]} × {x.Shape[1]}")))
                    lin.AddRow(g.Key.Type, g.Key.Shape, g.Count().ToString());
            console.Write(lin);
            if (r.GetValue(kurt))
            {
                string file = r.GetValue(data) ?? throw new ArgumentException("--kurtosis needs --data FILE (text to run through the model).");
                var tok = TokenizerLoader.Load(dir);
                var batches = Quantization.QuantizeFolder.CalibrationBatches(tok, Training.DataSet.Load(file).Select(e => e.Prompt + e.Completion), 256, 32);
                using var m = ModelLoader.Load(dir, new RuntimeOptions());
                var kt = new Table().AddColumn("linear input").AddColumn("kurtosis");
                foreach (var (name, k) in Quantization.ModelQuantizer.InputKurtosis(m, batches))
                    kt.AddRow(name, k.ToString("0.00", System.Globalization.CultureInfo.InvariantCulture));
                console.Write(kt);
                foreach (var b in batches) b.Dispose();
            }
            return 0;
        }));
        return cmd;
    }
}
