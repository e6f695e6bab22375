using ResLora.Tests.Infrastructure;
using ResLora.Training;

namespace ResLora.Tests.Training;

public sealed class DataSetTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("reslora-data-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, string content)
    {
        string p = Path.Combine(_dir, name);
        File.WriteAllText(p, content);
        return p;
    }

    [Fact]
    public void CommonShapes_AreDetected()
    {
        var p = Write("a.jsonl", "{\"prompt\":\"Q: 2+2?\",\"completion\":\" 4\"}\n\n{\"text\":\"hello\"}\n{\"instruction\":\"Add\",\"input\":\"2 2\",\"output\":\"4\"}\n{\"instruction\":\"Say hi\",\"output\":\"hi\"}\n");
        var ex = DataSet.Load(p);
        Assert.Equal(new TextExample("Q: 2+2?", " 4"), ex[0]);
        Assert.True(ex[1].IsPlainText);
        Assert.Equal("hello", ex[1].Completion);
        Assert.Contains("### Input:\n2 2\n\n### Response:\n", ex[2].Prompt);
        Assert.DoesNotContain("### Input:", ex[3].Prompt);
        Assert.Equal("hi", ex[3].Completion);
    }

    [Fact]
    public void Templates_FillFields_AndFormatWholeNumbersWithoutDecimals()
    {
        var p = Write("b.json", "[{\"Body\":\"Tom has 3.0 apples.\",\"Question\":\"How many?\",\"Answer\":3.0,\"meta\":{\"x\":2.5}}]");
        var ex = DataSet.Load(p, new DataTemplates("{Body} {Question}\nAnswer:", " {Answer} {meta.x} {{lit}}"));
        Assert.Equal("Tom has 3.0 apples. How many?\nAnswer:", ex[0].Prompt);
        Assert.Equal(" 3 2.5 {lit}", ex[0].Completion);
    }

    [Fact]
    public void MissingField_NamesRecordAndField()
    {
        var p = Write("c.jsonl", "{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"prompt\":\"a\"}\n");
        var e = Assert.Throws<UserInputException>(() => DataSet.Load(p));
        Assert.Contains("record 2", e.Message);
        Assert.Contains("'completion'", e.Message);
        var t = Assert.Throws<UserInputException>(() => DataSet.Load(p, new DataTemplates("{prompt}", "{answer}")));
        Assert.Contains("'answer'", t.Message);
        Assert.Contains("record 1", t.Message);
    }

    [Fact]
    public void BadFiles_GetClearErrors()
    {
        Assert.Contains("not found", Assert.Throws<FileNotFoundException>(() => DataSet.Load(Path.Combine(_dir, "none.jsonl"))).Message);
        Assert.Contains("empty", Assert.Throws<UserInputException>(() => DataSet.Load(Write("e.jsonl", "\n\n"))).Message);
        Assert.Contains("line 2", Assert.Throws<UserInputException>(() => DataSet.Load(Write("f.jsonl", "{\"text\":\"a\"}\n{oops\n"))).Message);
        Assert.Contains("unknown record shape", Assert.Throws<UserInputException>(() => DataSet.Load(Write("g.jsonl", "{\"q\":1}\n"))).Message);
        Assert.Contains("--completion-template", Assert.Throws<UserInputException>(() => DataSet.Load(Write("h.jsonl", "{\"q\":1}\n"), new DataTemplates("{q}", null))).Message);
    }

    [Fact]
    public void Split_IsSeededAndDisjoint()
    {
        var all = Enumerable.Range(0, 20).Select(i => new TextExample("", $"t{i}")).ToList();
        var (tr, ev) = DataSet.Split(all, 0.25, 3);
        var (tr2, _) = DataSet.Split(all, 0.25, 3);
        Assert.Equal(5, ev.Count);
        Assert.Equal(15, tr.Count);
        Assert.Empty(tr.Intersect(ev));
        Assert.Equal(tr, tr2);
    }

    [Fact]
    public void Tokenize_MasksThePrompt_AddsBosAndEos_AndTruncates()
    {
        var tok = new CharTokenizer();
        var set = Tokenization.Tokenize(new[] { new TextExample("ab", "cd"), new TextExample("", "xyz"), new TextExample("abcdefgh", "ij") }, tok, seqLen: 6);
        var first = set.Examples[0];
        Assert.Equal(new[] { 1, 3 + 'a' - 32, 3 + 'b' - 32, 3 + 'c' - 32, 3 + 'd' - 32, 2 }, first.Ids);
        Assert.Equal(new[] { -100, -100, -100, first.Ids[3], first.Ids[4], 2 }, first.Labels);
        Assert.Equal(set.Examples[1].Ids.Skip(1), set.Examples[1].Labels.Skip(1));
        // The third example's completion lies beyond 6 tokens: truncated, then dropped for having no loss token.
        Assert.Equal(2, set.Examples.Count);
        Assert.Equal(1, set.Truncated);
        Assert.Equal(1, set.DroppedWithoutLoss);
    }

    [Fact]
    public void Tokenize_TrainOnPrompt_PutsThePromptAndTheAlpacaPreambleUnderTheLoss()
    {
        var tok = new CharTokenizer();
        var p = Write("shapes.jsonl", "{\"prompt\":\"Q: 2+2?\",\"completion\":\" 4\"}\n{\"instruction\":\"Add\",\"input\":\"2 2\",\"output\":\"4\"}\n");
        var examples = DataSet.Load(p);
        var masked = Tokenization.Tokenize(examples, tok, seqLen: 512).Examples;
        var all = Tokenization.Tokenize(examples, tok, seqLen: 512, trainOnPrompt: true).Examples;
        static int Counted(TokenizedExample e) => e.Labels.Skip(1).Count(l => l != Tokenization.IgnoreIndex); // the loss never scores position 0
        for (int i = 0; i < examples.Count; i++)
        {
            Assert.Equal(masked[i].Ids, all[i].Ids); // the same tokens; only the mask differs
            Assert.Equal(examples[i].Completion.Length + 1, Counted(masked[i])); // completion + EOS
            Assert.Equal(all[i].Ids.Length - 1, Counted(all[i]));          // every token after BOS: prompt too
            Assert.Equal(all[i].Ids.Skip(1), all[i].Labels.Skip(1));
        }
        Assert.True(Counted(all[1]) > 100, "the Alpaca preamble is scored"); // "Below is an instruction ..." and the headers
    }

        [Fact]
    public void Collate_PadsRight_AndPackCutsExactLengths()
    {
        var a = new TokenizedExample(new[] { 1, 5, 6 }, new[] { -100, 5, 6 });
        var b = new TokenizedExample(new[] { 1, 7 }, new[] { -100, 7 });
        using var batch = Tokenization.Collate(new[] { a, b }, padId: 0);
        Assert.Equal(new long[] { 1, 5, 6, 1, 7, 0 }, batch.InputIds.data<long>().ToArray());
        Assert.Equal(new long[] { 1, 1, 1, 1, 1, 0 }, batch.AttentionMask.data<long>().ToArray());
        Assert.Equal(new long[] { -100, 5, 6, -100, 7, -100 }, batch.Labels.data<long>().ToArray());
        var packed = Tokenization.Pack(new[] { a, b, a }, 4);
        Assert.Equal(2, packed.Count);
        Assert.Equal(new[] { 1, 5, 6, 1 }, packed[0].Ids);
        Assert.Equal(new[] { 7, 1, 5, 6 }, packed[1].Ids);
    }

    [Fact]
    public void ShuffledSource_IsDeterministic_AndRestoresItsPosition()
    {
        var ex = Enumerable.Range(0, 7).Select(i => new TokenizedExample(new[] { 1, 10 + i }, new[] { -100, 10 + i })).ToList();
        var a = new ShuffledBatchSource(ex, 3, 0, seed: 9);
        var seen = new List<long[]>();
        string? pos = null;
        for (int i = 0; i < 8; i++)
        {
            if (i == 4) pos = a.SavePosition();
            using var bt = a.Next();
            seen.Add(bt.InputIds.data<long>().ToArray());
        }
        // Every epoch covers every example exactly once.
        var epoch1 = seen.Take(3).SelectMany(x => x).Where(v => v >= 10).OrderBy(v => v).ToArray();
        Assert.Equal(Enumerable.Range(10, 7).Select(v => (long)v), epoch1);
        var b = new ShuffledBatchSource(ex, 3, 0, seed: 9);
        b.RestorePosition(pos!);
        for (int i = 4; i < 8; i++)
        {
            using var bt = b.Next();
            Assert.Equal(seen[i], bt.InputIds.data<long>().ToArray());
        }
        var c = new ShuffledBatchSource(ex.Take(6).ToList(), 3, 0, seed: 9);
        Assert.Contains("--data", Assert.Throws<UserInputException>(() => c.RestorePosition(pos!)).Message);
    }

    [Fact]
    public void LrMultiplier_WarmupThenDecay_FollowsTheTextbookFormulas()
    {
        // Steps are 1-based; Hugging Face evaluates at s = step − 1 updates done. Warmup: s / warmup.
        Assert.Equal(0.0, Trainer.LrMultiplier(1, 100, 10, "cosine"));
        Assert.Equal(0.5, Trainer.LrMultiplier(6, 100, 10, "cosine"), 12);
        Assert.Equal(0.9, Trainer.LrMultiplier(10, 100, 10, "linear"), 12);
        Assert.Equal(1.0, Trainer.LrMultiplier(11, 100, 10, "cosine"), 12);
        Assert.Equal(0.5, Trainer.LrMultiplier(56, 100, 10, "cosine"), 12);
        Assert.Equal(0.5, Trainer.LrMultiplier(56, 100, 10, "linear"), 12);
        Assert.Equal(1.0, Trainer.LrMultiplier(99, 100, 10, "constant"), 12);

        // 110 steps, warmup 10: the decay covers s = 10 … 110, progress p = (s − 10) / 100.
        // linear: 1 − p; cosine: (1 + cos πp) / 2. They agree only at p = 0, ½ and 1.
        const int total = 110, warmup = 10;
        (int Step, double Linear, double Cosine)[] points =
        {
            (11, 1.0, 1.0),                                   // p = 0
            (36, 0.75, 0.5 + Math.Sqrt(2) / 4),                // p = ¼: cos(π/4) = √2/2 → 0.853553…
            (61, 0.5, 0.5),                                   // p = ½
            (86, 0.25, 0.5 - Math.Sqrt(2) / 4),                // p = ¾ → 0.146447…
            (total, 0.01, (1 + Math.Cos(0.99 * Math.PI)) / 2), // last step, p = 0.99 → 0.000246…
            (total + 1, 0.0, 0.0),                            // p = 1: the end of the schedule
        };
        foreach (var (step, linear, cosine) in points)
        {
            Assert.Equal(linear, Trainer.LrMultiplier(step, total, warmup, "linear"), 12);
            Assert.Equal(cosine, Trainer.LrMultiplier(step, total, warmup, "cosine"), 12);
            Assert.Equal(1.0, Trainer.LrMultiplier(step, total, warmup, "constant"), 12);
        }
        Assert.Equal(0.853553390593, Trainer.LrMultiplier(36, total, warmup, "cosine"), 11);
        Assert.Equal(0.146446609407, Trainer.LrMultiplier(86, total, warmup, "cosine"), 11);
        // Past the end linear is clamped at 0, not negative.
        Assert.Equal(0.0, Trainer.LrMultiplier(total + 20, total, warmup, "linear"), 12);
    }

    [Fact]
    public void InvalidUtf8_IsAnErrorNamingFileAndLine()
    {
        string p = Path.Combine(_dir, "latin1.jsonl");
        byte[] good = System.Text.Encoding.UTF8.GetBytes("{\"text\": \"caf\u00e9\"}\n{\"text\": \"ok\"}\n");
        byte[] bad = { (byte)'{', (byte)'"', (byte)'t', (byte)'e', (byte)'x', (byte)'t', (byte)'"', (byte)':', (byte)'"', (byte)'c', (byte)'a', (byte)'f', 0xE9, (byte)'"', (byte)'}', (byte)'\n' };
        File.WriteAllBytes(p, good.Concat(bad).ToArray()); // a Latin-1 "é" on line 3: silently U+FFFD before
        var e = Assert.Throws<UserInputException>(() => DataSet.Load(p));
        Assert.Equal($"{p}:3: not valid UTF-8 (byte 0xE9); save the data file as UTF-8.", e.Message);
        // A byte-order mark is fine.
        File.WriteAllBytes(p, new byte[] { 0xEF, 0xBB, 0xBF }.Concat(good).ToArray());
        Assert.Equal("caf\u00e9", DataSet.Load(p)[0].Completion);
    }

    [Fact]
    public void JsonArrayErrors_NameTheElementIndexAndItsLine()
    {
        var p = Write("arr.json", "[\n  {\"text\": \"a\"},\n  {\"text\": \"b\"},\n  {\"txt\": \"c\"}\n]\n");
        var e = Assert.Throws<UserInputException>(() => DataSet.Load(p));
        Assert.StartsWith($"{p}: record 3 (array element [2], line 4): unknown record shape", e.Message);
        Assert.DoesNotContain("line 0", e.Message);
        var q = Write("broken.json", "[{\"text\": \"a\"},\n {\"text\": }]");
        Assert.Contains("after array element [0]", Assert.Throws<UserInputException>(() => DataSet.Load(q)).Message);
    }

    [Fact]
    public void ADeviceAsAFile_IsOneLineNamingIt_AndAFileWithinTheLimitReads()
    {
        if (!File.Exists("/dev/zero")) return;
        // Data files are read through BoundedFile (1 GiB); a small limit shows the behaviour without reading a gigabyte.
        var e = Assert.Throws<UserInputException>(() => ResLora.IO.BoundedFile.ReadAllBytes("/dev/zero", 1 << 20, "data file"));
        Assert.Equal("/dev/zero: more than 1.0 MiB, far more than any data file (is it a device such as /dev/zero?).", e.Message);
        var p = Write("small.jsonl", "{\"text\": \"a\"}\n");
        Assert.Equal(14, ResLora.IO.BoundedFile.ReadAllBytes(p, 14, "data file").Length);
        Assert.Throws<UserInputException>(() => ResLora.IO.BoundedFile.ReadAllBytes(p, 13, "data file"));
    }
}
