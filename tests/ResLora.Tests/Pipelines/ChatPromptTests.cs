using ResLora.IO;
using ResLora.Text.Templates;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Text;

namespace ResLora.Tests.Pipelines;

/// <summary>Prompts.Chat: what ends a reply when the template's end-of-turn token is one token, and when it is plain text.</summary>
public sealed class ChatPromptTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-chatprompt-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private (ITextTokenizer Tok, ChatFormat Format) Folder(string[] specials)
    {
        string dir = Path.Combine(_dir, string.Join("", specials.Length));
        ChatTokenizerFiles.WriteByteLevel(dir, specials, Array.Empty<(string, string)>(), new System.Text.Json.Nodes.JsonObject { ["eos_token"] = "<|endoftext|>" });
        return (TokenizerLoader.Load(dir), ChatFormat.ForModel(dir, "chatml")!);
    }

    [Fact]
    public void Chat_EndOfTurnIsOneToken_StopsOnItsId()
    {
        var (tok, format) = Folder(new[] { "<|im_start|>", "<|im_end|>", "<|endoftext|>" });
        var p = Prompts.Chat(tok, format, new[] { new ChatMessage("system", "S"), new ChatMessage("user", "Q") });
        Assert.Equal("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n", p.Text);
        Assert.Equal(tok.Encode(p.Text), p.Ids);
        Assert.Equal(new[] { 258, 257 }, p.StopIds); // <|endoftext|> (EOS), then <|im_end|>
        Assert.Empty(p.StopTexts);
        Assert.Null(p.StopWhen(tok));
        Assert.Equal("A", p.Reply(tok, tok.Encode("A<|im_end|>")));
    }

    [Fact]
    public void Chat_EndOfTurnIsPlainTextInTheVocabulary_StopsWhenTheReplyContainsIt()
    {
        // A base model taught the built-in ChatML format: <|im_end|> is ten byte tokens, not one.
        var (tok, format) = Folder(new[] { "<|endoftext|>" });
        var p = Prompts.Chat(tok, format, new[] { new ChatMessage("user", "Q") });
        Assert.Equal(new[] { 256 }, p.StopIds);
        Assert.Equal(new[] { "<|im_end|>" }, p.StopTexts);
        var stopWhen = p.StopWhen(tok)!;
        var reply = tok.Encode("blue<|im_end|>\n<|im_start|>");
        int stopsAt = Enumerable.Range(1, reply.Count).First(n => stopWhen(reply.Take(n).ToList()));
        Assert.Equal(tok.Encode("blue<|im_end|>").Count, stopsAt);
        Assert.Equal("blue", p.Reply(tok, reply.Take(stopsAt).ToList()));
        Assert.Equal("blue", p.Reply(tok, reply));
        Assert.Equal("no end", p.Reply(tok, tok.Encode("no end")));
    }

    [Fact]
    public void Renders_Qwen3ThinkingConversation_WholeRenderEachTurnsRenderAndThePerTurnExamples_ARefusedRecordCarriesItsError()
    {
        var format = IO.Templates.ChatTurnTests.Qwen3();
        var messages = IO.Templates.ChatTurnTests.ThinkingConversation;
        string data = Path.Combine(_dir, "renders.jsonl");
        string record = System.Text.Json.JsonSerializer.Serialize(new { messages = messages.Select(m => new { role = m.Role, content = m.Content }) });
        string refused = "{\"messages\":[{\"role\":\"user\",\"content\":\"Q\"},{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":{}}}]}]}";
        File.WriteAllText(data, record + "\n" + refused + "\n");

        var r = Prompts.Renders(data, format).ToList();
        Assert.Equal(2, r.Count);
        Assert.Equal(format.RenderText(messages), r[0].Full);
        Assert.DoesNotContain("add two and two", r[0].Full); // the whole render drops earlier reasoning...
        Assert.Equal(new[] { 2, 4, 6 }.Select(i => format.RenderText(messages.Take(i + 1).ToList())), r[0].Turns);
        Assert.Contains("add two and two", r[0].Turns![0]); // ...the render that ends with the turn keeps it
        Assert.Equal(r[0].Turns, r[0].Examples!.Select(e => e.Text));
        Assert.Equal(new[] { new[] { 1 }, new[] { 2 }, new[] { 3 } }, r[0].Examples!.Select(e => e.Turns.ToArray()));
        var last = r[0].Examples![2];
        Assert.Equal("<think>\n12 minus 5\n</think>\n\n7<|im_end|>", last.Text[last.Loss[0][0]..last.Loss[0][1]]);
        Assert.Null(r[0].Error);
        // Qwen3's template tests '</think>' in the content, which None cannot answer: the template's own error, not a crash.
        Assert.Null(r[1].Full);
        Assert.Contains("chat template 'qwen3' line", r[1].Error);
        Assert.Equal(2, r[1].Record);
    }
}
