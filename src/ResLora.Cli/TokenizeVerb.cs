using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using ResLora.IO;
using ResLora.IO.Templates;
using ResLora.Training;

namespace ResLora.Cli;

/// <summary>
/// <c>reslora tokenize</c>: what the model sees. The ids and pieces of a text, or of the first training examples of a data
/// file exactly as <c>train</c> builds them (BOS, template, chat rendering, EOS), with the tokens that carry loss marked.
/// </summary>
internal static class TokenizeVerb
{
    private static readonly JsonSerializerOptions Json = IO.Json.ReportJson.Line;

    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "Model folder whose tokenizer (and chat template) to use.", Required = true };
        var text = new Option<string?>("--text") { Description = "Text to tokenize as it is (no BOS/EOS added; special tokens written in it are recognised)." };
        var data = new Option<string?>("--data") { Description = "A training data file: its first --limit examples are shown as train builds them, loss tokens marked." };
        var limit = new Option<int>("--limit") { Description = "--data: how many examples to show.", DefaultValueFactory = _ => 3 };
        var seqLen = new Option<int?>("--seq-len") { Description = "--data: cut each example at this many tokens, as train --seq-len does (default: no cut)." };
        var promptTemplate = new Option<string?>("--prompt-template") { Description = "--data: prompt built from record fields, as for train." };
        var completionTemplate = new Option<string?>("--completion-template") { Description = "--data: completion built from record fields, as for train." };
        var chatTemplate = new Option<string?>("--chat-template") { Description = $"--data: chat template for conversation records (a Jinja file, a JSON file with chat_template, or a built-in: {string.Join(", ", BuiltInChatTemplates.Names)}); default: the model's." };
        var json = new Option<bool>("--json") { Description = "One JSON object per text or example (ids, pieces, loss) instead of a table." };
        var cmd = new Command("tokenize", "Show the token ids and pieces of a text, or of training examples as train builds them, with the loss-carrying tokens marked.");
        foreach (var o in new Option[] { model, text, data, limit, seqLen, promptTemplate, completionTemplate, chatTemplate, json }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            string dir = CliPaths.ModelDir(r.GetValue(model));
            string? t = r.GetValue(text), path = r.GetValue(data);
            if ((t is null) == (path is null)) throw new UserInputException("give --text TEXT or --data FILE (one of them).");
            if (t is not null && (r.GetValue(promptTemplate) ?? r.GetValue(completionTemplate) ?? r.GetValue(chatTemplate)) is not null)
                throw new UserInputException("--prompt-template, --completion-template and --chat-template apply to --data.");
            int n = r.GetValue(limit);
            if (n < 1) throw new UserInputException($"--limit must be at least 1, got {n}.");
            int? cut = r.GetValue(seqLen);
            if (cut is < 2) throw new UserInputException($"--seq-len must be at least 2, got {cut}.");
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
                Write(output, tokenizer, $"record {i + 1}: {ids.Length} tokens, {loss.Count(x => x)} with loss (marked *){note}",
                    examples[i].Prompt + examples[i].Completion, ids, loss, r.GetValue(json), i + 1);
            }
            return 0;
        }));
        return cmd;
    }

    private static string Piece(ITextTokenizer tok, int id) =>
        tok is ITokenOffsets named ? named.TokenString(id) : tok.Decode(new[] { id }, skipSpecialTokens: false);

    private static void Write(TextWriter output, ITextTokenizer tok, string header, string text, int[] ids, bool[]? loss, bool json, int? record)
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
            output.WriteLine(JsonSerializer.Serialize(o, Json));
            return;
        }
        output.WriteLine(header);
        output.WriteLine("text: " + JsonSerializer.Serialize(text, Json));
        output.WriteLine("ids: " + string.Join(" ", ids.Select(i => i.ToString(CultureInfo.InvariantCulture))));
        int width = Math.Max(2, ids.Length == 0 ? 1 : ids.Max().ToString(CultureInfo.InvariantCulture).Length);
        int posWidth = Math.Max(1, (ids.Length - 1).ToString(CultureInfo.InvariantCulture).Length);
        var sb = new StringBuilder();
        sb.Append("#".PadLeft(posWidth)).Append("  ").Append("id".PadLeft(width)).Append(loss is null ? "  " : "  loss  ").Append("piece");
        output.WriteLine(sb.ToString());
        for (int i = 0; i < ids.Length; i++)
        {
            sb.Clear();
            sb.Append(i.ToString(CultureInfo.InvariantCulture).PadLeft(posWidth)).Append("  ")
                .Append(ids[i].ToString(CultureInfo.InvariantCulture).PadLeft(width)).Append("  ");
            if (loss is not null) sb.Append(loss[i] ? "*     " : "      ");
            sb.Append(JsonSerializer.Serialize(pieces[i], Json));
            output.WriteLine(sb.ToString());
        }
    }
}
