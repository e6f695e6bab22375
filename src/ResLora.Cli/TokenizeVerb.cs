using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using ResLora.IO;
using ResLora.Text.Templates;
using ResLora.Pipelines;
using ResLora.Text;
using ResLora.Training;
using ResLora.Training.Classification;

namespace ResLora.Cli;

/// <summary>
/// <c>reslora tokenize</c>: what the model sees. The ids and pieces of a text, or of the first training examples of a data
/// file exactly as <c>train</c> builds them (BOS, template, chat rendering, EOS), with the tokens that carry loss marked.
/// For a BERT-family encoder folder, the data is read as <c>train --task classify|regress</c> reads it (JSONL, JSON, TSV or
/// CSV; the same field flags, the same loader and encoder), and each example is shown with its specials, token types and label.
/// </summary>
internal static class TokenizeVerb
{
    private static readonly JsonSerializerOptions Json = IO.Json.ReportJson.Line;

    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Model folder whose tokenizer (and chat template) to use.", Required = true };
        var text = new Option<string?>("--text") { Description = "Text to tokenize as it is (no BOS/EOS added; special tokens written in it are recognised)." };
        var data = new Option<string?>("--data") { Description = "A training data file: its first --limit examples are shown as train builds them, loss tokens marked. For a BERT-family encoder folder: classification data as train --task classify reads it (JSONL, JSON, TSV or CSV), shown with specials, token types and labels." };
        var limit = new Option<int>("--limit") { Description = "--data: how many examples to show.", DefaultValueFactory = _ => 3 };
        var seqLen = new Option<int?>("--seq-len") { Description = "--data: cut each example at this many tokens, as train --seq-len does (default: no cut)." };
        var promptTemplate = new Option<string?>("--prompt-template") { Description = "--data: prompt built from record fields, as for train." };
        var completionTemplate = new Option<string?>("--completion-template") { Description = "--data: completion built from record fields, as for train." };
        var chatTemplate = new Option<string?>("--chat-template") { Description = $"--data: chat template for conversation records (a Jinja file, a JSON file with chat_template, or a built-in: {string.Join(", ", BuiltInChatTemplates.Names)}); default: the model's." };
        var task = new Option<string?>("--task") { Description = "--data on an encoder folder: classify (default) or regress, as for train (decides how labels are read)." };
        var textField = new Option<string?>("--text-field") { Description = "--data on an encoder folder: the field (or TSV/CSV column) holding the text, as for train (default: text, sentence or sentence1)." };
        var pairField = new Option<string?>("--text-pair-field") { Description = "--data on an encoder folder: the field holding the second text of a pair, as for train." };
        var labelField = new Option<string>("--label-field") { Description = "--data on an encoder folder: the field holding the label, as for train.", DefaultValueFactory = _ => "label" };
        var texts = new Option<string?>("--texts") { Description = "A JSONL file of texts, one JSON string (or an object with a \"text\" field) per line, each tokenized as --text does; with --json, one object per text in order." };
        var json = new Option<bool>("--json") { Description = "One JSON object per text or example (ids, pieces, loss) instead of a table." };
        var chatRenders = new Option<bool>("--chat-renders") { Description = "--data of conversation records: print each record's renders as one JSON line, nothing tokenized (the whole conversation, the render up to each assistant turn, the training examples with their loss ranges), to check the chat template against another renderer (bench/chat-render-check.sh)." };
        var cmd = new Command("tokenize", "Show the token ids and pieces of a text, or of training examples as train builds them, with the loss-carrying tokens marked.");
        foreach (var o in new Option[] { model, text, texts, data, limit, seqLen, promptTemplate, completionTemplate, chatTemplate, task, textField, pairField, labelField, json, chatRenders }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string dir = CliPaths.ModelDir(r.GetValue(model));
            string? t = r.GetValue(text), path = r.GetValue(data), textsPath = r.GetValue(texts);
            if (new[] { t, path, textsPath }.Count(x => x is not null) != 1) throw new UserInputException("give one of --text TEXT, --texts FILE or --data FILE.");
            if (textsPath is not null)
            {
                if ((r.GetValue(promptTemplate) ?? r.GetValue(completionTemplate) ?? r.GetValue(chatTemplate)) is not null)
                    throw new UserInputException("--prompt-template, --completion-template and --chat-template apply to --data.");
                var all = ReadTexts(textsPath);
                var tok = TokenizerLoader.Load(dir);
                for (int i = 0; i < all.Count; i++)
                {
                    var ids = tok.Encode(all[i]).ToArray();
                    if (i > 0 && !r.GetValue(json)) Console.Out.WriteLine();
                    Write(Console.Out, tok, $"text {i + 1}: {ids.Length} tokens", all[i], ids, null, r.GetValue(json), i + 1);
                }
                return 0;
            }
            if (t is not null && (r.GetValue(promptTemplate) ?? r.GetValue(completionTemplate) ?? r.GetValue(chatTemplate)) is not null)
                throw new UserInputException("--prompt-template, --completion-template and --chat-template apply to --data.");
            if (r.GetValue(chatRenders))
            {
                if (path is null) throw new UserInputException("--chat-renders shows the conversations of a --data file; give --data FILE.");
                var format = new DataTemplates { ChatTemplate = r.GetValue(chatTemplate) }.ForModel(dir).Chat ?? throw Prompts.NoChatTemplate(dir);
                foreach (var rendered in Prompts.Renders(path, format)) Console.Out.WriteLine(JsonSerializer.Serialize(rendered, Json));
                return 0;
            }
            int n = r.GetValue(limit);
            if (n < 1) throw new UserInputException($"--limit must be at least 1, got {n}.");
            int? cut = r.GetValue(seqLen);
            if (cut is < 2) throw new UserInputException($"--seq-len must be at least 2, got {cut}.");
            bool encoder = Classification.IsEncoderFolder(dir);
            bool classifyFlags = (r.GetValue(task) ?? r.GetValue(textField) ?? r.GetValue(pairField)) is not null || r.GetValue(labelField) != "label";
            if (classifyFlags && (t is not null || !encoder))
                throw new UserInputException(t is not null
                    ? "--task, --text-field, --text-pair-field and --label-field apply to --data (classification data on an encoder folder)."
                    : $"--task, --text-field, --text-pair-field and --label-field read classification data for a BERT-family encoder (as train --task classify); {dir} is not an encoder folder.");
            if (encoder && path is not null)
            {
                if ((r.GetValue(promptTemplate) ?? r.GetValue(completionTemplate) ?? r.GetValue(chatTemplate)) is not null)
                    throw new UserInputException($"--prompt-template, --completion-template and --chat-template build causal-LM examples; {dir} is a BERT-family encoder, whose data is read with --text-field, --text-pair-field and --label-field.");
                string taskName = r.GetValue(task) ?? "classify";
                if (taskName is not ("classify" or "regress")) throw new UserInputException($"--task {taskName}: an encoder's data is read for classify or regress.");
                return Labelled(dir, path, new LabelledDataOptions
                {
                    TextField = r.GetValue(textField),
                    PairField = r.GetValue(pairField),
                    LabelField = r.GetValue(labelField)!,
                    Task = taskName == "regress" ? LabelTask.Regress : LabelTask.Classify,
                }, n, cut, r.GetValue(json));
            }
            var tokenizer = TokenizerLoader.Load(dir);
            var output = Console.Out;
            if (t is not null)
            {
                var ids = tokenizer.Encode(t).ToArray();
                Write(output, tokenizer, $"{ids.Length} tokens", t, ids, null, r.GetValue(json), null);
                return 0;
            }
            var templates = new DataTemplates(r.GetValue(promptTemplate), r.GetValue(completionTemplate)) { ChatTemplate = r.GetValue(chatTemplate) };
            templates.Validate();
            var examples = DataSet.Load(path!, templates.ForModel(dir));
            for (int i = 0; i < Math.Min(n, examples.Count); i++)
            {
                var ex = Tokenization.TokenizeOne(examples[i], tokenizer);
                var (ids, labels) = (ex.Ids, ex.Labels);
                string note = "";
                if (cut is { } c && ids.Length > c)
                {
                    note = $", cut from {ids.Length} at --seq-len {c}";
                    (ids, labels) = (ids[..c], labels[..c]);
                }
                bool[] loss = labels.Select(l => l != Tokenization.IgnoreIndex).ToArray();
                if (loss.Length > 0) loss[0] = false; // the first token is never predicted
                if (i > 0 && !r.GetValue(json)) output.WriteLine();
                string turn = examples[i].TurnExample is { } k ? $" (a conversation's per-turn example {k + 1})" : "";
                Write(output, tokenizer, $"record {i + 1}{turn}: {ids.Length} tokens, {loss.Count(x => x)} with loss (marked *){note}",
                    examples[i].Prompt + examples[i].Completion, ids, loss, r.GetValue(json), i + 1);
            }
            return 0;
        }));
        return cmd;
    }

    /// <summary>The texts of a --texts file: one JSON string or {"text": …} object per non-blank line; errors name the file and line.</summary>
    private static List<string> ReadTexts(string path)
    {
        if (!File.Exists(path)) throw new UserInputException($"--texts {path}: no such file.");
        var list = new List<string>();
        var lines = BoundedFile.ReadAllText(path, BoundedFile.DataLimit, "--texts").Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i].TrimEnd('\r');
            if (line.Trim().Length == 0) continue;
            try
            {
                using var doc = System.Text.Json.JsonDocument.Parse(line);
                var e = doc.RootElement;
                if (e.ValueKind == System.Text.Json.JsonValueKind.String) list.Add(e.GetString()!);
                else if (e.ValueKind == System.Text.Json.JsonValueKind.Object && e.TryGetProperty("text", out var v) && v.ValueKind == System.Text.Json.JsonValueKind.String) list.Add(v.GetString()!);
                else throw new UserInputException($"--texts {path}, line {i + 1}: expected a JSON string or an object with a string \"text\" field.");
            }
            catch (System.Text.Json.JsonException e)
            {
                throw new UserInputException($"--texts {path}, line {i + 1}: not JSON ({e.Message}); write each text as a JSON string, e.g. \"Hello\\nworld\".");
            }
        }
        return list;
    }

    /// <summary>Classification data on an encoder, read and encoded by train's own loader and encoder (<see cref="LabelledData.Read"/>, <see cref="Classification.Encode"/>).</summary>
    private static int Labelled(string dir, string path, LabelledDataOptions options, int limit, int? seqLen, bool json)
    {
        var config = Models.Encoders.EncoderConfig.Load(dir);
        var (tokenizer, pairs) = Classification.LoadTokenizer(dir);
        if (seqLen is < 3) throw new UserInputException($"--seq-len must be at least 3 for an encoder ([CLS] text [SEP]), got {seqLen}.");
        int cut = Math.Min(seqLen ?? Math.Min(128, config.MaxInputLength), config.MaxInputLength);
        var set = LabelledData.Read(path, options);
        var shown = set.Examples.Take(limit).ToList();
        var encoded = Classification.Encode(shown, pairs, cut, config, path);
        var output = Console.Out;
        if (!json) output.WriteLine($"{path}: {set.Examples.Count} examples; text field '{set.TextField}'{(set.PairField is null ? "" : $", pair field '{set.PairField}'")}; cut at {cut} tokens");
        for (int i = 0; i < shown.Count; i++)
        {
            var e = shown[i];
            var ids = encoded[i].Input.Ids;
            string label = set.Task == LabelTask.Regress ? e.Value.ToString("R", CultureInfo.InvariantCulture) : set.Labels?.NameOf(e.Label) ?? e.Label.ToString(CultureInfo.InvariantCulture);
            if (i > 0 && !json) output.WriteLine();
            string text = e.Pair is null ? e.Text : e.Text + " ||| " + e.Pair;
            Write(output, tokenizer, $"record {i + 1} (line {e.Line}): {ids.Length} tokens, label {label}", text, ids, null, json, i + 1, encoded[i].Input.TypeIds, label);
        }
        return 0;
    }

    private static string Piece(ITextTokenizer tok, int id) =>
        tok is ITokenOffsets named ? named.TokenString(id) : tok.Decode(new[] { id }, skipSpecialTokens: false);

    private static void Write(TextWriter output, ITextTokenizer tok, string header, string text, int[] ids, bool[]? loss, bool json, int? record, int[]? types = null, string? label = null)
    {
        var pieces = ids.Select(id => Piece(tok, id)).ToArray();
        if (json)
        {
            var o = new Dictionary<string, object>();
            if (record is { } rec) o["record"] = rec;
            o["text"] = text;
            o["ids"] = ids;
            o["pieces"] = pieces;
            if (loss is not null) o["loss"] = loss;
            if (types is not null) o["type_ids"] = types;
            if (label is not null) o["label"] = label;
            output.WriteLine(JsonSerializer.Serialize(o, Json));
            return;
        }
        output.WriteLine(header);
        output.WriteLine("text: " + JsonSerializer.Serialize(text, Json));
        output.WriteLine("ids: " + string.Join(" ", ids.Select(i => i.ToString(CultureInfo.InvariantCulture))));
        int width = Math.Max(2, ids.Length == 0 ? 1 : ids.Max().ToString(CultureInfo.InvariantCulture).Length);
        int posWidth = Math.Max(1, (ids.Length - 1).ToString(CultureInfo.InvariantCulture).Length);
        var sb = new StringBuilder();
        sb.Append("#".PadLeft(posWidth)).Append("  ").Append("id".PadLeft(width)).Append(loss is null ? "  " : "  loss  ").Append(types is null ? "" : "type  ").Append("piece");
        output.WriteLine(sb.ToString());
        for (int i = 0; i < ids.Length; i++)
        {
            sb.Clear();
            sb.Append(i.ToString(CultureInfo.InvariantCulture).PadLeft(posWidth)).Append("  ")
                .Append(ids[i].ToString(CultureInfo.InvariantCulture).PadLeft(width)).Append("  ");
            if (loss is not null) sb.Append(loss[i] ? "*     " : "      ");
            if (types is not null) sb.Append(types[i].ToString(CultureInfo.InvariantCulture).PadLeft(4)).Append("  ");
            sb.Append(JsonSerializer.Serialize(pieces[i], Json));
            output.WriteLine(sb.ToString());
        }
    }
}
