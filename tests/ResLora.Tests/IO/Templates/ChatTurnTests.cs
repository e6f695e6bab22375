using System.Text.Json.Nodes;
using ResLora.IO;
using ResLora.Pipelines;
using ResLora.Tests.Infrastructure;
using ResLora.Text;
using ResLora.Text.Templates;
using ResLora.Training;

namespace ResLora.Tests.IO.Templates;

/// <summary>
/// Conversations on templates that rewrite earlier turns (Qwen3's published template, Fixtures/qwen3.jinja, keeps the
/// &lt;think&gt; block of the last reply only): each assistant turn becomes an example that is the render of the
/// conversation up to that turn, with loss on that turn alone; prefix-stable templates keep one example per conversation.
/// </summary>
public sealed class ChatTurnTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-turns-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    internal static ChatFormat Qwen3() =>
        new(ChatTemplate.Parse(ChatTemplateTestKit.Fixture("qwen3.jinja"), "qwen3"), null, "<|im_end|>", new[] { "<|im_start|>", "<|im_end|>", "<|endoftext|>" });

    private static ChatFormat Llama3() =>
        new(ChatTemplate.Parse(ChatTemplateTestKit.Fixture("llama3.jinja"), "llama3"), "<|begin_of_text|>", "<|eot_id|>", ChatTokenizerFiles.FamilySpecials);

    /// <summary>Three user questions, each answered with reasoning in a &lt;think&gt; block.</summary>
    internal static readonly ChatMessage[] ThinkingConversation =
    {
        new("system", "Be exact."),
        new("user", "2+2?"), new("assistant", "<think>\nadd two and two\n</think>\n\n4"),
        new("user", "times 3?"), new("assistant", "<think>\n4 times 3\n</think>\n\n12"),
        new("user", "minus 5?"), new("assistant", "<think>\n12 minus 5\n</think>\n\n7"),
    };

    private const string Thinking =
        "{\"messages\":[{\"role\":\"system\",\"content\":\"Be exact.\"},"
        + "{\"role\":\"user\",\"content\":\"2+2?\"},{\"role\":\"assistant\",\"content\":\"<think>\\nadd two and two\\n</think>\\n\\n4\"},"
        + "{\"role\":\"user\",\"content\":\"times 3?\"},{\"role\":\"assistant\",\"content\":\"<think>\\n4 times 3\\n</think>\\n\\n12\"},"
        + "{\"role\":\"user\",\"content\":\"minus 5?\"},{\"role\":\"assistant\",\"content\":\"<think>\\n12 minus 5\\n</think>\\n\\n7\"}]}";

    private string Write(string name, params string[] records)
    {
        string p = Path.Combine(_dir, name);
        File.WriteAllText(p, string.Join("\n", records) + "\n");
        return p;
    }

    private static string[] Learnt(TextExample e) => e.LossSpans!.Select(s => e.Completion[s.Start..s.End]).ToArray();

    [Fact]
    public void Load_Qwen3ThreeTurnsWithThinkBlocks_OneExamplePerTurn_TextIsTheRenderUpToIt_LossOnItsTurnOnly()
    {
        var format = Qwen3();
        var examples = DataSet.Load(Write("think.jsonl", Thinking), new DataTemplates { Chat = format });

        Assert.Equal(3, examples.Count);
        Assert.Equal(new int?[] { 0, 1, 2 }, examples.Select(e => e.TurnExample));
        int[] assistantAt = { 2, 4, 6 };
        for (int i = 0; i < 3; i++)
        {
            string expected = format.Template.RenderConversation(ThinkingConversation.Take(assistantAt[i] + 1).ToList(), false, null, "<|im_end|>");
            Assert.Equal(expected, examples[i].Completion);
        }
        // Written out from the template: the earlier reply loses its reasoning, the last keeps it.
        Assert.Equal(
            "<|im_start|>system\nBe exact.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
            + "<|im_start|>user\ntimes 3?<|im_end|>\n<|im_start|>assistant\n<think>\n4 times 3\n</think>\n\n12<|im_end|>\n",
            examples[1].Completion);
        Assert.Equal(new[] { "<think>\nadd two and two\n</think>\n\n4<|im_end|>" }, Learnt(examples[0]));
        Assert.Equal(new[] { "<think>\n4 times 3\n</think>\n\n12<|im_end|>" }, Learnt(examples[1]));
        Assert.Equal(new[] { "<think>\n12 minus 5\n</think>\n\n7<|im_end|>" }, Learnt(examples[2]));
    }

    [Fact]
    public void Tokenize_Qwen3PerTurnExample_LabelsAreExactlyTheTurnsTokens()
    {
        string tokDir = Path.Combine(_dir, "tok");
        ChatTokenizerFiles.WriteByteLevel(tokDir, new[] { "<|im_start|>", "<|im_end|>", "<|endoftext|>" }, new[] { ("1", "2"), ("\n", "\n"), ("t", "h") });
        var tok = TokenizerLoader.Load(tokDir);
        var examples = DataSet.Load(Write("think.jsonl", Thinking), new DataTemplates { Chat = Qwen3() });
        for (int i = 0; i < examples.Count; i++)
        {
            var t = Tokenization.TokenizeOne(examples[i], tok);
            var labelled = t.Labels.Where(l => l != Tokenization.IgnoreIndex).ToList();
            Assert.Equal(Learnt(examples[i])[0], tok.Decode(labelled, skipSpecialTokens: false));
            Assert.Equal(t.Ids.Length, tok.Encode(examples[i].Completion).Count); // the template's text as it is: no BOS/EOS added
        }
    }

    [Fact]
    public void Load_PrefixStableTemplate_KeepsOneExampleWithEveryTurnLabelled()
    {
        string record = "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Hello.\"},"
            + "{\"role\":\"user\",\"content\":\"Bye\"},{\"role\":\"assistant\",\"content\":\"Goodbye.\"}]}";
        var examples = DataSet.Load(Write("llama3.jsonl", record), new DataTemplates { Chat = Llama3() });
        var e = Assert.Single(examples);
        Assert.Null(e.TurnExample);
        Assert.Equal(new[] { "Hello.<|eot_id|>", "Goodbye.<|eot_id|>" }, Learnt(e));
        Assert.EndsWith("<|start_header_id|>assistant<|end_header_id|>\n\nGoodbye.<|eot_id|>", e.Completion);
        Assert.Null(TrainingSplits.PerTurnNote(examples));
    }

    [Fact]
    public void RenderForTraining_Qwen3WithoutThinkBlocks_StillPerTurn_TheLastReplyGetsAnEmptyThinkBlock()
    {
        // Qwen3's template writes "<think>\n\n</think>\n\n" before the last reply and not before earlier ones: what the
        // model writes at inference (thinking on) is the first, so turn 1 trains on it.
        var messages = new[] { new ChatMessage("user", "Hi"), new ChatMessage("assistant", "Hello."), new ChatMessage("user", "Bye"), new ChatMessage("assistant", "Goodbye.") };
        var r = Qwen3().RenderForTraining(messages);
        Assert.Equal(2, r.Count);
        Assert.Equal(new[] { 1 }, r[0].Turns);
        Assert.Equal(new[] { 2 }, r[1].Turns);
        Assert.Equal("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello.<|im_end|>\n", r[0].Text);
        Assert.Equal("<think>\n\n</think>\n\nHello.<|im_end|>", r[0].Text[r[0].AssistantSpans[0].Start..r[0].AssistantSpans[0].End]);
        Assert.Contains("<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye", r[1].Text, StringComparison.Ordinal);
    }

    [Fact]
    public void RenderForTraining_Qwen3ToolCallThatReasons_SharesTheFinalAnswersExample()
    {
        // The call turn keeps its reasoning when later messages follow (it comes after the last user query), so the
        // render that ends with the answer holds it unchanged: one example, both turns labelled.
        var call = new ChatMessage("assistant", "<think>\nneed the weather\n</think>\n\n")
        {
            Fields = new JsonObject { ["tool_calls"] = new JsonArray(new JsonObject { ["type"] = "function", ["function"] = new JsonObject { ["name"] = "weather", ["arguments"] = new JsonObject { ["city"] = "Paris" } } }) },
        };
        var messages = new[] { new ChatMessage("user", "Paris?"), call, new ChatMessage("tool", "18 C") { Fields = new JsonObject { ["name"] = "weather" } }, new ChatMessage("assistant", "<think>\nread it\n</think>\n\n18 C.") };
        var r = Assert.Single(Qwen3().RenderForTraining(messages));
        Assert.Equal(new[] { 1, 2 }, r.Turns);
        Assert.Equal(new[]
        {
            "<think>\nneed the weather\n</think>\n\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>",
            "<think>\nread it\n</think>\n\n18 C.<|im_end|>",
        }, r.AssistantSpans.Select(s => r.Text[s.Start..s.End]));
        Assert.Contains("<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>\n", r.Text, StringComparison.Ordinal);

        // Without reasoning on the call, the template writes it with an empty think block only when it is last: two examples.
        // (Qwen3's template tests '</think>' in message.content, so a calls-only message needs content "", not None.)
        var plainCall = call with { Content = "" };
        var two = Qwen3().RenderForTraining(new[] { messages[0], plainCall, messages[2], messages[3] });
        Assert.Equal(new[] { new[] { 1 }, new[] { 2 } }, two.Select(x => x.Turns.ToArray()));
        Assert.EndsWith("<|im_start|>assistant\n<think>\n\n</think>\n\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n", two[0].Text);
    }

    [Fact]
    public void Render_OnePassOnTemplateThatRewritesEarlierTurns_SaysToTrainPerTurn()
    {
        var e = Assert.Throws<UserInputException>(() => Qwen3().Render(ThinkingConversation));
        Assert.Contains("writes it differently once later messages follow", e.Message);
        Assert.Contains("RenderForTraining", e.Message);
    }

    [Fact]
    public void Split_PerTurnExamplesOfOneConversationStayTogether_AndTheNoteCountsThem()
    {
        var records = Enumerable.Range(0, 6).Select(k => Thinking.Replace("Be exact.", $"Be exact {k}.", StringComparison.Ordinal)).ToArray();
        var all = DataSet.Load(Write("six.jsonl", records), new DataTemplates { Chat = Qwen3() });
        Assert.Equal(18, all.Count);
        var (train, eval) = TrainingSplits.Make(all, null, 0.34, seed: 5);
        Assert.Equal(6, eval.Count); // round(6 * 0.34) = 2 conversations of 3 examples
        Assert.Equal(12, train.Count);
        static string Conversation(TextExample e) => e.Completion[..e.Completion.IndexOf("<|im_end|>", StringComparison.Ordinal)];
        Assert.Empty(train.Select(Conversation).Intersect(eval.Select(Conversation)));
        Assert.All(eval.Chunk(3), c => Assert.Equal(new int?[] { 0, 1, 2 }, c.Select(e => e.TurnExample)));
        Assert.StartsWith("6 conversation(s) became 18 examples, one per assistant turn", TrainingSplits.PerTurnNote(all));
    }
}
