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
        var check = new Option<bool>("--check") { Description = "Instead of the summary, read every tensor once and report NaN/infinite values (count per tensor) and weights stored as integers; exit code 1 when any is found." };
        var adapter = new Option<string?>("--adapter") { Description = "With --check: check this adapter folder's tensors too." };
        var cmd = new Command("inspect", "Show a model folder (a Llama, Mistral, Qwen2 or Qwen3 decoder, or a BERT/RoBERTa encoder): architecture, parameter counts, and every linear module with its shape (the names --targets takes).");
        cmd.Options.Add(model);
        cmd.Options.Add(all);
        cmd.Options.Add(kurt);
        cmd.Options.Add(data);
        cmd.Options.Add(check);
        cmd.Options.Add(adapter);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string dir = CliPaths.ModelDir(r.GetValue(model));
            if (r.GetValue(check)) return Check(dir, r.GetValue(adapter));
            if (r.GetValue(adapter) is not null) throw new UserInputException("--adapter is used with --check (to check the adapter's tensors too).");
            if (Classification.IsEncoderFolder(dir))
            {
                if (r.GetValue(kurt)) throw new UserInputException($"--kurtosis measures the inputs of LLaMA-family decoder linears (RoLoRA's outlier measure); {dir} is a BERT-family encoder. Drop --kurtosis.");
                return Encoder(dir, !r.GetValue(all));
            }
            var info = InspectPipeline.Describe(dir, groupByType: !r.GetValue(all));
            var c = info.Config;
            var console = CliConsole.Out();
            console.MarkupLine($"[bold]{Markup.Escape(dir)}[/]");
            var t = new Table().AddColumn("field").AddColumn("value");
            t.AddRow("architecture", Markup.Escape(string.Join(", ", c.Architectures ?? new[] { c.ModelType })));
            t.AddRow("family / model_type", Markup.Escape($"{ModelFamilies.ForCausalLM(c.ModelType).Name} / {c.ModelType}"));
            t.AddRow("layers", c.NumHiddenLayers.ToString(CultureInfo.InvariantCulture));
            t.AddRow("hidden / intermediate", $"{c.HiddenSize} / {c.IntermediateSize}");
            t.AddRow("heads / kv heads / head dim", $"{c.NumAttentionHeads} / {c.NumKeyValueHeads} / {c.HeadDim}");
            t.AddRow("vocab", c.VocabSize.ToString(CultureInfo.InvariantCulture));
            t.AddRow("rope theta / scaling", $"{c.RopeTheta} / {c.RopeScaling?.Kind ?? "none"}");
            t.AddRow("tied embeddings", c.TieWordEmbeddings.ToString());
            t.AddRow("q/k/v bias", c.HasQkvBias.ToString());
            if (c.SlidingWindow is int window) t.AddRow("sliding window", $"{window} tokens{(c.ModelType is "mistral" or "gemma3_text" || c.UseSlidingWindow ? "" : " (not used: use_sliding_window is false)")}");
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

    /// <summary>A BERT-family encoder folder (what train --task classify loads): its config, counts and --targets names.</summary>
    private static int Encoder(string dir, bool grouped)
    {
        var info = InspectPipeline.DescribeEncoder(dir, grouped);
        var c = info.Config;
        var console = CliConsole.Out();
        console.MarkupLine($"[bold]{Markup.Escape(dir)}[/]");
        var t = new Table().AddColumn("field").AddColumn("value");
        string arch = c.Raw["architectures"] is System.Text.Json.Nodes.JsonArray a && a.Count > 0 ? string.Join(", ", a.Select(x => x?.ToString())) : c.ModelType;
        t.AddRow("architecture", Markup.Escape($"{arch} (BERT-family encoder, model_type {c.ModelType}; train with --task classify or regress)"));
        t.AddRow("layers", c.NumHiddenLayers.ToString(CultureInfo.InvariantCulture));
        t.AddRow("hidden / intermediate", $"{c.HiddenSize} / {c.IntermediateSize}");
        t.AddRow("heads / head dim", $"{c.NumAttentionHeads} / {c.HeadDim}");
        t.AddRow("vocab / token types", $"{c.VocabSize} / {c.TypeVocabSize}");
        t.AddRow("max input tokens", c.MaxInputLength.ToString(CultureInfo.InvariantCulture));
        t.AddRow("activation", Markup.Escape(c.HiddenAct));
        t.AddRow("pooler", info.HasPooler.ToString());
        t.AddRow("classification head", info.HasHead ? $"yes ({c.NumLabels} labels)" : "no (train adds one)");
        t.AddRow("stored dtype", info.StoredDtype);
        t.AddRow("parameters", $"{info.Parameters:N0}");
        t.AddRow("in linear modules", $"{info.LinearParameters:N0}");
        console.Write(t);
        var lin = new Table().AddColumn(grouped ? "linear module (--targets name)" : "linear module").AddColumn("out × in").AddColumn("count");
        foreach (var x in info.Linears) lin.AddRow(Markup.Escape(x.Name), $"{x.Out} × {x.In}", x.Count.ToString(CultureInfo.InvariantCulture));
        console.Write(lin);
        Console.Out.WriteLine($"--targets takes these names (comma-separated) or all-linear; the default for --task classify is {Classification.DefaultTargetsOf(dir)}.");
        return 0;
    }

    /// <summary>Exit code 1 when a problem is found, so scripts can gate on it (2 stays "bad input").</summary>
    public const int ProblemsFoundExit = 1;

    private static int Check(string dir, string? adapterDir)
    {
        var report = InspectPipeline.CheckWeights(dir, adapterDir);
        string read = $"{report.Tensors:N0} tensors, {AvailableMemory.Format(report.Bytes)}";
        if (report.Clean)
        {
            Console.Out.WriteLine($"ok: {read} read; no NaN or infinite values, no integer-typed weights.");
            return 0;
        }
        foreach (var p in report.Problems) Console.Out.WriteLine(p.ToString());
        Console.Out.WriteLine($"{report.Problems.Count} problem(s) in {read} read.");
        return ProblemsFoundExit;
    }
}
