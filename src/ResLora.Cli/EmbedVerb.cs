using System.CommandLine;
using System.Text;
using System.Text.Json;
using ResLora.IO;
using ResLora.Models.Encoders;
using ResLora.Pipelines;

namespace ResLora.Cli;

internal static class EmbedVerb
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Encoder folder (BERT family or DeBERTa-v2/v3: config.json, model.safetensors, vocab.txt or tokenizer.json); a merged classifier works too.", Required = true };
        var text = new Option<string[]>("--text") { Description = "A text to embed (repeat for several).", AllowMultipleArgumentsPerToken = false };
        var data = new Option<string?>("--data") { Description = "Texts to embed: a .txt file (one per line) or .jsonl (field --text-field)." };
        var textField = new Option<string>("--text-field") { Description = "The text field of a .jsonl --data file.", DefaultValueFactory = _ => "text" };
        var pooling = new Option<string>("--pooling") { Description = "mean (over real tokens, as sentence-transformers) or cls (the first token).", DefaultValueFactory = _ => "mean" };
        var normalize = new Option<bool>("--normalize") { Description = "L2-normalise each embedding (cosine similarity becomes a dot product)." };
        var seqLen = new Option<int>("--seq-len") { Description = "Longest input in tokens; longer texts are cut.", DefaultValueFactory = _ => 256 };
        var batch = new Option<int>("--batch-size") { Description = "Texts per forward pass.", DefaultValueFactory = _ => 16 };
        var output = new Option<string?>("--out") { Description = "Write the JSON lines to this file (default: standard output)." };
        var rt = new RuntimeOptionSet();
        var cmd = new Command("embed", "Sentence embeddings from an encoder (BERT family, DeBERTa-v2/v3), one JSON line per text: {\"index\", \"text\", \"embedding\"}.");
        foreach (var o in new Option[] { model, text, data, textField, pooling, normalize, seqLen, batch, output }) cmd.Options.Add(o);
        rt.AddTo(cmd);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string dir = CliPaths.ModelDir(r.GetValue(model));
            var texts = new List<string>(r.GetValue(text) ?? Array.Empty<string>());
            if (r.GetValue(data) is { } path) texts.AddRange(SentenceEmbeddings.ReadTexts(path, r.GetValue(textField)!));
            if (texts.Count == 0) throw new UserInputException("nothing to embed: give --text \"...\" (repeatable) or --data FILE.");
            var pool = r.GetValue(pooling)!.Trim().ToLowerInvariant() switch
            {
                "mean" => EmbeddingPooling.Mean,
                "cls" => EmbeddingPooling.Cls,
                var p => throw new UserInputException($"--pooling '{p}' is not known; use mean or cls."),
            };
            var (_, pairs) = Classification.LoadTokenizer(dir);
            using var encoder = EncoderLoader.LoadEncoder(dir, rt.Read(r));
            var vectors = SentenceEmbeddings.Embed(encoder, pairs, texts, pool, r.GetValue(normalize), r.GetValue(seqLen), r.GetValue(batch));
            var sb = new StringBuilder();
            for (int i = 0; i < texts.Count; i++)
                sb.Append(JsonSerializer.Serialize(new Dictionary<string, object> { ["index"] = i, ["text"] = texts[i], ["embedding"] = vectors[i] }, IO.Json.ReportJson.Line)).Append('\n');
            if (r.GetValue(output) is { } outPath)
            {
                AtomicFile.WriteAllText(outPath, sb.ToString());
                Console.Error.WriteLine($"{texts.Count} embeddings of {vectors[0].Length} dimensions: {Path.GetFullPath(outPath)}");
            }
            else Console.Out.Write(sb.ToString());
            return 0;
        }));
        return cmd;
    }
}
