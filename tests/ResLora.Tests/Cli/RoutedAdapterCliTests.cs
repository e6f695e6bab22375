using System.Text.Json;
using ResLora.Cli;
using ResLora.Tests.Infrastructure;
using ResLora.Tests.Pipelines;

namespace ResLora.Tests.Cli;

/// <summary>
/// <c>generate --prompts</c> and <c>eval</c> with several named adapters, where each record names its adapter: every
/// answer and every adapter's loss equals running that adapter alone.
/// </summary>
[Collection("console")]
public sealed class RoutedAdapterCliTests : IClassFixture<MultiAdapterFixture>
{
    private static readonly (string Prompt, string? Adapter)[] Rows =
    {
        ("the cat sat", "a"), ("once upon", null), ("the dog", "d"), ("a bird flew", "r"), ("the cat sat", "d"), ("hello", "a"),
    };

    private readonly MultiAdapterFixture _f;

    public RoutedAdapterCliTests(MultiAdapterFixture fixture) => _f = fixture;

    private string[] AdapterArgs() => new[] { "--adapter", $"a={_f.Dir("lora")}", "--adapter", $"d={_f.Dir("dora")}", "--adapter", $"r={_f.Dir("rslora")}" };

    private string FolderOf(string? name) => name switch { "a" => _f.Dir("lora"), "d" => _f.Dir("dora"), "r" => _f.Dir("rslora"), _ => "" };

    private string WriteFile(string name, IEnumerable<string> lines)
    {
        string p = Path.Combine(_f.Root, Guid.NewGuid().ToString("N") + "-" + name);
        File.WriteAllLines(p, lines);
        return p;
    }

    [Fact]
    public void GeneratePrompts_MixedAdaptersInOneBatch_EachAnswerEqualsGeneratingItAloneWithItsAdapter()
    {
        // Row 6 is a conversation in the same batch as plain prompts: it stops at its template's end of turn, they at EOS.
        var lines0 = Rows.Select(r => JsonSerializer.Serialize(r.Adapter is null ? (object)new { prompt = r.Prompt } : new { prompt = r.Prompt, adapter = r.Adapter })).ToList();
        lines0.Add(JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = "the dog" } }, adapter = "d" }));
        string file = WriteFile("prompts.jsonl", lines0);
        var (rc, output, err) = CliHarness.Run(new[] { "generate", "--model", _f.ModelDir, "--prompts", file, "--chat-template", "chatml", "--batch-size", "4", "--max-new-tokens", "6", "--threads", "1" }.Concat(AdapterArgs()).ToArray());
        Assert.True(rc == 0, err);
        var lines = output.Trim().Split('\n');
        Assert.Equal(Rows.Length + 1, lines.Length);
        var chatAlone = CliHarness.Run("generate", "--model", _f.ModelDir, "--chat", "--prompt", "the dog", "--chat-template", "chatml", "--adapter", FolderOf("d"), "--max-new-tokens", "6", "--threads", "1");
        Assert.True(chatAlone.Rc == 0, chatAlone.Err);
        Assert.Equal(chatAlone.Out.TrimEnd('\n'), JsonDocument.Parse(lines[^1]).RootElement.GetProperty("output").GetString());
        for (int i = 0; i < Rows.Length; i++)
        {
            using var doc = JsonDocument.Parse(lines[i]);
            var root = doc.RootElement;
            Assert.Equal(i, root.GetProperty("index").GetInt32());
            Assert.Equal(Rows[i].Adapter, root.GetProperty("adapter").GetString());
            var alone = new List<string> { "generate", "--model", _f.ModelDir, "--prompt", Rows[i].Prompt, "--max-new-tokens", "6", "--threads", "1" };
            if (Rows[i].Adapter is { } name) alone.AddRange(new[] { "--adapter", FolderOf(name) });
            var single = CliHarness.Run(alone.ToArray());
            Assert.True(single.Rc == 0, single.Err);
            Assert.Equal(single.Out.TrimEnd('\n'), root.GetProperty("output").GetString());
        }
        // The adapters differ, so routing matters: the same prompt gives different answers under a and d (rows 0 and 4).
        Assert.NotEqual(JsonDocument.Parse(lines[0]).RootElement.GetProperty("output").GetString(), JsonDocument.Parse(lines[4]).RootElement.GetProperty("output").GetString());
    }

    [Fact]
    public void EvalNamedAdapters_EachAdaptersLossEqualsEvaluatingItAlone()
    {
        var records = Rows.Select(r => JsonSerializer.Serialize(r.Adapter is null
            ? (object)new { prompt = r.Prompt, completion = " and then" }
            : new { prompt = r.Prompt, completion = " and then", adapter = r.Adapter })).ToList();
        string data = WriteFile("eval.jsonl", records);
        var (rc, output, err) = CliHarness.Run(new[] { "eval", "--model", _f.ModelDir, "--data", data, "--accuracy-examples", "0", "--threads", "1" }.Concat(AdapterArgs()).ToArray());
        Assert.True(rc == 0, err);
        var lines = output.Trim().Split('\n');
        Assert.Equal(new[] { "a", "base", "d", "r", "all" }, lines.Select(l => l[..l.IndexOf(':', StringComparison.Ordinal)]));
        foreach (var name in new[] { "a", "d", "r", "base" })
        {
            string only = WriteFile(name + ".jsonl", records.Where((_, i) => (Rows[i].Adapter ?? "base") == name));
            var args = new List<string> { "eval", "--model", _f.ModelDir, "--data", only, "--accuracy-examples", "0", "--threads", "1" };
            if (name != "base") args.AddRange(new[] { "--adapter", FolderOf(name) });
            var alone = CliHarness.Run(args.ToArray());
            Assert.True(alone.Rc == 0, alone.Err);
            Assert.Contains($"{name}: {alone.Out.Trim()}", lines);
        }
    }

    [Fact]
    public void Routing_BadInput_IsOneLineNamingTheFix()
    {
        string file = WriteFile("p.jsonl", new[] { "{\"prompt\": \"x\", \"adapter\": \"a\"}", "{\"prompt\": \"y\", \"adapter\": \"zzz\"}" });
        var (rc, _, err) = CliHarness.Run(new[] { "generate", "--model", _f.ModelDir, "--prompts", file, "--threads", "1" }.Concat(AdapterArgs()).ToArray());
        Assert.Equal(CliErrors.UserErrorExit, rc);
        Assert.Contains($"{file}: record 2 (line 2): adapter 'zzz' is not loaded (loaded: a, d, r); load it with --adapter zzz=DIR.", err);
        Assert.Single(err.Trim().Split('\n'));

        var two = CliHarness.Run(new[] { "generate", "--model", _f.ModelDir, "--prompt", "x", "--threads", "1" }.Concat(AdapterArgs()).ToArray());
        Assert.Equal(CliErrors.UserErrorExit, two.Rc);
        Assert.Contains("for one prompt give --adapter DIR", two.Err);

        var dup = CliHarness.Run("eval", "--model", _f.ModelDir, "--data", file, "--adapter", $"a={_f.Dir("lora")}", "--adapter", $"a={_f.Dir("dora")}");
        Assert.Equal(CliErrors.UserErrorExit, dup.Rc);
        Assert.Contains("the name 'a' is given twice", dup.Err);

        string done = WriteFile("c.jsonl", new[] { "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}" });
        var ended = CliHarness.Run("generate", "--model", _f.ModelDir, "--prompts", done, "--chat-template", "chatml", "--threads", "1");
        Assert.Equal(CliErrors.UserErrorExit, ended.Rc);
        Assert.Contains("ends with an assistant message", ended.Err);
    }
}
