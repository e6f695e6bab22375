using System.CommandLine;
using System.Globalization;
using ResLora.Models;
using ResLora.Onnx;

namespace ResLora.Cli;

internal static class ConvertVerb
{
    public static Command Build()
    {
        var cmd = new Command("convert", "Turn a model exported in another format into a Hugging Face folder.");
        cmd.Subcommands.Add(Onnx());
        cmd.Subcommands.Add(Gguf());
        return cmd;
    }

    private static Command Gguf()
    {
        var gguf = new Option<string>("--gguf") { Description = "llama.cpp GGUF model file (architecture llama, qwen2 or qwen3; F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K tensors).", Required = true };
        var output = new Option<string>("--out") { Description = "New folder for the Hugging Face model (config.json, model.safetensors, tokenizer.json, tokenizer_config.json).", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "Dtype of the written weights: bf16 (default) or f32.", DefaultValueFactory = _ => "bf16" };
        dtype.AcceptOnlyFromAmong("bf16", "f32");
        var cmd = new Command("gguf", "Convert a llama.cpp GGUF model into a Hugging Face folder: config from the metadata, weights dequantized (q/k un-permuted for the llama architecture), tokenizer rebuilt from the GGUF vocabulary.");
        foreach (var o in new Option[] { gguf, output, dtype }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var result = GgufConversion.Convert(r.GetValue(gguf)!, r.GetValue(output)!, r.GetValue(dtype) == "f32" ? ScalarType.Float32 : ScalarType.BFloat16);
            var c = result.Config;
            var types = string.Join(", ", result.StoredTypes.OrderByDescending(kv => kv.Value).Select(kv => $"{kv.Key} {kv.Value}"));
            var t = result.Tokenizer;
            Console.Out.WriteLine($"found: {c.ModelType}, {c.NumHiddenLayers} layers, hidden {c.HiddenSize}, {c.NumAttentionHeads} heads ({c.NumKeyValueHeads} kv, head_dim {c.HeadDim}), "
                + $"intermediate {c.IntermediateSize}, vocab {c.VocabSize}, context {c.MaxPositionEmbeddings}, {(c.TieWordEmbeddings ? "tied embeddings" : "separate lm_head")}; tensors: {types}");
            Console.Out.WriteLine($"tokenizer: {t.Model}{(t.Pre is null ? "" : $" (pre {t.Pre})")}, {t.Tokens} tokens, {t.Merges} merges, {t.AddedTokens} added tokens");
            foreach (var u in result.Ignored) Console.Error.WriteLine($"warning: tensor {u} is not part of the model and was not converted.");
            Console.Out.WriteLine($"wrote {result.OutDir}: {result.Tensors} tensors");
            return 0;
        }));
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
