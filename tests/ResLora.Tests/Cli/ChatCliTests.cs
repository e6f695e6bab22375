using System.Text.Json.Nodes;
using ResLora.Cli;
using ResLora.IO;
using ResLora.Text.Templates;
using ResLora.Models;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Text;
using TorchSharp;

namespace ResLora.Tests.Cli;

/// <summary>
/// A chat fine-tune from the CLI: a tiny LLaMA with a ChatML template (EOS is &lt;|endoftext|&gt;, so only the template's
/// end-of-turn token can end a reply) learns a four-question chat task; generate --chat answers in the format and stops at
/// &lt;|im_end|&gt;; tokenize shows what training saw.
/// </summary>
[Collection("console")]
public sealed class ChatCliTests : IDisposable
{
    private static readonly string[] Specials = { "<|im_start|>", "<|im_end|>", "<|endoftext|>" };
    private const int ImStart = 256, ImEnd = 257, EndOfText = 258; // ids after the 256 bytes (no merges)

    private static readonly (string Q, string A)[] Facts = { ("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black") };

    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-chatcli-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string ModelFolder(bool withTemplate = true)
    {
        string dir = Path.Combine(_dir, withTemplate ? "model" : "base");
        var config = new JsonObject { ["eos_token"] = "<|endoftext|>" };
        if (withTemplate) config["chat_template"] = BuiltInChatTemplates.Source("chatml");
        ChatTokenizerFiles.WriteByteLevel(dir, Specials, Array.Empty<(string, string)>(), config);
        var c = TinyModels.Config(vocab: ChatTokenizerFiles.ByteLevelVocabSize(Specials, Array.Empty<(string, string)>())) with { BosTokenId = null, EosTokenIds = new[] { EndOfText } };
        using var m = TinyModels.Build(c, seed: 3);
        ResLora.Models.ModelFolder.Save(dir, c, m.BaseParameters().Select(kv => new KeyValuePair<string, torch.Tensor>(kv.Key, kv.Value)));
        return dir;
    }

    private string ChatData()
    {
        // Single-turn records in both formats, and a two-turn one: every assistant turn is learnt.
        var lines = new List<string>();
        foreach (var (q, a) in Facts)
        {
            lines.Add($"{{\"messages\":[{{\"role\":\"user\",\"content\":\"{q}\"}},{{\"role\":\"assistant\",\"content\":\"{a}\"}}]}}");
            lines.Add($"{{\"conversations\":[{{\"from\":\"human\",\"value\":\"{q}\"}},{{\"from\":\"gpt\",\"value\":\"{a}\"}}]}}");
        }
        lines.Add("{\"messages\":[{\"role\":\"user\",\"content\":\"sky\"},{\"role\":\"assistant\",\"content\":\"blue\"},{\"role\":\"user\",\"content\":\"coal\"},{\"role\":\"assistant\",\"content\":\"black\"}]}");
        string p = Path.Combine(_dir, "chat.jsonl");
        File.WriteAllLines(p, lines);
        return p;
    }


    [Fact]
    public void ChatFineTune_ThenGenerateChat_AnswersInTheFormatAndStopsAtImEnd()
    {
        string model = ModelFolder(), data = ChatData(), adapter = Path.Combine(_dir, "adapter");
        var (rc, output, err) = CliHarness.Run("train", "--model", model, "--data", data, "--eval-fraction", "0", "--method", "lora", "--targets", "all-linear",
            "--rank", "16", "--steps", "60", "--batch-size", "9", "--lr", "1e-2", "--warmup-steps", "5", "--log-every", "10", "--save-every", "0",
            "--out", adapter, "--threads", "1");
        Assert.True(rc == 0, err);
        Assert.Contains("done: 60 steps", output);
        Assert.Single(Directory.GetFiles(adapter, "events.out.tfevents.*"));
        Assert.Equal(6, TensorBoardEvents.Read(adapter).Count(s => s.Tag == "train/loss"));
        Assert.Contains("\"chat_template\"", File.ReadAllText(Path.Combine(adapter, TrainingDataRecord.FileName)));

        foreach (var (q, a) in Facts)
        {
            var g = CliHarness.Run("generate", "--model", model, "--adapter", adapter, "--chat", "--prompt", q, "--max-new-tokens", "12", "--threads", "1");
            Assert.True(g.Rc == 0, g.Err);
            Assert.Equal(a + Environment.NewLine, g.Out);
        }

        // The same reply through the library: it ends with <|im_end|>, well before the token budget.
        var tok = TokenizerLoader.Load(model);
        var format = ChatFormat.ForModel(model)!;
        Assert.Equal(new[] { "<|im_end|>", "<|endoftext|>" }, format.EndOfTurn);
        var prompt = Prompts.Chat(tok, format, new[] { new ChatMessage("user", "snow") });
        Assert.Equal("<|im_start|>user\nsnow<|im_end|>\n<|im_start|>assistant\n", prompt.Text);
        Assert.Equal(new[] { EndOfText, ImEnd }, prompt.StopIds);
        using var m = ModelSessions.Load(model, adapter, new RuntimeOptions());
        var reply = TextGenerator.Generate(m, prompt.Ids, new GenerationOptions { MaxNewTokens = 12, EosTokenIds = prompt.StopIds });
        Assert.Equal(ImEnd, reply[^1]);
        Assert.Equal("white", tok.Decode(reply));

        // A conversation file with a system message works the same way.
        string messages = Path.Combine(_dir, "messages.json");
        File.WriteAllText(messages, "[{\"role\":\"user\",\"content\":\"grass\"}]");
        var fromFile = CliHarness.Run("generate", "--model", model, "--adapter", adapter, "--messages", messages, "--max-new-tokens", "12", "--threads", "1");
        Assert.True(fromFile.Rc == 0, fromFile.Err);
        Assert.Equal("green" + Environment.NewLine, fromFile.Out);
    }

    [Fact]
    public void Tokenize_Text_PrintsHandCheckedIdsAndPieces()
    {
        string model = ModelFolder();
        var (rc, output, err) = CliHarness.Run("tokenize", "--model", model, "--text", "<|im_start|>hi\n");
        Assert.True(rc == 0, err);
        // <|im_start|> is the first added token (256); the bytes 'h' (0x68), 'i' (0x69) and '\n' (0x0A, written Ċ) are their own ids.
        Assert.Equal(
            "4 tokens\ntext: \"<|im_start|>hi\\n\"\nids: 256 104 105 10\n#   id  piece\n0  256  \"<|im_start|>\"\n1  104  \"h\"\n2  105  \"i\"\n3   10  \"Ċ\"\n",
            output.ReplaceLineEndings("\n"));
        var json = CliHarness.Run("tokenize", "--model", model, "--text", "hi", "--json");
        Assert.Equal("{\"text\":\"hi\",\"ids\":[104,105],\"pieces\":[\"h\",\"i\"]}\n", json.Out.ReplaceLineEndings("\n"));
    }

    [Fact]
    public void Tokenize_TextsFile_GivesEachTextsIdsInOrder_AndNamesABadLine()
    {
        string model = ModelFolder(), texts = Path.Combine(_dir, "texts.jsonl");
        File.WriteAllText(texts, "\"hi\"\n\n{\"text\": \"<|im_start|>h\"}\n\"i\\n\"\n");
        var (rc, output, err) = CliHarness.Run("tokenize", "--model", model, "--texts", texts, "--json");
        Assert.True(rc == 0, err);
        var ids = output.Trim().Split('\n').Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray()).ToList();
        Assert.Equal(3, ids.Count);
        Assert.Equal(new[] { 104, 105 }, ids[0]);
        Assert.Equal(new[] { 256, 104 }, ids[1]);
        Assert.Equal(new[] { 105, 10 }, ids[2]);
        File.WriteAllText(texts, "\"ok\"\nnot json\n");
        var bad = CliHarness.Run("tokenize", "--model", model, "--texts", texts);
        Assert.Equal(2, bad.Rc);
        Assert.Contains("line 2", bad.Err);
        var both = CliHarness.Run("tokenize", "--model", model, "--texts", texts, "--text", "x");
        Assert.Equal(2, both.Rc);
        Assert.Contains("one of --text TEXT, --texts FILE or --data FILE", both.Err);
    }

    [Fact]
    public void Tokenize_ChatData_MarksOnlyTheAssistantTurnsTokens()
    {
        string model = ModelFolder(), data = ChatData();
        var (rc, output, err) = CliHarness.Run("tokenize", "--model", model, "--data", data, "--limit", "1", "--json");
        Assert.True(rc == 0, err);
        var o = JsonNode.Parse(output)!;
        Assert.Equal(1, (int)o["record"]!);
        Assert.Equal("<|im_start|>user\nsky<|im_end|>\n<|im_start|>assistant\nblue<|im_end|>\n", (string)o["text"]!);
        var ids = o["ids"]!.AsArray().Select(x => (int)x!).ToArray();
        var loss = o["loss"]!.AsArray().Select(x => (bool)x!).ToArray();
        Assert.Equal(new[] { (int)'b', 'l', 'u', 'e', ImEnd }, ids.Where((_, i) => loss[i]));
        Assert.Equal(ImStart, ids[0]);

        var table = CliHarness.Run("tokenize", "--model", model, "--data", data, "--limit", "2");
        Assert.True(table.Rc == 0, table.Err);
        Assert.Contains("record 1: 28 tokens, 5 with loss (marked *)", table.Out);
        Assert.Contains("record 2: 28 tokens, 5 with loss (marked *)", table.Out);
        Assert.Contains("*     \"<|im_end|>\"", table.Out);
    }

    [Fact]
    public void ChatWithoutTemplate_IsOneLineErrorNamingTheFix_AndChatTemplateSuppliesOne()
    {
        string model = ModelFolder(withTemplate: false), data = ChatData();
        var (rc, _, err) = CliHarness.Run("train", "--model", model, "--data", data, "--steps", "1", "--out", Path.Combine(_dir, "a"), "--threads", "1");
        Assert.Equal(2, rc);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Contains($"{data}: record 1 (line 1): this is a conversation, but the model has no chat_template", err);
        Assert.Contains("--chat-template", err);
        var g = CliHarness.Run("generate", "--model", model, "--chat", "--prompt", "sky", "--max-new-tokens", "2", "--threads", "1");
        Assert.Equal(2, g.Rc);
        Assert.Contains("--chat-template", g.Err);
        var t = CliHarness.Run("tokenize", "--model", model, "--data", data, "--chat-template", "chatml", "--limit", "1", "--json");
        Assert.True(t.Rc == 0, t.Err);
        Assert.Contains("<|im_start|>assistant\\nblue<|im_end|>", t.Out);
        var evBase = CliHarness.Run("eval", "--model", model, "--data", data, "--threads", "1");
        Assert.Equal(2, evBase.Rc);
        Assert.Contains("--chat-template", evBase.Err);
        evBase = CliHarness.Run("eval", "--model", model, "--data", data, "--chat-template", "chatml", "--accuracy-examples", "0", "--threads", "1");
        Assert.True(evBase.Rc == 0, evBase.Err);
        Assert.Contains("perplexity", evBase.Out);
        // Trained with --chat-template, the adapter remembers it: eval and generate --chat need no flag.
        string adapter = Path.Combine(_dir, "b");
        var tr = CliHarness.Run("train", "--model", model, "--data", data, "--chat-template", "chatml", "--steps", "2", "--eval-fraction", "0", "--out", adapter, "--threads", "1");
        Assert.True(tr.Rc == 0, tr.Err);
        var ev = CliHarness.Run("eval", "--model", model, "--adapter", adapter, "--data", data, "--threads", "1");
        Assert.True(ev.Rc == 0, ev.Err);
        Assert.Contains("perplexity", ev.Out);
        var ga = CliHarness.Run("generate", "--model", model, "--adapter", adapter, "--chat", "--prompt", "sky", "--max-new-tokens", "2", "--threads", "1");
        Assert.True(ga.Rc == 0, ga.Err);
        // A named adapter (NAME=DIR) remembers it too, and scores the same as --adapter DIR.
        var named = CliHarness.Run("eval", "--model", model, "--adapter", $"b={adapter}", "--data", data, "--threads", "1");
        Assert.True(named.Rc == 0, named.Err);
        Assert.Equal(ev.Out.Trim().Split('\n')[0], named.Out.Trim().Split('\n')[0].Replace("b: ", ""));
        var bad = CliHarness.Run("tokenize", "--model", model, "--text", "x", "--data", data);
        Assert.Equal(2, bad.Rc);
        Assert.Contains("give one of --text TEXT, --texts FILE or --data FILE", bad.Err);
    }
}
