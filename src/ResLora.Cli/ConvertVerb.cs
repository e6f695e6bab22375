using System.CommandLine;
using System.Globalization;
using ResLora.Onnx;

namespace ResLora.Cli;

internal static class ConvertVerb
{
    public static Command Build()
    {
        var cmd = new Command("convert", "Turn a model exported in another format into a Hugging Face folder.");
        cmd.Subcommands.Add(Onnx());
        return cmd;
    }

    private static Command Onnx()
    {
        var onnx = new Option<string>("--onnx") { Description = "ONNX export of a BERT-family encoder (one file, e.g. a sentence-transformers model.onnx).", Required = true };
        var vocab = new Option<string>("--vocab") { Description = "Its WordPiece vocab.txt.", Required = true };
        var output = new Option<string>("--out") { Description = "New folder for the Hugging Face model (config.json, model.safetensors, vocab.txt, tokenizer_config.json).", Required = true };
        var heads = new Option<int?>("--heads") { Description = "Attention heads, only for a graph that does not show them (the converter says when)." };
        var cmd = new Command("onnx", "Convert a BERT-family ONNX export (BERT, MiniLM, a sentence-transformers model.onnx) into a Hugging Face folder; weights are named by following the graph (projections, attention, layer norms), not by initializer names.");
        foreach (var o in new Option[] { onnx, vocab, output, heads }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var result = OnnxConversion.Convert(new OnnxConversionOptions
            {
                OnnxPath = r.GetValue(onnx)!,
                VocabPath = r.GetValue(vocab)!,
                OutDir = r.GetValue(output)!,
                Heads = r.GetValue(heads),
            });
            var c = result.Config;
            var ops = string.Join(", ", result.OpCounts.Select(kv => $"{kv.Key} {kv.Value}"));
            Console.Out.WriteLine($"graph: {ops}");
            Console.Out.WriteLine($"found: {c.NumHiddenLayers} layers, hidden {c.HiddenSize}, {c.NumAttentionHeads} heads ({result.HeadsFrom}), intermediate {c.IntermediateSize}, "
                + $"vocab {c.VocabSize}, {c.MaxPositionEmbeddings} positions, {c.TypeVocabSize} token types, {c.HiddenAct}, "
                + $"{(result.FusedLayerNorm ? "LayerNormalization ops" : "decomposed layer norms")} (eps {c.LayerNormEps.ToString("R", CultureInfo.InvariantCulture)}), {c.TorchDtype}");
            foreach (var u in result.Unused) Console.Error.WriteLine($"warning: initializer {u} is not part of the encoder and was not converted.");
            Console.Out.WriteLine($"wrote {result.OutDir}: {result.Sources.Count} tensors");
            return 0;
        }));
        return cmd;
    }
}
