using ResLora.IO.Gguf;
using ResLora.Models;
using ResLora.Tests.Infrastructure;
using ResLora.Tests.Models;
using TorchSharp;
using Xunit.Abstractions;

namespace ResLora.Tests.Cli;

/// <summary>
/// <c>reslora convert gguf</c> at the command line: a valid file converts; an unsupported architecture, missing tensors,
/// shapes that contradict the metadata, a vocabulary of the wrong size, an unknown tokenizer model are each exit code 2
/// and one line naming the file; mutated files never give a stack trace.
/// </summary>
[Collection("console")]
public sealed class ConvertGgufCliTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = TestDirs.InMemory("reslora-ggufcli-");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, Func<ModelConfig, ModelConfig>? config = null, Action<GgufWriter>? meta = null, Func<string, bool>? skip = null,
        Func<GgufFixture.Vocab, GgufFixture.Vocab>? vocab = null)
    {
        var c = GgufConversionTests.Config("llama", tied: false) with { MaxPositionEmbeddings = 16 };
        using var m = TinyModels.Build(c, seed: 21);
        var weights = m.BaseParameters().ToDictionary(kv => kv.Key, kv => (torch.Tensor)kv.Value.detach());
        string path = Path.Combine(_dir, name);
        var v = GgufFixture.PlainVocab(c.VocabSize);
        GgufFixture.Write(path, config?.Invoke(c) ?? c, weights, GgmlType.F32, vocab?.Invoke(v) ?? v, meta, skip);
        return path;
    }

    private (int Rc, string Out, string Err) Convert(string gguf, string outName = "out") =>
        CliHarness.Run("convert", "gguf", "--gguf", gguf, "--out", Path.Combine(_dir, outName));

    [Fact]
    public void ValidFile_Converts()
    {
        var (rc, o, e) = Convert(Write("ok.gguf"), "ok");
        Assert.True(rc == 0, e);
        Assert.Contains("found: llama, 2 layers", o);
        Assert.Contains("tokenizer: gpt2 (pre llama-bpe)", o);
        Assert.True(File.Exists(Path.Combine(_dir, "ok", "model.safetensors")));
    }

    public static TheoryData<string, string> Broken => new()
    {
        { "arch", "GGUF architecture 'gemma' is not supported; supported: llama, qwen2, qwen3" },
        { "missing", "tensor 'blk.1.ffn_up.weight' is missing" },
        { "shape", "but the metadata implies" },
        { "vocab", "the vocabulary has 63 tokens but token_embd.weight has 64 rows" },
        { "tokmodel", "tokenizer.ggml.model 'bert' is not supported" },
        { "pre", "tokenizer.ggml.pre 'mystery' is not supported" },
        { "rope", "rope.scaling.type 'yarn' is not supported" },
    };

    [Theory]
    [MemberData(nameof(Broken))]
    public void InconsistentFiles_AreOneLine_ExitCode2(string kind, string expected)
    {
        string path = kind switch
        {
            "arch" => Rename(Write("a.gguf"), "llama", "gemma"),
            "missing" => Write("m.gguf", skip: n => n == "blk.1.ffn_up.weight"),
            "shape" => Write("s.gguf", config: c => c with { IntermediateSize = 40 }),
            "vocab" => Write("v.gguf", vocab: v => v with { Tokens = v.Tokens.Take(63).ToList(), Types = v.Types.Take(63).ToList() }),
            "tokmodel" => Write("t.gguf", vocab: v => v with { Model = "bert" }),
            "pre" => Write("p.gguf", vocab: v => v with { Pre = "mystery" }),
            "rope" => Write("r.gguf", meta: w => w.Set("llama.rope.scaling.type", "yarn")),
            _ => throw new ArgumentException(kind),
        };
        var (rc, _, e) = Convert(path, "out-" + kind);
        output.WriteLine(e);
        Assert.Equal(2, rc);
        Assert.Contains(expected, e);
        Assert.Contains(path, e);
        Assert.Single(e.Trim().Split('\n'));
        Assert.False(Directory.Exists(Path.Combine(_dir, "out-" + kind)));
    }

    /// <summary>general.architecture rewritten in place (same length keeps every offset), and the llama.* keys renamed with it.</summary>
    private static string Rename(string path, string from, string to)
    {
        var bytes = File.ReadAllBytes(path);
        var f = System.Text.Encoding.UTF8.GetBytes(from);
        var t = System.Text.Encoding.UTF8.GetBytes(to);
        for (int i = 0; i + f.Length <= bytes.Length; i++)
            if (bytes.AsSpan(i, f.Length).SequenceEqual(f)) t.CopyTo(bytes, i);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    [Fact]
    public void MutatedFiles_ConvertOrAreOneLine_NeverATrace()
    {
        string valid = Write("valid.gguf");
        byte[] bytes = File.ReadAllBytes(valid);
        long dataOffset;
        using (var g = GgufFile.Open(valid)) dataOffset = g.DataOffset;
        var r = new Random(77);
        int converted = 0, refused = 0;
        const int N = 80;
        for (int i = 0; i < N; i++)
        {
            byte[] b = (byte[])bytes.Clone();
            switch (r.Next(4))
            {
                case 0: b = b[..r.Next(b.Length)]; break;
                case 1: for (int k = r.Next(1, 4); k > 0; k--) b[r.Next((int)dataOffset)] ^= (byte)(1 << r.Next(8)); break;
                case 2: BitConverter.TryWriteBytes(b.AsSpan(r.Next((int)dataOffset - 8)), r.Next(3) == 0 ? ulong.MaxValue : (ulong)r.Next(0, 100)); break;
                default: for (int k = r.Next(1, 50); k > 0; k--) b[(int)dataOffset + r.Next(b.Length - (int)dataOffset)] = (byte)r.Next(256); break;
            }
            string path = Path.Combine(_dir, $"mut{i}.gguf");
            File.WriteAllBytes(path, b);
            var (rc, _, e) = Convert(path, $"mut{i}");
            Assert.True(rc is 0 or 2, $"mutation {i}: exit {rc}: {e}");
            Assert.DoesNotContain("   at ", e);
            if (rc == 2)
            {
                Assert.Single(e.Trim().Split('\n'));
                refused++;
            }
            else converted++;
            File.Delete(path);
            if (Directory.Exists(Path.Combine(_dir, $"mut{i}"))) Directory.Delete(Path.Combine(_dir, $"mut{i}"), true);
        }
        output.WriteLine($"{N} mutations: {converted} converted, {refused} refused with one line");
        Assert.True(refused > N / 3, $"refused {refused}");
    }
}
